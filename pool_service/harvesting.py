"""Harvests: every successfully worked pail of a finished block is harvested through
WalletService.Harvest (key `harvest:<farmer_id>:<block>`), by a background loop and
sooner when a pooler asks (RequestHarvest). The reward recorded is the one the contract
returned; the ledger credit (reward + stake) follows from the `harvests` row by trigger.

A harvest refused before anything was signed (not ready yet, the chain unreachable) is
not recorded and is tried again; one that failed on chain is recorded once per
transaction. A pail that is gone (`PAIL_MISSING`) may have been harvested by someone
else (anyone may call harvest): it is recorded gone only once the chain follower
(`pool_service.deposits`) has read the chain past the moment it was found missing and
recorded no harvest of it; then it is not tried again.

Before harvesting, each pass also asks the chain about planted pails of finished blocks
whose work the books do not know (no successful work row, none observed on chain, no
harvest): the pooler's report never came, or it reported a failure. The pail's state
is the answer, recorded once as a `works` row with `observed_on_chain`: worked (zeros
and gap from the pail; harvested like any other), not worked (`WORK_MISSING`), or gone
without a harvest (`PAIL_MISSING`). That row is the verdict on the pail's work, and the
one place whose fault a failed work is (`observed_verdict`): the pool's when its plant
was recorded after the block's work window (`plantings.recorded_late`: the pooler got
the assignment too late), else the party of the failure the pooler reported (the chain
only confirms it), else the pooler's (nothing was reported). Compensations follow it.

Chain reads are made once per pass: the farm's view (current block, latest ledger) from
the briefly cached `ChainView`, and "has the chain follower read past now" once, after
all of the pass's answers, only when one of them needs it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from uuid import UUID

import grpc

from kalepool import wire
from kalepool.chain import ChainError, Fault, read_pails
from kalepool.chain import Pail as ChainPail
from kalepool.grpc_server import FailedPrecondition
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2, wallet_pb2
from pool_service import convert
from pool_service.books.compensations import CompensationStore
from pool_service.books.enums import EventStatus
from pool_service.books.harvests import HarvestRow, HarvestStore, Pail
from pool_service.books.poolers import PoolerRow
from pool_service.books.works import NewWork, Unreported, WorkStore
from pool_service.chain_view import ChainView
from pool_service.loops import every
from pool_service.metrics import HARVESTS
from pool_service.wallet import WalletClient

log = logging.getLogger("pool_service")


def harvest_pb(row: HarvestRow) -> records_pb2.HarvestEvent:
    return records_pb2.HarvestEvent(
        harvest_id=str(row.id),
        block_index=row.block_index,
        farmer_id=str(row.farmer_id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        reward_stroops=row.reward_amount or 0,
        stake_returned_stroops=row.stake_amount or 0,
        status=wire.event_status(row.status),
        transaction=convert.tx_ref(row.tx_hash or None, row.status, row.ledger),
        failure=convert.failure_pb(row.status, row.fault, row.error_code, row.error_message),
        recorded_at=wire.timestamp(row.created_at),
    )


# Temporary entries (blocks, pails) live at least the network's minimum temporary TTL,
# about a day: a pail planted longer ago is gone whatever happened to it.
PAIL_LIFETIME_LEDGERS = 17_280
PAIL_LIFETIME_SECONDS = 86_400


@dataclass
class Round:
    """What one pass over some pails did."""

    pending: list[Pail] = field(default_factory=list)
    # Found gone (PAIL_MISSING), with the wallet's answer: settled after the pass, once
    # it is known whether the chain follower has read past that moment.
    missing: list[tuple[Pail, wallet_pb2.HarvestResponse]] = field(default_factory=list)


class Harvester:
    """Harvests worked pails of finished blocks, in parallel."""

    def __init__(
        self,
        harvests: HarvestStore,
        works: WorkStore,
        wallet: WalletClient,
        view: ChainView,
        settings: Settings,
        compensations: CompensationStore | None = None,
    ) -> None:
        self.harvests = harvests
        self.works = works
        self.compensations = compensations
        self.wallet = wallet
        self.view = view
        self.settings = settings
        self._limit = asyncio.Semaphore(settings.plant_concurrency)

    async def harvest(self, pails: list[Pail]) -> Round:
        done = Round()
        await asyncio.gather(*(self._one(pail, done) for pail in pails))
        if done.missing:
            # One look for the whole pass, after every answer: a harvest by someone else
            # before any of them is in the books once the follower has read past now.
            if await self._follower_past():
                for pail, response in done.missing:
                    await self._record_failed(pail, response)
            else:
                done.pending.extend(pail for pail, _ in done.missing)
        return done

    async def _one(self, pail: Pail, done: Round) -> None:
        request = wallet_pb2.HarvestRequest(
            idempotency_key=f"harvest:{pail.farmer_id}:{pail.block_index}",
            farmer_address=pail.custodial_public_key,
            block_index=pail.block_index,
        )
        async with self._limit:
            try:
                response = await self.wallet.stub.Harvest(
                    request, timeout=self.settings.harvest_timeout_seconds
                )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "harvest farmer=%s block=%d not made (%s): retried later",
                    pail.farmer_id,
                    pail.block_index,
                    exc.code().name,
                )
                done.pending.append(pail)
                return
        out = response.outcome
        code = out.failure.code
        if out.status == common_pb2.TX_STATUS_SUCCESS:
            await self.harvests.record(
                pail,
                status=EventStatus.SUCCESS,
                reward=response.reward_stroops,
                tx_hash=out.tx_hash,
                ledger=out.ledger,
            )
            HARVESTS.labels("success").inc()
        elif code == common_pb2.FAILURE_CODE_PAIL_MISSING:
            # Harvested by someone else, perhaps: settled once the follower could know.
            done.missing.append((pail, response))
        elif out.status in (common_pb2.TX_STATUS_FAILED, common_pb2.TX_STATUS_EXPIRED):
            await self._record_failed(pail, response)
            done.pending.append(pail)  # a new transaction may still succeed
        else:  # pending, not ready yet, or refused before signing: try again later
            done.pending.append(pail)

    async def _record_failed(self, pail: Pail, response: wallet_pb2.HarvestResponse) -> None:
        out = response.outcome
        fault = wire.fault_of_party(out.failure.fault) or Fault.POOL
        await self.harvests.record(
            pail,
            status=EventStatus.FAILED,
            tx_hash=out.tx_hash or None,
            # A failure nobody caused is still the pool's to answer for.
            fault=Fault.POOL if fault is Fault.NONE else fault,
            error_code=wire.failure_label(out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED),
            error_message=out.failure.message or common_pb2.TxStatus.Name(out.status),
        )
        HARVESTS.labels("failed").inc()

    async def _settle(self, current: int, latest_ledger: int) -> None:
        """Compensations become certain once a block's pails are settled (after a pass)."""
        if self.compensations is not None:
            await self.compensations.settle(current, latest_ledger - PAIL_LIFETIME_LEDGERS)

    async def _follower_past(self) -> bool:
        """Whether the chain follower has read past the latest ledger now, so that any
        harvest made until now (by anyone) is in the books. (Read fresh, never from the
        cache: it must be read after the answers it judges.)"""
        try:
            seen = (await self.view.chain.latest_ledger()).sequence
        except ChainError:
            return False
        read = await self.harvests.follower_ledger()
        return read is not None and read >= seen

    async def observe(
        self,
        current: int,
        latest_ledger: int,
        pooler_id: UUID | None = None,
        block_index: int | None = None,
    ) -> int:
        """Record what the chain shows of planted pails of finished blocks whose work the
        books do not know (see the module's docstring); how many were recorded."""
        from_block = current - PAIL_LIFETIME_SECONDS // self.view.block_seconds - 1
        todo = await self.works.unreported(
            current,
            max(from_block, 0),
            latest_ledger - PAIL_LIFETIME_LEDGERS,
            pooler_id,
            block_index,
            limit=self.settings.max_harvest_batch_size,
        )
        if not todo:
            return 0
        try:
            pails = await read_pails(
                self.view.chain, [(u.custodial_public_key, u.block_index) for u in todo]
            )
        except ChainError as exc:
            log.warning("unreported pails not read (%s): read again next pass", exc)
            return 0
        # Only a pail that is gone needs the follower; asked once for the pass.
        gone = any(pails[(u.custodial_public_key, u.block_index)] is None for u in todo)
        follower_knows = gone and await self._follower_past()
        recorded = 0
        for u in todo:
            work = observed_verdict(
                u, pails[(u.custodial_public_key, u.block_index)], follower_knows
            )
            if work is None:
                continue
            row = await self.works.record_observed(u, work)
            if row is not None:
                recorded += 1
                log.info(
                    "work of farmer=%s block=%d observed on chain: %s%s",
                    u.farmer_id,
                    u.block_index,
                    row.status,
                    f" ({row.error_code})" if row.error_code else "",
                )
        return recorded

    async def request(
        self, pooler: PoolerRow, block_index: int, farmer_ids: list[UUID]
    ) -> pooler_pb2.RequestHarvestResponse:
        view = await self.view.plantable()
        if block_index >= view.current.index:  # the cached view may be a second old
            view = await self.view.plantable(fresh=True)
        current, latest = view.current.index, view.latest_ledger
        if block_index >= current:
            raise FailedPrecondition(
                f"block {block_index} is not over: the farm's current block is {current}"
            )
        await self.observe(current, latest, pooler.id, block_index)
        # Every pail of the block asked for (at most one per farmer of the pooler's).
        limit = max(pooler.max_farmers, len(farmer_ids), 1)
        pails = await self.harvests.pails(current, pooler.id, block_index, farmer_ids, limit)
        done = await self.harvest(pails)
        await self._settle(current, latest)
        rows = await self.harvests.harvests(pooler.id, block_index, farmer_ids)
        harvested = [r for r in rows if r.status == EventStatus.SUCCESS]
        settled = {r.farmer_id for r in harvested}
        failed = [r for r in rows if r.status == EventStatus.FAILED and r.farmer_id not in settled]
        pending_ids = {p.farmer_id for p in done.pending} - settled
        return pooler_pb2.RequestHarvestResponse(
            block_index=block_index,
            harvested=[harvest_pb(r) for r in harvested],
            failed=[harvest_pb(r) for r in failed if r.farmer_id not in pending_ids],
            pending=[
                records_pb2.HarvestEvent(
                    block_index=p.block_index,
                    farmer_id=str(p.farmer_id),
                    pooler_id=str(p.pooler_id),
                    custodial_address=p.custodial_public_key,
                    status=records_pb2.EVENT_STATUS_PENDING,
                )
                for p in done.pending
                if p.farmer_id in pending_ids
            ],
            total_reward_stroops=sum(r.reward_amount or 0 for r in harvested),
        )

    async def run_once(self) -> None:
        """One pass: look at unreported pails, harvest every finished block's worked
        pails, then settle blocks."""
        view = await self.view.plantable()
        current, latest = view.current.index, view.latest_ledger
        await self.observe(current, latest)
        await self.harvest_pages(current)
        await self._settle(current, latest)

    async def harvest_pages(self, current: int) -> None:
        """Harvest finished blocks' worked pails a page (`max_harvest_batch_size`) at a
        time, all of a page at once, on to the next page while the last was full and
        settled at least one pail (those left pending come first again: a page where
        nothing settles ends the pass, until the next)."""
        size = self.settings.max_harvest_batch_size
        while True:
            pails = await self.harvests.pails(current, limit=size)
            if not pails:
                return
            done = await self.harvest(pails)
            if len(pails) < size or len(done.pending) >= len(pails):
                return

    async def run(self, interval: float) -> None:
        """Harvest every finished block's worked pails, forever, every `interval` s."""
        await every(interval, self.run_once, "harvest")


