"""ReportWork: each result of a pooler's batch is accepted or refused on its own.

Only a malformed request as a whole is refused with a status: no results, more than
`MAX_RESULTS`, a farmer twice, or a block the farm has not reached yet. Every result
then gets its own outcome (`ReportWorkResponse.outcomes`, in request order):

- REFUSED, with one sentence saying why: a farmer id that is not a UUID, a farmer
  without this pooler's successful planting in the block, a result of the wrong shape,
  a success the chain does not confirm, or one that contradicts what is recorded;
- RETRY: a success that cannot be checked now (the chain cannot be read);
- PENDING: a pending result, acknowledged and not recorded;
- RECORDED or ALREADY_RECORDED otherwise.

A claimed success is believed only once the chain confirms it: its transaction, read by
hash, must be a successful `work` of the farm for this farmer with this hash and nonce,
applied in the claimed ledger (after the plant) and returning the claimed gap. When the
RPC no longer knows the hash (older than its retention), the pail itself is the proof:
it must still be there, worked, with the claimed zeros and gap. A result recorded
identically before is not checked again. Failures keep their rules: they must name
whose fault it was, and are recorded as reported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID

from kalepool import protocol, wire
from kalepool.chain import ChainError, Fault, NotAFarmCallError, read_farm_call, read_pail
from kalepool.grpc_server import InvalidArgument, OutOfRange, Unavailable
from kalepool.request_checks import check_uuid
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2
from pool_service.books.enums import EventStatus
from pool_service.books.plantings import PlantingRow, PlantingStore
from pool_service.books.poolers import PoolerRow
from pool_service.books.works import NewWork, WorkRow, WorkStore
from pool_service.chain_view import ChainView
from pool_service.metrics import WORK_REPORTS

MAX_RESULTS = 1000
# Chain reads of one report in flight at once.
CHAIN_READS = 16
_HEX = frozenset("0123456789abcdef")

RECORDED = pooler_pb2.REPORT_OUTCOME_RECORDED
ALREADY_RECORDED = pooler_pb2.REPORT_OUTCOME_ALREADY_RECORDED
PENDING = pooler_pb2.REPORT_OUTCOME_PENDING
RETRY = pooler_pb2.REPORT_OUTCOME_RETRY
REFUSED = pooler_pb2.REPORT_OUTCOME_REFUSED
# `kalepool_pool_work_reports_total`'s outcome label of each result (pending: retry).
_REPORT_LABELS = {
    RECORDED: "recorded",
    ALREADY_RECORDED: "already_recorded",
    REFUSED: "refused",
    RETRY: "retry",
}


class _Refused(Exception):
    """A result refused for good; the message says why (one sentence)."""


@dataclass
class _Item:
    """One result of the batch and what became of it."""

    farmer_id: str  # as sent
    farmer: UUID | None = None
    planting: PlantingRow | None = None
    work: NewWork | None = None  # the checked result, to record
    outcome: pooler_pb2.ReportOutcome.ValueType = pooler_pb2.REPORT_OUTCOME_UNSPECIFIED
    message: str = ""

    def decide(self, outcome: pooler_pb2.ReportOutcome.ValueType, message: str = "") -> None:
        self.outcome, self.message = outcome, message

    @property
    def open(self) -> bool:
        return self.outcome == pooler_pb2.REPORT_OUTCOME_UNSPECIFIED


def _tx_hash(value: str, required: bool) -> str | None:
    if not value:
        if required:
            raise _Refused("a success needs its tx_hash")
        return None
    if len(value) != 64 or not set(value) <= _HEX:
        raise _Refused("tx_hash must be 64 lower-case hex characters")
    return value


def _check(
    result: pooler_pb2.WorkReport, farmer: UUID, planting: PlantingRow, entropy: bytes | None
) -> NewWork | None:
    """The result as a row to record (None: pending); _Refused when malformed."""
    block = planting.block_index
    if result.status == records_pb2.EVENT_STATUS_SUCCEEDED:
        digest = bytes(result.hash)
        if len(digest) != 32:
            raise _Refused("hash must be 32 bytes")
        if result.zeros != protocol.leading_zeros(digest):
            raise _Refused(
                f"zeros {result.zeros} is not the hash's {protocol.leading_zeros(digest)}"
                " leading zeros"
            )
        # The block's entropy is known while Block(index) lives; after that the chain's
        # own check of the transaction (below) stands for it.
        if entropy is not None and digest != protocol.kale_hash(
            block, result.nonce, entropy, protocol.farmer_key(planting.custodial_public_key)
        ):
            raise _Refused(
                f"hash is not the work hash of block {block}, nonce {result.nonce},"
                " the block's entropy and the farmer"
            )
        if result.gap < 1:
            raise _Refused("gap must be at least 1")
        if result.transaction.ledger < 1:
            raise _Refused("a success needs the ledger its work applied in")
        return NewWork(
            farmer_id=farmer,
            status=EventStatus.SUCCESS,
            nonce=result.nonce,
            hash=digest,
            zeros=result.zeros,
            gap=result.gap,
            tx_hash=_tx_hash(result.transaction.tx_hash, True),
            ledger=result.transaction.ledger,
        )
    if result.status == records_pb2.EVENT_STATUS_FAILED:
        failure = result.failure
        fault = wire.fault_of_party(failure.fault)
        if not result.HasField("failure") or fault is None or fault is Fault.NONE:
            raise _Refused("a failure must name whose fault it was")
        sent = bytes(result.hash) or None
        if sent is not None and len(sent) != 32:
            raise _Refused("hash must be 32 bytes")
        code = failure.code or common_pb2.FAILURE_CODE_MINER_FAILED
        return NewWork(
            farmer_id=farmer,
            status=EventStatus.FAILED,
            nonce=result.nonce if sent else None,
            hash=sent,
            zeros=result.zeros if sent else None,
            gap=result.gap or None,
            tx_hash=_tx_hash(result.transaction.tx_hash, False),
            ledger=result.transaction.ledger or None,
            fault=fault,
            error_code=wire.failure_label(code),
            error_message=failure.message.strip() or f"work failed: {wire.failure_label(code)}",
        )
    if result.status == records_pb2.EVENT_STATUS_PENDING:
        return None
    raise _Refused("status must be set")


def _same(a: NewWork, b: WorkRow) -> bool:
    """Whether a reported result is the recorded row (as reported, not observed)."""
    if a.status != b.status or b.observed_on_chain:
        return False
    if a.status == EventStatus.SUCCESS:
        return (a.nonce, a.hash, a.zeros, a.gap, a.tx_hash, a.ledger) == (
            None if b.nonce is None else int(b.nonce),
            b.hash,
            b.zeros,
            b.gap,
            b.tx_hash,
            b.ledger,
        )
    return (a.fault, a.error_code, a.error_message, a.tx_hash) == (
        b.fault,
        b.error_code,
        b.error_message,
        b.tx_hash,
    )


class WorkReports:
    """Checks and records ReportWork batches."""

    def __init__(self, plantings: PlantingStore, works: WorkStore, view: ChainView) -> None:
        self.plantings = plantings
        self.works = works
        self.view = view

    async def report(
        self, pooler: PoolerRow, request: pooler_pb2.ReportWorkRequest
    ) -> pooler_pb2.ReportWorkResponse:
        block_index = request.block_index
        items = self._parse(request)
        await self._check_block(block_index)
        assigned = {
            r.farmer_id: r
            for r in await self.plantings.plantings(pooler.id, block_index)
            if r.status == EventStatus.SUCCESS
        }
        entropy = await self._entropy(block_index)
        for item, result in zip(items, request.results, strict=True):
            if not item.open or item.farmer is None:
                continue
            planting = assigned.get(item.farmer)
            if planting is None:
                item.decide(
                    REFUSED,
                    f"farmer {item.farmer} holds no assignment of this pooler in block"
                    f" {block_index}",
                )
                continue
            item.planting = planting
            try:
                item.work = _check(result, item.farmer, planting, entropy)
            except _Refused as exc:
                item.decide(REFUSED, f"result for farmer {item.farmer}: {exc}")
                continue
            if item.work is None:
                item.decide(PENDING, "pending: report it again once it settles")

        # Successes not recorded identically are confirmed by the chain first (outside
        # the lock: reads are slow), then everything is decided against the records.
        recorded = await self.works.works(pooler.id, block_index)
        limit = asyncio.Semaphore(CHAIN_READS)
        await asyncio.gather(
            *(self._confirm(item, limit) for item in items if self._to_confirm(item, recorded))
        )
        ready: list[str] = []

        def decide(existing: list[WorkRow]) -> list[NewWork]:
            ready.clear()
            inserts: list[NewWork] = []
            for item in items:
                if item.open and item.work is not None:
                    new = self._against(item, item.work, existing)
                    if new is not None:
                        inserts.append(new)
                        item.decide(RECORDED)
                work = item.work
                if (
                    work
                    and work.status == EventStatus.SUCCESS
                    and item.outcome in (RECORDED, ALREADY_RECORDED)
                ):
                    ready.append(str(work.farmer_id))
            return inserts

        await self.works.record_works(pooler.id, block_index, decide)
        count = {o: sum(i.outcome == o for i in items) for o in (RECORDED, ALREADY_RECORDED)}
        for item in items:
            WORK_REPORTS.labels(_REPORT_LABELS.get(item.outcome, "retry")).inc()
        return pooler_pb2.ReportWorkResponse(
            recorded=count[RECORDED],
            already_recorded=count[ALREADY_RECORDED],
            refused=sum(i.outcome == REFUSED for i in items),
            retry=sum(i.outcome in (RETRY, PENDING) for i in items),
            ready_for_harvest=ready,
            outcomes=[
                pooler_pb2.WorkReportOutcome(
                    farmer_id=i.farmer_id, outcome=i.outcome, message=i.message
                )
                for i in items
            ],
            # Compensations are written once the block is settled (see docs/pool.md).
            compensation_owed_stroops=0,
        )

    @staticmethod
    def _parse(request: pooler_pb2.ReportWorkRequest) -> list[_Item]:
        """The request's results as items; INVALID_ARGUMENT when malformed as a whole."""
        if not request.results:
            raise InvalidArgument("results is empty: report at least one farmer's work")
        if len(request.results) > MAX_RESULTS:
            raise InvalidArgument(f"at most {MAX_RESULTS} results per report")
        items: list[_Item] = []
        seen: set[str] = set()
        for result in request.results:
            item = _Item(result.farmer_id)
            try:
                item.farmer = check_uuid("farmer_id", result.farmer_id)
            except InvalidArgument as exc:
                item.decide(REFUSED, exc.message)
            key = str(item.farmer) if item.farmer is not None else result.farmer_id
            if key in seen:
                raise InvalidArgument(f"farmer {key} appears twice in one report")
            seen.add(key)
            items.append(item)
        return items

    async def _check_block(self, block_index: int) -> None:
        try:
            current = await self.view.current_index()
            if block_index > current:  # the cached index may be a second old: read again
                current = (await self.view.plantable(fresh=True)).current.index
        except Unavailable:
            return  # each success will say RETRY; failures need no chain
        if block_index > current:
            raise OutOfRange(
                f"block {block_index} has not opened: the farm's current block is {current}"
            )

    async def _entropy(self, block_index: int) -> bytes | None:
        try:
            block = await self.view.block(block_index)
        except Unavailable:
            return None
        return None if block is None else block.entropy

    @staticmethod
    def _to_confirm(item: _Item, recorded: list[WorkRow]) -> bool:
        work = item.work
        if not item.open or work is None or work.status != EventStatus.SUCCESS:
            return False
        return not any(_same(work, r) for r in recorded if r.farmer_id == work.farmer_id)

    async def _confirm(self, item: _Item, limit: asyncio.Semaphore) -> None:
        """Leave the item open if the chain confirms its success; else decide it."""
        assert item.work is not None and item.planting is not None
        async with limit:
            try:
                problem = await self._disproof(item.work, item.planting)
            except NotAFarmCallError as exc:
                item.decide(REFUSED, f"result for farmer {item.farmer}: {exc}")
            except ChainError as exc:  # unreachable, or an answer that cannot be read
                item.decide(
                    RETRY,
                    f"result for farmer {item.farmer}: the chain cannot be read now ({exc});"
                    " report it again later",
                )
            else:
                if problem is not None:
                    item.decide(REFUSED, f"result for farmer {item.farmer}: {problem}")

    async def _disproof(self, work: NewWork, planting: PlantingRow) -> str | None:
        """What the chain says against a claimed success (None: it confirms it)."""
        assert work.tx_hash is not None
        tx = work.tx_hash
        chain = self.view.chain
        farmer = planting.custodial_public_key
        call = await read_farm_call(chain, tx)
        if call is None:  # older than the RPC's memory: the pail is the proof
            pail = await read_pail(chain, farmer, planting.block_index)
            where = f"the RPC no longer knows transaction {tx}, and the pail of block"
            if pail is None:
                return f"{where} {planting.block_index} is gone: the work cannot be confirmed"
            if not pail.worked:
                return f"{where} {planting.block_index} shows no work"
            if (pail.zeros, pail.gap) != (work.zeros, work.gap):
                return (
                    f"{where} {planting.block_index} shows zeros {pail.zeros} and gap"
                    f" {pail.gap}, not zeros {work.zeros} and gap {work.gap}"
                )
            return None
        if call.function != "work":
            return f"transaction {tx} is a {call.function} call, not a work"
        if not call.succeeded:
            return f"transaction {tx} failed on chain"
        if call.farmer != farmer:
            return f"transaction {tx} worked for another farmer ({call.farmer})"
        if (call.hash, call.nonce) != (work.hash, work.nonce):
            return f"transaction {tx} submitted another hash or nonce"
        if call.ledger != work.ledger:
            return f"transaction {tx} applied in ledger {call.ledger}, not {work.ledger}"
        if planting.ledger is not None and call.ledger <= planting.ledger:
            return f"transaction {tx} applied before the farmer's plant in this block"
        if call.returned != work.gap:
            return f"transaction {tx} returned gap {call.returned}, not {work.gap}"
        return None

    @staticmethod
    def _against(item: _Item, work: NewWork, existing: list[WorkRow]) -> NewWork | None:
        """Decide a checked result against the recorded rows; the row to insert, if any."""
        mine = [w for w in existing if w.farmer_id == work.farmer_id]
        done = next((w for w in mine if w.status == EventStatus.SUCCESS), None)
        if done is not None:
            if _same(work, done) or (work.status == EventStatus.SUCCESS and done.observed_on_chain):
                # A confirmed success of a pail already seen worked on chain adds nothing.
                item.decide(ALREADY_RECORDED)
            else:
                item.decide(
                    REFUSED,
                    f"result for farmer {work.farmer_id}: the work is already recorded as"
                    f" succeeded (work {done.id}) with another result",
                )
            return None
        if any(_same(work, w) for w in mine):
            item.decide(ALREADY_RECORDED)
            return None
        return work
