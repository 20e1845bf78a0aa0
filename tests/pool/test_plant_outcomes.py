"""What a wallet answer means for the books (unit): only answers that prove nothing was
signed are failures, by one rule that planting and payouts share; anything else leaves
the request to the reconciler. A block that moved on is the chain's or the pool's by the
request's age, whoever drives it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from kalepool.settings import Settings
from kalepool.v1 import common_pb2, wallet_pb2
from pool_service.books.farmers import FarmerStore
from pool_service.books.payouts import PayoutRow, PayoutStore
from pool_service.books.plantings import NewPlanting, PlantingRow, PlantingStore, PlantRequestRow
from pool_service.chain_view import ChainView
from pool_service.payouts import Payouts
from pool_service.planting import (
    Planter,
    Unsettled,
    decide_answer,
    decide_item,
    decide_refusal,
)
from pool_service.wallet import NOTHING_SIGNED, REFUSED_FOR_NOW, WalletClient

FARMER = uuid.uuid4()
REQUEST = PlantRequestRow(
    id=1,
    idempotency_key=f"plant:{FARMER}:41",
    farmer_id=FARMER,
    pooler_id=uuid.uuid4(),
    block_index=41,
    stake_amount=500,
    attempts=1,
    settled_at=None,
    planting_id=None,
    custodial_public_key="G" + "A" * 55,
)
HASH = "ab" * 32


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_errors_that_prove_nothing_leave_the_plant_pending(code: grpc.StatusCode) -> None:
    assert decide_refusal(REQUEST, _error(code)) is Unsettled.PENDING


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "farmer"),
        (grpc.StatusCode.INVALID_ARGUMENT, "pool"),
        (grpc.StatusCode.NOT_FOUND, "pool"),
    ],
)
def test_refusals_before_signing_are_failures(code: grpc.StatusCode, fault: str) -> None:
    got = decide_refusal(REQUEST, _error(code))
    assert isinstance(got, NewPlanting)
    assert (got.status, got.fault, got.block_index, got.tx_hash) == ("failed", fault, 41, None)
    assert code.name in (got.error_message or "")


def test_a_key_used_with_other_parameters_is_pending_and_said_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # ALREADY_EXISTS proves a transaction *was* signed under the key (with other
    # parameters): it may be on its way, so nothing is recorded as failed.
    with caplog.at_level(logging.ERROR, logger="pool_service"):
        assert decide_refusal(REQUEST, _error(grpc.StatusCode.ALREADY_EXISTS)) is Unsettled.PENDING
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert REQUEST.idempotency_key in record.getMessage()
    assert "other parameters" in record.getMessage()


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_an_items_refusal_in_a_batch_is_judged_as_a_calls(code: grpc.StatusCode) -> None:
    """A PlantBatch item's error settles (or leaves pending) its plant exactly as the same
    status of a whole call would."""
    result = wallet_pb2.PlantItemResult(
        idempotency_key=REQUEST.idempotency_key,
        error=wallet_pb2.ItemError(code=code.value[0], message="details"),
    )
    assert decide_item(REQUEST, result, late=False) == decide_refusal(REQUEST, _error(code))


def test_an_item_the_batch_left_unanswered_stays_pending() -> None:
    assert decide_item(REQUEST, None, late=False) is Unsettled.PENDING


# --- one rule for planting and payouts --------------------------------------------------


class _Transfers:
    """A wallet stub whose Transfer is refused with one status."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def Transfer(self, request: wallet_pb2.TransferRequest, **options: Any) -> None:
        raise _error(self.code)


class _PayoutBook:
    """The payout store's calls the drive makes, on one payout in memory."""

    def __init__(self, row: PayoutRow) -> None:
        self.row = row

    async def failed(self, payout_id: uuid.UUID, *args: Any) -> None:
        self.row = dataclasses.replace(self.row, status="failed")

    async def still_pending(self, *args: Any) -> None:
        pass

    async def payout(self, payout_id: uuid.UUID) -> PayoutRow:
        return self.row


