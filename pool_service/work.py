"""ReportWork: check a pooler's batch of work results whole, then record it whole.

A success must carry the work hash of (block, nonce, entropy, farmer) with the zeros it
claims, a gap of at least one ledger and its transaction; a failure must say whose fault
it was. Every farmer must hold this pooler's assignment in the block. A result already
recorded identically is ignored; a different result for a pail whose work succeeded is
ALREADY_EXISTS, and the whole batch is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from kalepool import protocol
from kalepool.grpc_server import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from kalepool.mining import farmer_key
from kalepool.request_checks import check_uuid
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2
from pool_service import convert
from pool_service.chain_view import ChainView
from pool_service.store import NewWork, PlantingRow, PoolerRow, Store, WorkRow

MAX_RESULTS = 1000
_HEX = frozenset("0123456789abcdef")


def _tx_hash(farmer: UUID, value: str, required: bool) -> str | None:
    if not value:
        if required:
            raise InvalidArgument(f"result for farmer {farmer}: a success needs its tx_hash")
        return None
    if len(value) != 64 or not set(value) <= _HEX:
        raise InvalidArgument(
            f"result for farmer {farmer}: tx_hash must be 64 lower-case hex characters"
        )
    return value


@dataclass
class _Checked:
    work: NewWork
    ignored: bool = False  # a pending result: acknowledged, not recorded


def _check(
    result: pooler_pb2.WorkReport, farmer: UUID, planting: PlantingRow, block: int, entropy: bytes
) -> _Checked:
    if result.status == records_pb2.EVENT_STATUS_SUCCEEDED:
        digest = bytes(result.hash)
        if len(digest) != 32:
            raise InvalidArgument(f"result for farmer {farmer}: hash must be 32 bytes")
        if result.zeros != protocol.leading_zeros(digest):
            raise InvalidArgument(
                f"result for farmer {farmer}: zeros {result.zeros} is not the hash's"
                f" {protocol.leading_zeros(digest)} leading zeros"
            )
        expected = protocol.kale_hash(
            block, result.nonce, entropy, farmer_key(planting.custodial_public_key)
        )
        if digest != expected:
            raise InvalidArgument(
                f"result for farmer {farmer}: hash is not the work hash of block {block},"
                f" nonce {result.nonce}, the block's entropy and the farmer"
            )
        if result.gap < 1:
            raise InvalidArgument(f"result for farmer {farmer}: gap must be at least 1")
        if result.transaction.ledger < 1:
            raise InvalidArgument(
                f"result for farmer {farmer}: a success needs the ledger its work applied in"
            )
        return _Checked(
            NewWork(
                farmer,
                "success",
                result.nonce,
                digest,
                result.zeros,
                result.gap,
                _tx_hash(farmer, result.transaction.tx_hash, True),
                result.transaction.ledger,
                "none",
                None,
                None,
            )
        )
    if result.status == records_pb2.EVENT_STATUS_FAILED:
        failure = result.failure
        fault = convert.FAULT_FROM_PROTO.get(failure.fault)
        if not result.HasField("failure") or fault is None or fault == "none":
            raise InvalidArgument(
                f"result for farmer {farmer}: a failure must name whose fault it was"
            )
        sent = bytes(result.hash) or None
        if sent is not None and len(sent) != 32:
            raise InvalidArgument(f"result for farmer {farmer}: hash must be 32 bytes")
        code = failure.code or common_pb2.FAILURE_CODE_MINER_FAILED
        return _Checked(
            NewWork(
                farmer,
                "failed",
                result.nonce if sent else None,
                sent,
                result.zeros if sent else None,
                result.gap or None,
                _tx_hash(farmer, result.transaction.tx_hash, False),
                result.transaction.ledger or None,
                fault,
                convert.failure_code_name(code),
                failure.message.strip() or f"work failed: {convert.failure_code_name(code)}",
            )
        )
    if result.status == records_pb2.EVENT_STATUS_PENDING:
        return _Checked(
            NewWork(farmer, "pending", None, None, None, None, None, None, "none", None, None),
            ignored=True,
        )
    raise InvalidArgument(f"result for farmer {farmer}: status must be set")


def _same(a: NewWork, b: WorkRow) -> bool:
    if a.status != b.status:
        return False
    if a.status == "success":
        return (a.nonce, a.hash, a.tx_hash) == (int(b.nonce), b.hash, b.tx_hash)
    return (a.fault, a.error_code, a.error_message, a.tx_hash) == (
        b.fault,
        b.error_code,
        b.error_message,
        b.tx_hash,
    )


class WorkReports:
    """Checks and records ReportWork batches."""

    def __init__(self, store: Store, view: ChainView) -> None:
        self.store = store
        self.view = view

    async def report(
        self, pooler: PoolerRow, request: pooler_pb2.ReportWorkRequest
    ) -> pooler_pb2.ReportWorkResponse:
        block_index = request.block_index
        if not request.results:
            raise InvalidArgument("results is empty: report at least one farmer's work")
        if len(request.results) > MAX_RESULTS:
            raise InvalidArgument(f"at most {MAX_RESULTS} results per report")
        farmers: list[UUID] = []
        for result in request.results:
            farmer = check_uuid("farmer_id", result.farmer_id)
            if farmer in farmers:
                raise InvalidArgument(f"farmer {farmer} appears twice in one report")
            farmers.append(farmer)
        assigned = {
            r.farmer_id: r
            for r in await self.store.plantings(pooler.id, block_index)
            if r.status == "success"
        }
        for farmer in farmers:
            if farmer not in assigned:
                raise PermissionDenied(
                    f"farmer {farmer} holds no assignment of this pooler in block {block_index}"
                )
        block = await self.view.block(block_index)
        if block is None:
            raise FailedPrecondition(f"block {block_index} is no longer on chain")
        checked = [
            _check(result, farmer, assigned[farmer], block_index, block.entropy)
            for result, farmer in zip(request.results, farmers, strict=True)
        ]
        already = 0
        ready: list[str] = []

        def decide(existing: list[WorkRow]) -> list[NewWork]:
            nonlocal already
            succeeded = {w.farmer_id: w for w in existing if w.status == "success"}
            to_insert: list[NewWork] = []
            for item in checked:
                work = item.work
                if item.ignored:
                    continue
                done = succeeded.get(work.farmer_id)
                if done is not None:
                    if not _same(work, done):
                        raise AlreadyExists(
                            f"farmer {work.farmer_id}'s work in block {block_index} is already"
                            f" recorded as succeeded (work {done.id}) with another result"
                        )
                    already += 1
                    ready.append(str(work.farmer_id))
                elif any(_same(work, w) for w in existing if w.farmer_id == work.farmer_id):
                    already += 1
                else:
                    to_insert.append(work)
                    if work.status == "success":
                        ready.append(str(work.farmer_id))
            return to_insert

        rows = await self.store.record_works(pooler.id, block_index, decide)
        return pooler_pb2.ReportWorkResponse(
            recorded=len(rows),
            already_recorded=already,
            ready_for_harvest=ready,
            # Compensations are not computed yet (see docs/pool.md).
            compensation_owed_stroops=0,
        )
