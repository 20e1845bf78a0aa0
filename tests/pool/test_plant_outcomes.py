"""What a wallet answer means for the books (unit): only answers that prove nothing was
signed are failures; anything else leaves the request to the reconciler."""

from __future__ import annotations

import uuid

import grpc
import pytest

from kalepool.v1 import common_pb2, wallet_pb2
from pool_service.planting import Unsettled, decide_answer, decide_refusal
from pool_service.store import NewPlanting, PlantRequestRow

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
        (grpc.StatusCode.ALREADY_EXISTS, "pool"),
    ],
)
def test_refusals_before_signing_are_failures(code: grpc.StatusCode, fault: str) -> None:
    got = decide_refusal(REQUEST, _error(code))
    assert isinstance(got, NewPlanting)
    assert (got.status, got.fault, got.block_index, got.tx_hash) == ("failed", fault, 41, None)
    assert code.name in (got.error_message or "")


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
