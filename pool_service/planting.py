"""RequestPlant: plant every active funded farmer of a pooler in one block, in parallel.

Each farmer's plant is first written down as a `plant_requests` row (idempotency key
`plant:<farmer_id>:<block>`, the stake), and only then sent to `WalletService.Plant`, at
most `plant_concurrency` at once. An answer that settles the plant is recorded as a
`plantings` row (success, in the block where the chain put the pail; or failure, with
whose fault it was) in the same database transaction that settles the request. An answer
that proves nothing leaves the request unsettled: the reconciler (`pool_service.reconcile`)
asks again with the same key until it does. Asking again for the same (pooler, block)
plants nobody twice: farmers with a recorded success are answered from the record, the
wallet replays any transaction it already made for a key, and the database holds one
success per (farmer, block) and one request per (farmer, block). A request that asks to
be answered when sent (`answer_when_sent`) gets its answer once the wallet has sent
every plant; the sent ones are then driven to their record in the background, the same
way (the reconciler remains the fallback).

Two judgements are the pool's own, and are made from the chain and the request, never
from who drives it (a first call, a repeat, the reconciler of any replica):

- a block that moved on before the wallet sent the plant (`BLOCK_MISMATCH`, nothing
  sent) is the chain's doing while the request is younger than the plant deadline
  (`plant_timeout_seconds`: the block ended between the pool's check and the wallet's),
  and the pool's failure once it is older (the pool did not get it out in time);
- a success recorded when the chain's clock is past its block's work window (opening
  time + block interval - `pooler_submit_margin_seconds`) is recorded `recorded_late`:
  its assignment reached the pooler too late to be worked, so a missing or late work of
  that pail is the pool's fault (see `pool_service.books.compensations`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import grpc

from kalepool import wire
from kalepool.chain import Fault
from kalepool.grpc_server import FailedPrecondition, Unavailable
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2, wallet_pb2
from pool_service import convert
from pool_service.books.enums import EventStatus
from pool_service.books.farmers import FarmerRow, FarmerStore
from pool_service.books.plantings import NewPlanting, PlantingRow, PlantingStore, PlantRequestRow
from pool_service.books.poolers import PoolerRow
from pool_service.chain_view import ChainView
from pool_service.contract_watch import ContractWatch
from pool_service.locks import KeyedLocks
from pool_service.metrics import PLANTS
from pool_service.wallet import (
    REFUSED_FOR_NOW,
    ItemRefusal,
    Refusal,
    WalletClient,
    nothing_signed,
)

log = logging.getLogger("pool_service")

BPS_MAX = 10_000

# Whose failure a refusal that proves nothing was signed is (`pool_service.wallet.
# NOTHING_SIGNED` decides which refusals prove it): a missing account is the farmer's
# (never funded, or merged away); a request the wallet found malformed, or a wallet it
# does not hold, is the pool's.
_REFUSED_BY: dict[grpc.StatusCode, tuple[Fault, common_pb2.FailureCode.ValueType]] = {
    grpc.StatusCode.FAILED_PRECONDITION: (Fault.FARMER, common_pb2.FAILURE_CODE_ACCOUNT_MISSING),
}


def stake_for(farmer: FarmerRow) -> int:
    """The farmer's stake: its share (bps) of the KALE balance the pool accounts for."""
    return max(0, farmer.current_balance) * farmer.stake_bps // BPS_MAX


def plant_key(farmer_id: UUID, block_index: int) -> str:
    """The wallet's idempotency key of the farmer's plant for the block."""
    return f"plant:{farmer_id}:{block_index}"


class Unsettled(enum.Enum):
    """An answer that records nothing now."""

    PENDING = "pending"  # the plant's fate is unknown: ask again later
    PAIL_EXISTS = "pail_exists"  # another attempt holds the pail: settle by its record


Decision = NewPlanting | Unsettled