async def _payout_after(code: grpc.StatusCode, tmp_path: Path) -> str:
    """The payout's status after the wallet refused its transfer with `code`."""
    now = dt.datetime.now(dt.UTC)
    row = PayoutRow(
        uuid.uuid4(), FARMER, "G" + "B" * 55, 100, None, "payout:x", "pending", None, None,
        None, None, None, now, None,
    )  # fmt: skip
    wallet = cast(WalletClient, type("W", (), {"stub": _Transfers(code)})())
    payouts = Payouts(
        cast(FarmerStore, None),
        cast(PayoutStore, _PayoutBook(row)),
        wallet,
        cast(ChainView, None),
        _settings(tmp_path),
    )
    return (await payouts.drive(row, "G" + "A" * 55)).status


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
async def test_planting_and_payouts_settle_a_refusal_by_the_same_rule(
    code: grpc.StatusCode, tmp_path: Path
) -> None:
    """One rule says what proves nothing was signed; a plant refused only for now (a rate
    limit, an unadmitted caller) is asked again rather than recorded as failed."""
    planted = decide_refusal(REQUEST, _error(code))
    paid = await _payout_after(code, tmp_path)
    proves = code in NOTHING_SIGNED
    assert (planted is not Unsettled.PENDING) is (proves and code not in REFUSED_FOR_NOW)
    assert paid == ("failed" if proves else "pending")


def _answer(
    status: common_pb2.TxStatus.ValueType,
    *,
    code: common_pb2.FailureCode.ValueType = common_pb2.FAILURE_CODE_UNSPECIFIED,
    fault: common_pb2.FaultParty.ValueType = common_pb2.FAULT_PARTY_UNSPECIFIED,
    block: int = 0,
    ledger: int = 0,
) -> wallet_pb2.PlantResponse:
    out = wallet_pb2.TransactionOutcome(tx_hash=HASH, status=status)
    if code:
        out.failure.CopyFrom(common_pb2.Failure(code=code, fault=fault, message="why"))
    return wallet_pb2.PlantResponse(outcome=out, block_index=block, plant_ledger=ledger)


def test_a_success_is_recorded_where_the_pail_is() -> None:
    got = decide_answer(
        REQUEST, _answer(common_pb2.TX_STATUS_SUCCESS, block=42, ledger=900), late=False
    )
    assert isinstance(got, NewPlanting)
    assert (got.status, got.block_index, got.ledger, got.stake, got.tx_hash) == (
        "success",
        42,
        900,
        500,
        HASH,
    )
    # Block 0 is a block: the pail's ledger says whether it was found.
    zero = decide_answer(
        REQUEST, _answer(common_pb2.TX_STATUS_SUCCESS, block=0, ledger=7), late=False
    )
    assert isinstance(zero, NewPlanting) and zero.block_index == 0


def test_unknown_fates_and_unlocated_pails_stay_pending() -> None:
    for answer in (
        _answer(common_pb2.TX_STATUS_PENDING),
        _answer(common_pb2.TX_STATUS_SUCCESS),  # applied, pail not found (yet)
    ):
        assert decide_answer(REQUEST, answer, late=True) is Unsettled.PENDING


def test_a_pail_held_by_another_attempt_is_nobodys_failure() -> None:
    for status in (common_pb2.TX_STATUS_REJECTED, common_pb2.TX_STATUS_FAILED):
        answer = _answer(
            status, code=common_pb2.FAILURE_CODE_PAIL_EXISTS, fault=common_pb2.FAULT_PARTY_NONE
        )
        assert decide_answer(REQUEST, answer, late=False) is Unsettled.PAIL_EXISTS


def test_a_block_that_moved_on_is_the_chains_now_and_the_pools_when_late() -> None:
    answer = _answer(
        common_pb2.TX_STATUS_REJECTED,
        code=common_pb2.FAILURE_CODE_BLOCK_MISMATCH,
        fault=common_pb2.FAULT_PARTY_NONE,
    )
    now = decide_answer(REQUEST, answer, late=False)
    late = decide_answer(REQUEST, answer, late=True)
    assert isinstance(now, NewPlanting) and now.fault == "chain"
    assert isinstance(late, NewPlanting) and late.fault == "pool"
    assert "never sent" in (late.error_message or "")
    assert late.error_code == now.error_code == "BLOCK_MISMATCH"


def test_other_failures_keep_the_wallets_attribution() -> None:
    answer = _answer(
        common_pb2.TX_STATUS_REJECTED,
        code=common_pb2.FAILURE_CODE_INSUFFICIENT_KALE,
        fault=common_pb2.FAULT_PARTY_FARMER,
    )
    got = decide_answer(REQUEST, answer, late=True)
    assert isinstance(got, NewPlanting)
    assert (got.status, got.fault, got.error_code, got.error_message) == (
        "failed",
        "farmer",
        "INSUFFICIENT_KALE",
        "why",
    )


# --- "late" from the request's age, whoever drives it ------------------------------------


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(network="devnet", data_dir=tmp_path, _env_file=None, **values)  # type: ignore[call-arg]