def _verdict(u: Unreported, what: str) -> tuple[Fault, str]:
    """Whose fault a pail's failed work is, and the sentence that says why; `what` is
    what the chain shows of the pail."""
    if u.recorded_late:
        return Fault.POOL, (
            f"{what}: the pool recorded its plant after the block's work window, so the"
            " assignment reached the pooler too late to be worked"
        )
    if u.reported_fault is not None:
        return u.reported_fault, (
            f"{what}, confirming the failure the pooler reported ({u.reported_code},"
            f" the {u.reported_fault}'s fault): {u.reported_message}"
        )
    return Fault.POOLER, f"{what} (no work was reported)"


def observed_verdict(u: Unreported, pail: ChainPail | None, follower_knows: bool) -> NewWork | None:
    """The works row the pail's state proves, with whose fault a failure is (see the
    module's docstring); None while it proves nothing yet."""
    where = f"the pail of block {u.block_index}"
    if pail is not None and pail.worked:
        return NewWork(
            farmer_id=u.farmer_id,
            status=EventStatus.SUCCESS,
            zeros=pail.zeros,
            gap=pail.gap,
            observed_on_chain=True,
        )
    if pail is None:
        if not follower_knows:
            return None  # a harvest by someone else may not be in the books yet
        code = common_pb2.FAILURE_CODE_PAIL_MISSING
        what = f"{where} was gone from the chain, never harvested, when the pool looked"
    else:
        code = common_pb2.FAILURE_CODE_WORK_MISSING
        what = f"the chain shows {where} never worked"
    fault, message = _verdict(u, what)
    return NewWork(
        farmer_id=u.farmer_id,
        status=EventStatus.FAILED,
        fault=fault,
        error_code=wire.failure_label(code),
        error_message=message,
        observed_on_chain=True,
    )