def decide_answer(
    request: PlantRequestRow, response: wallet_pb2.PlantResponse, *, late: bool
) -> Decision:
    """What the wallet's answer to a plant means for the books.

    `late`: the request is older than the plant deadline, so a block that moved on
    before anything was sent means the pool did not get the plant out in time.
    """
    out = response.outcome
    tx_hash = out.tx_hash or None
    if out.status == common_pb2.TX_STATUS_PENDING:
        return Unsettled.PENDING
    if out.status == common_pb2.TX_STATUS_SUCCESS:
        if response.plant_ledger > 0:
            # Recorded where the chain put the pail: the block asked, or the next one
            # when the plant applied after the block became due (block 0 is a block:
            # the pail's ledger says whether the wallet found it).
            return NewPlanting(
                farmer_id=request.farmer_id,
                block_index=response.block_index,
                stake=request.stake_amount,
                status=EventStatus.SUCCESS,
                tx_hash=tx_hash,
                ledger=response.plant_ledger,
            )
        log.warning(
            "plant %s applied (tx %s) but the wallet found no pail of it: left unsettled",
            request.idempotency_key,
            tx_hash,
        )
        return Unsettled.PENDING
    if out.failure.code == common_pb2.FAILURE_CODE_PAIL_EXISTS:
        return Unsettled.PAIL_EXISTS
    code = out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED
    message = out.failure.message or common_pb2.TxStatus.Name(out.status)
    fault = wire.fault_of_party(out.failure.fault) or Fault.POOL
    mismatch = code == common_pb2.FAILURE_CODE_BLOCK_MISMATCH
    if mismatch and out.status == common_pb2.TX_STATUS_REJECTED:
        if late:
            fault = Fault.POOL
            message = (
                f"the plant for block {request.block_index} was never sent and that block is"
                f" over: the pool did not complete the request in time ({message})"
            )
        else:
            fault = Fault.CHAIN  # the block moved on between the pool's check and the wallet's
    elif fault == Fault.NONE:
        fault = Fault.CHAIN  # a refusal nobody caused
    return _failed(request, tx_hash, fault, code, message)


def decide_item(
    request: PlantRequestRow, result: wallet_pb2.PlantItemResult | None, *, late: bool
) -> Decision:
    """What the wallet's answer to one item of a PlantBatch means: its plant's answer
    (`decide_answer`) or its refusal (`decide_refusal`); an item the wallet did not
    answer (never the case) proves nothing."""
    if result is None:
        log.warning("the wallet's batch answer left out plant %s", request.idempotency_key)
        return Unsettled.PENDING
    if result.HasField("error"):
        return decide_refusal(request, ItemRefusal(result.error))
    return decide_answer(request, result.plant, late=late)


def decide_refusal(request: PlantRequestRow, exc: Refusal) -> Decision:
    """A wallet call that ended in an error status: a failure only when it proves nothing
    was signed and nothing will be; otherwise the plant may be on its way, or be asked
    again (a refusal for now), and stays pending."""
    if not nothing_signed(exc, request.idempotency_key) or exc.code() in REFUSED_FOR_NOW:
        return Unsettled.PENDING
    code = exc.code()
    fault, failure = _REFUSED_BY.get(code, (Fault.POOL, common_pb2.FAILURE_CODE_INTERNAL))
    return _failed(
        request,
        None,
        fault,
        failure,
        f"the wallet service refused the plant ({code.name}): {exc.details()}",
    )


def _failed(
    request: PlantRequestRow,
    tx_hash: str | None,
    fault: Fault,
    code: common_pb2.FailureCode.ValueType,
    message: str,
) -> NewPlanting:
    """The failed planting of a request."""
    return NewPlanting(
        farmer_id=request.farmer_id,
        block_index=request.block_index,
        stake=request.stake_amount,
        status=EventStatus.FAILED,
        tx_hash=tx_hash,
        fault=fault,
        error_code=wire.failure_label(code),
        error_message=message,
    )


@dataclass
class Attempt:
    """One farmer's plant in this request: its request and its record (None: pending)."""

    farmer: FarmerRow
    request: PlantRequestRow | None = None
    row: PlantingRow | None = None


