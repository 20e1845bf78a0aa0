"""ConfirmFunding's calls to the wallet (unit, a fake wallet stub and farmer store).

One wallet call per confirmation: EnsureTrustline answers the account as it read it, so
no GetWallet is made, unless the wallet refused (the account may not exist yet: the
answer says so) or answered no account (a wallet of an earlier version)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any, cast

import grpc
import pytest

from kalepool.grpc_server import FailedPrecondition
from kalepool.v1 import common_pb2, pool_pb2, wallet_pb2
from pool_service.books.enums import FarmerStatus
from pool_service.books.farmers import FarmerRow, FarmerStore
from pool_service.registry import PoolRegistry
from pool_service.wallet import WalletClient

ADDRESS = "G" + "A" * 55
TRUSTING = common_pb2.AccountState(address=ADDRESS, exists=True, kale_trustline=True)


class Refusal(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeStub:
    """Answers EnsureTrustline with `trust` (or raises it) and GetWallet with `account`."""

    def __init__(self, trust: wallet_pb2.EnsureTrustlineResponse | Exception) -> None:
        self.trust = trust
        self.account = common_pb2.AccountState(address=ADDRESS, exists=False)
        self.calls: list[str] = []

    async def EnsureTrustline(self, request: Any, **_: Any) -> wallet_pb2.EnsureTrustlineResponse:
        self.calls.append("EnsureTrustline")
        if isinstance(self.trust, Exception):
            raise self.trust
        return self.trust

    async def GetWallet(self, request: Any, **_: Any) -> wallet_pb2.GetWalletResponse:
        self.calls.append("GetWallet")
        return wallet_pb2.GetWalletResponse(account=self.account)


class FakeFarmers:
    def __init__(self) -> None:
        self.row = FarmerRow(
            uuid.uuid4(),
            uuid.uuid4(),
            ADDRESS,
            "G" + "B" * 55,
            0,
            0,
            False,
            FarmerStatus.ACTIVE,
            dt.datetime.now(dt.UTC),
        )
        self.marked = 0

    async def farmer(self, farmer_id: uuid.UUID) -> FarmerRow | None:
        return self.row if farmer_id == self.row.id else None

    async def mark_funded(self, farmer_id: uuid.UUID) -> FarmerRow | None:
        self.marked += 1
        self.row = dataclasses.replace(self.row, is_funded=True)
        return self.row


def _registry(stub: FakeStub) -> tuple[PoolRegistry, FakeFarmers]:
    farmers = FakeFarmers()
    registry = object.__new__(PoolRegistry)
    registry.farmers = cast(FarmerStore, farmers)
    wallet = object.__new__(WalletClient)
    wallet.stub = cast(Any, stub)
    registry.wallet = wallet
    return registry, farmers


async def _confirm(registry: PoolRegistry, farmers: FakeFarmers) -> Any:
    request = pool_pb2.ConfirmFundingRequest(farmer_id=str(farmers.row.id))
    return await registry.ConfirmFunding(request, None)


async def test_an_added_trustline_is_confirmed_with_the_account_the_wallet_read() -> None:
    outcome = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_SUCCESS)
    stub = FakeStub(wallet_pb2.EnsureTrustlineResponse(outcome=outcome, account=TRUSTING))
    registry, farmers = _registry(stub)
    got = await _confirm(registry, farmers)
    assert got.funded and got.account == TRUSTING and not got.detail
    assert stub.calls == ["EnsureTrustline"] and farmers.marked == 1
    # Again: funded already, nothing marked twice.
    stub.trust = wallet_pb2.EnsureTrustlineResponse(already_present=True, account=TRUSTING)
    again = await _confirm(registry, farmers)
    assert again.funded and farmers.marked == 1


async def test_a_pending_trustline_is_not_funded_and_says_so() -> None:
    before = common_pb2.AccountState(address=ADDRESS, exists=True, kale_trustline=False)
    outcome = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_PENDING)
    stub = FakeStub(wallet_pb2.EnsureTrustlineResponse(outcome=outcome, account=before))
    registry, farmers = _registry(stub)
    got = await _confirm(registry, farmers)
    assert not got.funded and "pending" in got.detail and got.account == before
    assert stub.calls == ["EnsureTrustline"] and farmers.marked == 0


async def test_a_missing_account_is_explained_from_a_read_after_the_refusal() -> None:
    refusal = Refusal(grpc.StatusCode.FAILED_PRECONDITION, "account does not exist on chain")
    stub = FakeStub(refusal)
    registry, farmers = _registry(stub)
    got = await _confirm(registry, farmers)
    assert not got.funded and "does not exist" in got.detail and not got.account.exists
    assert stub.calls == ["EnsureTrustline", "GetWallet"] and farmers.marked == 0


async def test_an_account_appearing_after_the_refusal_is_asked_once_more() -> None:
    outcome = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_SUCCESS)
    answers: list[wallet_pb2.EnsureTrustlineResponse | Exception] = [
        Refusal(grpc.StatusCode.FAILED_PRECONDITION, "account does not exist on chain"),
        wallet_pb2.EnsureTrustlineResponse(outcome=outcome, account=TRUSTING),
    ]
    stub = FakeStub(answers[0])
    stub.account = TRUSTING

    async def ensure(request: Any, **_: Any) -> wallet_pb2.EnsureTrustlineResponse:
        stub.calls.append("EnsureTrustline")
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    stub.EnsureTrustline = ensure  # type: ignore[method-assign]
    registry, farmers = _registry(stub)
    got = await _confirm(registry, farmers)
    assert got.funded and farmers.marked == 1
    assert stub.calls == ["EnsureTrustline", "GetWallet", "EnsureTrustline"]


async def test_another_refusal_of_an_existing_account_stands() -> None:
    stub = FakeStub(Refusal(grpc.StatusCode.FAILED_PRECONDITION, "wallet is closed"))
    stub.account = TRUSTING
    registry, farmers = _registry(stub)
    with pytest.raises(FailedPrecondition, match="wallet is closed"):
        await _confirm(registry, farmers)
    assert stub.calls == ["EnsureTrustline", "GetWallet", "EnsureTrustline"]
    assert farmers.marked == 0


async def test_a_wallet_answering_no_account_is_read_after() -> None:
    outcome = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_SUCCESS)
    stub = FakeStub(wallet_pb2.EnsureTrustlineResponse(outcome=outcome))
    stub.account = TRUSTING
    registry, farmers = _registry(stub)
    got = await _confirm(registry, farmers)
    assert got.funded and got.account == TRUSTING
    assert stub.calls == ["EnsureTrustline", "GetWallet"]