class _Plants:
    """A wallet stub that answers every plant of a PlantBatch with one answer."""

    def __init__(self, answer: wallet_pb2.PlantResponse) -> None:
        self.answer = answer

    async def PlantBatch(self, request: wallet_pb2.PlantBatchRequest, **options: Any) -> Any:
        return wallet_pb2.PlantBatchResponse(
            results=[
                wallet_pb2.PlantItemResult(idempotency_key=p.idempotency_key, plant=self.answer)
                for p in request.plants
            ]
        )


class _Recorder:
    """The store's record_planting, keeping what it was asked to record."""

    def __init__(self) -> None:
        self.recorded: list[NewPlanting] = []

    async def record_planting(
        self, request: PlantRequestRow, p: NewPlanting
    ) -> tuple[PlantingRow, bool]:
        self.recorded.append(p)
        row = PlantingRow(
            len(self.recorded), p.block_index, p.farmer_id, request.pooler_id,
            request.custodial_public_key, p.stake, p.tx_hash, p.ledger, p.status, p.fault,
            p.error_code, p.error_message, dt.datetime.now(dt.UTC),
        )  # fmt: skip
        return row, True


@pytest.mark.parametrize(("age", "fault"), [(0.0, "chain"), (29.0, "chain"), (31.0, "pool")])
async def test_a_block_that_moved_on_is_judged_by_the_requests_age(
    age: float, fault: str, tmp_path: Path
) -> None:
    mismatch = _answer(
        common_pb2.TX_STATUS_REJECTED,
        code=common_pb2.FAILURE_CODE_BLOCK_MISMATCH,
        fault=common_pb2.FAULT_PARTY_NONE,
    )
    store = _Recorder()
    wallet = cast(WalletClient, type("W", (), {"stub": _Plants(mismatch)})())
    planter = Planter(
        cast(FarmerStore, None),
        cast(PlantingStore, store),
        wallet,
        cast(ChainView, None),
        _settings(tmp_path, plant_timeout_seconds=30),
        lambda _: None,
    )
    request = dataclasses.replace(REQUEST, age_seconds=age, read_at=time.monotonic())
    row = await planter.drive(request)
    # The same path for a first call and the reconciler: only the age decides.
    assert row is not None and row.fault == fault
    assert [p.fault for p in store.recorded] == [fault]


class _RefusesMalformed:
    """A wallet stub that refuses a PlantBatch holding a malformed item whole
    (INVALID_ARGUMENT, as the wallet does) and answers the others' plants with one answer."""

    def __init__(self, answer: wallet_pb2.PlantResponse) -> None:
        self.answer = answer
        self.calls: list[int] = []

    async def PlantBatch(self, request: wallet_pb2.PlantBatchRequest, **options: Any) -> Any:
        self.calls.append(len(request.plants))
        if any(p.farmer_address == "malformed" for p in request.plants):
            raise _error(grpc.StatusCode.INVALID_ARGUMENT)
        return wallet_pb2.PlantBatchResponse(
            results=[
                wallet_pb2.PlantItemResult(idempotency_key=p.idempotency_key, plant=self.answer)
                for p in request.plants
            ]
        )


async def test_a_batch_refused_for_one_malformed_item_fails_that_one_only(tmp_path: Path) -> None:
    failed = _answer(
        common_pb2.TX_STATUS_FAILED,
        code=common_pb2.FAILURE_CODE_INSUFFICIENT_KALE,
        fault=common_pb2.FAULT_PARTY_FARMER,
    )
    stub = _RefusesMalformed(failed)
    store = _Recorder()
    planter = Planter(
        cast(FarmerStore, None),
        cast(PlantingStore, store),
        cast(WalletClient, type("W", (), {"stub": stub})()),
        cast(ChainView, None),
        _settings(tmp_path, plant_batch_size=10),
        lambda _: None,
    )
    requests = [
        dataclasses.replace(
            REQUEST, id=i, idempotency_key=f"plant:{i}", custodial_public_key=address
        )
        for i, address in enumerate(["G" + "A" * 55, "malformed", "G" + "C" * 55])
    ]
    rows = await planter.drive_many(requests)
    assert stub.calls == [3, 1, 1, 1]  # the batch, then each alone
    assert [r.fault if r else None for r in rows] == ["farmer", "pool", "farmer"]
    assert [r.error_code if r else None for r in rows] == [
        "INSUFFICIENT_KALE",
        "INTERNAL",
        "INSUFFICIENT_KALE",
    ]