class Planter:
    """Runs plant requests and drives plant requests to their record;
    `on_planted(pooler_id)` is called when a new success is recorded. With a `watch`
    (the service always gives one) no request is taken while the farm's code is not the
    acknowledged one or the farm is paused (`pool_service.contract_watch`)."""

    def __init__(
        self,
        farmers: FarmerStore,
        plantings: PlantingStore,
        wallet: WalletClient,
        view: ChainView,
        settings: Settings,
        on_planted: Callable[[UUID], None],
        watch: ContractWatch | None = None,
    ) -> None:
        self.watch = watch
        self.farmers = farmers
        self.plantings = plantings
        self.wallet = wallet
        self.view = view
        self.settings = settings
        self.on_planted = on_planted
        self._limit = asyncio.Semaphore(settings.plant_concurrency)
        # One request per (pooler, block) at a time in this process.
        self.locks: KeyedLocks[tuple[UUID, int]] = KeyedLocks()
        # Requests this process is asking the wallet about right now (the reconciler
        # leaves them to the call in flight).
        self.driving: set[int] = set()
        # Background follows of plants answered when sent (kept referenced until done).
        self._following: set[asyncio.Task[None]] = set()

    async def request(
        self, pooler: PoolerRow, block_index: int, max_farmers: int, *, when_sent: bool = False
    ) -> pooler_pb2.RequestPlantResponse:
        """Plant the pooler's farmers in the block; answered once all have settled, or
        with `when_sent` once all are sent (followed to their record in the background)."""
        # Read now, never from the cache: a second-old view may name a block that is due.
        plantable = await self.view.plantable(fresh=True)
        if self.watch is not None:
            # The same read names the farm's code and pause flag: refused before anything
            # is written, so a held farm leaves no request behind.
            await self.watch.require_ok(plantable.current)
        target = plantable.target
        if block_index != target:
            current = plantable.current.index
            why = "" if target == current else ", which is due: a plant now opens the next"
            raise FailedPrecondition(
                f"block {block_index} cannot be planted now: the block to plant is {target}"
                f" (the farm's current block is {current}{why})"
            )
        # One request per (pooler, block) at a time in this process; the database's
        # unique keys and locks hold across processes.
        async with self.locks.hold((pooler.id, block_index)):
            return await self._plant(pooler, block_index, max_farmers, when_sent)

    async def _plant(
        self, pooler: PoolerRow, block_index: int, max_farmers: int, when_sent: bool
    ) -> pooler_pb2.RequestPlantResponse:
        await self.plantings.claim_block(pooler.id, block_index)
        limit = min(max_farmers or pooler.max_farmers, self.settings.max_farmers_per_pooler)
        farmers = await self.farmers.plantable_farmers(pooler.id, limit)
        recorded = await self.plantings.plantings(pooler.id, block_index)
        succeeded = {r.farmer_id: r for r in recorded if r.status == EventStatus.SUCCESS}
        attempts = [Attempt(f, row=succeeded.get(f.id)) for f in farmers]
        todo = [a for a in attempts if a.row is None]
        # Written down before the wallet is called, all in one transaction: a crash from
        # here on leaves unsettled requests, which the reconciler drives to their record.
        opened = await self.plantings.open_plant_requests(
            pooler.id,
            block_index,
            [(a.farmer.id, plant_key(a.farmer.id, block_index), stake_for(a.farmer)) for a in todo],
        )
        by_farmer = {r.farmer_id: r for r in opened}
        # Settled by a success already (e.g. the plant landed in the next block): its
        # record; the others are asked of the wallet, in batches.
        settled: list[tuple[Attempt, int]] = []
        asked: list[tuple[Attempt, PlantRequestRow]] = []
        for a in todo:
            request = a.request = by_farmer[a.farmer.id]
            if request.settled_at is not None and request.planting_id is not None:
                settled.append((a, request.planting_id))
            else:
                asked.append((a, request))
        read = await asyncio.gather(*(self.plantings.planting(p) for _, p in settled))
        driven = await self.drive_many([r for _, r in asked], when_sent=when_sent)
        for (a, _), row in zip([*settled, *asked], [*read, *driven], strict=True):
            a.row = row
        sent = [a.request for a in todo if a.row is None and a.request is not None]
        if when_sent and sent:
            # Answered now; each is followed to its record here (the reconciler is the
            # fallback), and its assignment reaches the stream as it lands.
            self._follow(pooler.id, block_index, sent)

        planted = {
            a.farmer.id: a.row for a in attempts if a.row and a.row.status == EventStatus.SUCCESS
        }
        # Farmers planted earlier but outside this request's selection are still planted.
        for r in recorded:
            if r.status == EventStatus.SUCCESS:
                planted.setdefault(r.farmer_id, r)
        failed = [
            a.row for a in attempts if a.row is not None and a.row.status == EventStatus.FAILED
        ]
        pending = [
            _pending_event(a.request) for a in todo if a.row is None and a.request is not None
        ]
        if not pending:
            await self.plantings.plant_settled(pooler.id, block_index)
        planted_rows = sorted((r for r in planted.values() if r is not None), key=lambda r: r.id)
        return pooler_pb2.RequestPlantResponse(
            block_index=block_index,
            planted=[convert.planting_pb(r) for r in planted_rows],
            failed=[convert.planting_pb(r) for r in failed],
            pending=pending,
            summary=pooler_pb2.PlantSummary(
                total_requested=len(planted_rows) + len(failed) + len(pending),
                planted=len(planted_rows),
                failed=len(failed),
                pending=len(pending),
                total_staked_stroops=sum(r.stake_amount for r in planted_rows),
            ),
        )

    def _follow(self, pooler_id: UUID, block_index: int, requests: list[PlantRequestRow]) -> None:
        """Drive sent plants to their record in the background (the wallet answers each
        batch once its plants settled: one more call per batch, not per plant); the
        (pooler, block) is marked settled when all are."""

        async def follow() -> None:
            rows = await self.drive_many(requests)
            if all(row is not None for row in rows):
                await self.plantings.plant_settled(pooler_id, block_index)

        task = asyncio.get_running_loop().create_task(follow())
        self._following.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._following.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                # The requests stay unsettled: the reconciler drives them.
                log.warning("plants of block %d left to the reconciler: %s", block_index, exc)

        task.add_done_callback(done)

    async def drive(
        self,
        request: PlantRequestRow,
        limit: asyncio.Semaphore | None = None,
        *,
        when_sent: bool = False,
    ) -> PlantingRow | None:
        """`drive_many` of one request."""
        (row,) = await self.drive_many([request], limit, when_sent=when_sent)
        return row

    async def drive_many(
        self,
        requests: Sequence[PlantRequestRow],
        limit: asyncio.Semaphore | None = None,
        *,
        when_sent: bool = False,
    ) -> list[PlantingRow | None]:
        """Ask the wallet for the requests' plants (the same key and parameters every
        time: it replays what it already signed), `plant_batch_size` to a `PlantBatch`
        call, and record what each answer settles. For each request, the record that
        settles it, or None while its fate is unknown.

        At most `limit` calls (default: `plant_concurrency`, shared by RequestPlant
        calls) at once; the reconciler passes a smaller limit of its own. `when_sent`:
        the wallet answers once the plants are sent (PENDING: None here) instead of once
        settled."""
        size = self.settings.plant_batch_size
        batches = [requests[i : i + size] for i in range(0, len(requests), size)]
        driven = await asyncio.gather(
            *(self._drive_batch(b, limit or self._limit, when_sent) for b in batches)
        )
        return [row for rows in driven for row in rows]

    async def _drive_batch(
        self, requests: Sequence[PlantRequestRow], limit: asyncio.Semaphore, when_sent: bool
    ) -> list[PlantingRow | None]:
        ids = [r.id for r in requests]
        self.driving.update(ids)
        try:
            async with limit:
                try:
                    response = await self.wallet.stub.PlantBatch(
                        wallet_pb2.PlantBatchRequest(
                            plants=[
                                wallet_pb2.PlantItem(
                                    idempotency_key=r.idempotency_key,
                                    farmer_address=r.custodial_public_key,
                                    block_index=r.block_index,
                                    stake_stroops=r.stake_amount,
                                )
                                for r in requests
                            ],
                            answer_when_sent=when_sent,
                        ),
                        timeout=self.settings.plant_timeout_seconds,
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and len(requests) > 1:
                        # One malformed item refuses the whole batch (nothing signed):
                        # asked one by one below, only that one fails.
                        decisions = None
                    else:
                        decisions = [decide_refusal(r, exc) for r in requests]
                else:
                    results = {r.idempotency_key: r for r in response.results}
                    deadline = self.settings.plant_timeout_seconds
                    decisions = [
                        decide_item(r, results.get(r.idempotency_key), late=r.age() >= deadline)
                        for r in requests
                    ]
        finally:
            self.driving.difference_update(ids)
        if decisions is None:
            alone = await asyncio.gather(
                *(self._drive_batch([r], limit, when_sent) for r in requests)
            )
            return [row for rows in alone for row in rows]
        return list(
            await asyncio.gather(
                *(self._record(r, d) for r, d in zip(requests, decisions, strict=True))
            )
        )

    async def _record(self, request: PlantRequestRow, decision: Decision) -> PlantingRow | None:
        """Record what a decision settles: the record that settles the request, or None
        while its fate is unknown."""
        if decision is Unsettled.PENDING:
            return None
        if decision is Unsettled.PAIL_EXISTS:
            # Nobody's failure: the attempt that opened the pail is the record, once it
            # is recorded (its own request is driven too).
            return await self.plantings.settle_by_success(request)
        if decision.status == EventStatus.SUCCESS:
            try:
                after_window = await self.view.work_window_closed(
                    decision.block_index, self.settings.pooler_submit_margin_seconds
                )
            except Unavailable as exc:
                # Whose a missing work would be is part of the record: ask again later.
                log.warning(
                    "plant %s applied; left unsettled until the farm can be read (%s)",
                    request.idempotency_key,
                    exc.message,
                )
                return None
            decision = dataclasses.replace(decision, recorded_late=after_window)
        row, new = await self.plantings.record_planting(request, decision)
        if new and row is not None:
            PLANTS.labels(str(row.status)).inc()
            log.info(
                "plant farmer=%s block=%d %s%s%s",
                row.farmer_id,
                row.block_index,
                row.status,
                f" ({row.fault}: {row.error_message})" if row.error_message else "",
                " after the block's work window: a missing work is the pool's fault"
                if row.recorded_late
                else "",
            )
            if row.status == EventStatus.SUCCESS:
                self.on_planted(row.pooler_id)
        return row


def _pending_event(request: PlantRequestRow) -> records_pb2.PlantingEvent:
    return records_pb2.PlantingEvent(
        block_index=request.block_index,
        farmer_id=str(request.farmer_id),
        pooler_id=str(request.pooler_id),
        custodial_address=request.custodial_public_key,
        stake_stroops=request.stake_amount,
        status=records_pb2.EVENT_STATUS_PENDING,
    )
