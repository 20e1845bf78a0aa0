"""Farming cycles as the pool's API reports them: which blocks of this run are complete.

A cycle is one block: its farmers planted, worked and harvested. `kale-pool up` follows
the blocks first asked for after it started (`BlockSummary.plant_requested_at`), reports
each as it completes, and with `--blocks K` stops after K. A block counts as complete
once it is over and the pool has settled it (`BLOCK_STATUS_COMPLETED` or `_FAILED`: every
worked pail harvested or gone) and every farmer planted in it has a work record. Its
outcome is accepted when each planted farmer was worked and harvested, or its failure
was recorded with whose fault it was. Everything here reads `ListBlocks` and `GetBlock`
through the operator's client: the pool's public API, never its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field

import grpc
from rich.table import Table

from kalepool.app.observer import StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.tables import block_failures, blocks_table, format_kale
from kalepool.v1 import common_pb2, pool_pb2, records_pb2

_POLL_SECONDS = 2.0
_SETTLED = (pool_pb2.BLOCK_STATUS_COMPLETED, pool_pb2.BLOCK_STATUS_FAILED)
_ATTRIBUTED = (
    common_pb2.FAULT_PARTY_FARMER,
    common_pb2.FAULT_PARTY_POOL,
    common_pb2.FAULT_PARTY_POOLER,
    common_pb2.FAULT_PARTY_CHAIN,
)
_SUCCEEDED = records_pb2.EVENT_STATUS_SUCCEEDED
_FAILED = records_pb2.EVENT_STATUS_FAILED


@dataclass(frozen=True)
class FarmerFailure:
    """One farmer's failure in a block, with whose fault it was."""

    farmer_id: str
    stage: str  # plant | work | harvest
    fault: str  # farmer | pool | pooler | chain | none | unattributed
    code: str
    message: str

    @property
    def attributed(self) -> bool:
        return self.fault not in ("unattributed", "none")


@dataclass
class BlockOutcome:
    """One block's cycle as the pool recorded it."""

    index: int
    status: str  # active | harvesting | completed | failed
    block: pool_pb2.GetBlockResponse = field(default_factory=pool_pb2.GetBlockResponse)
    planted: int = 0
    worked: int = 0
    harvested: int = 0
    best_zeros: int = 0
    reward_stroops: int = 0
    failures: list[FarmerFailure] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # planted farmers without an outcome

    @property
    def settled(self) -> bool:
        """Over, settled by the pool, and every planted farmer has a work record."""
        return self.status in ("completed", "failed") and not self.unresolved

    @property
    def accepted(self) -> bool:
        """Every planted farmer worked and harvested, or its failure attributed."""
        return self.settled and all(f.attributed for f in self.failures)


def _fault(failure: common_pb2.Failure) -> str:
    if failure.fault == common_pb2.FAULT_PARTY_UNSPECIFIED:
        return "unattributed"
    return common_pb2.FaultParty.Name(failure.fault).removeprefix("FAULT_PARTY_").lower()


def _failure(farmer_id: str, stage: str, failure: common_pb2.Failure) -> FarmerFailure:
    code = common_pb2.FailureCode.Name(failure.code).removeprefix("FAILURE_CODE_")
    return FarmerFailure(farmer_id, stage, _fault(failure), code, failure.message)


def assess(block: pool_pb2.GetBlockResponse, *, final: bool = False) -> BlockOutcome:
    """What became of each farmer in the block. ``final``: the run is over, so a failed
    harvest attempt counts as the pail's outcome even while the pool still retries it."""
    summary = block.block
    status = pool_pb2.BlockStatus.Name(summary.status).removeprefix("BLOCK_STATUS_").lower()
    outcome = BlockOutcome(summary.block_index, status, block)
    planted = {p.farmer_id for p in block.plantings if p.status == _SUCCEEDED}
    plant_failures: dict[str, FarmerFailure] = {}  # the last attempt's failure per farmer
    for p in block.plantings:
        if p.status == _FAILED and p.farmer_id not in planted:
            plant_failures[p.farmer_id] = _failure(p.farmer_id, "plant", p.failure)
    outcome.failures.extend(plant_failures[f] for f in sorted(plant_failures))
    worked: set[str] = set()
    zeros = [w.zeros for w in block.works if w.status == _SUCCEEDED]
    work_failures: dict[str, FarmerFailure] = {}
    for w in block.works:
        if w.status == _SUCCEEDED:
            worked.add(w.farmer_id)
        elif w.status == _FAILED:
            work_failures[w.farmer_id] = _failure(w.farmer_id, "work", w.failure)
    harvested: set[str] = set()
    harvest_failures: dict[str, FarmerFailure] = {}
    for h in block.harvests:
        if h.status == _SUCCEEDED:
            harvested.add(h.farmer_id)
            outcome.reward_stroops += h.reward_stroops
        elif h.status == _FAILED:
            harvest_failures[h.farmer_id] = _failure(h.farmer_id, "harvest", h.failure)
    settled_by_pool = status in ("completed", "failed")
    for farmer_id in sorted(planted):
        if farmer_id in worked:
            if farmer_id in harvested:
                continue
            failed = harvest_failures.get(farmer_id)
            if failed is not None and (final or settled_by_pool):
                outcome.failures.append(failed)
            else:
                outcome.unresolved.append(farmer_id)  # its harvest is still to come
        elif farmer_id in work_failures:
            outcome.failures.append(work_failures[farmer_id])
        else:
            outcome.unresolved.append(farmer_id)  # no work reported
    outcome.planted = len(planted)
    outcome.worked = len(worked & planted)
    outcome.harvested = len(harvested & planted)
    outcome.best_zeros = summary.best_zeros or max(zeros, default=0)
    return outcome


def _requested_since(summary: pool_pb2.BlockSummary, since: float) -> bool:
    if not summary.HasField("plant_requested_at"):
        return False
    return summary.plant_requested_at.ToDatetime(dt.UTC).timestamp() >= since


def describe(outcome: BlockOutcome) -> str:
    """One line for the block's cycle."""
    line = (
        f"block {outcome.index}: {outcome.planted} planted, {outcome.worked} worked,"
        f" {outcome.harvested} harvested, best {outcome.best_zeros} zeros,"
        f" reward {format_kale(outcome.reward_stroops)} KALE"
    )
    if outcome.failures:
        line += f", {len(outcome.failures)} failure(s)"
    return line


class CycleWatcher:
    """Follows the blocks first asked for since ``since`` (epoch seconds) until stopped."""

    def __init__(self, op: OperatorClient, since: float, observer: StackObserver) -> None:
        self.op = op
        self.since = since
        self.observer = observer
        self.completed: dict[int, BlockOutcome] = {}
        self.first_reward_after: float | None = None  # seconds after `since`

    async def _block(self, index: int) -> pool_pb2.GetBlockResponse:
        return await self.op.pool.GetBlock(
            pool_pb2.GetBlockRequest(block_index=index), timeout=self.op.timeout
        )

    async def _ours(self) -> list[pool_pb2.BlockSummary]:
        page = await self.op.pool.ListBlocks(
            pool_pb2.ListBlocksRequest(pagination=common_pb2.Pagination(page_size=100)),
            timeout=self.op.timeout,
        )
        return [b for b in page.blocks if _requested_since(b, self.since)]

    async def poll(self) -> list[BlockOutcome]:
        """Blocks newly complete since the last poll, oldest first (reported as events)."""
        found: list[BlockOutcome] = []
        for summary in sorted(await self._ours(), key=lambda b: b.block_index):
            if summary.block_index in self.completed or summary.status not in _SETTLED:
                continue
            outcome = assess(await self._block(summary.block_index))
            if not outcome.settled:
                continue
            self.completed[outcome.index] = outcome
            found.append(outcome)
            level = "good" if outcome.accepted and not outcome.failures else "warning"
            self.observer.event(describe(outcome), level=level)
            for failure in outcome.failures:
                self.observer.event(
                    f"  farmer {failure.farmer_id[:8]}: {failure.stage} failed"
                    f" ({failure.fault}: {failure.code}) {failure.message}",
                    level="warning",
                )
            if outcome.reward_stroops and self.first_reward_after is None:
                self.first_reward_after = time.time() - self.since
                self.observer.event(
                    f"first reward harvested {self.first_reward_after:.0f} s after start",
                    level="good",
                )
        return found

    async def watch(self, stop: asyncio.Event, want: int | None = None) -> None:
        """Poll until ``stop`` is set, or until ``want`` blocks are complete."""
        while not stop.is_set():
            try:
                await self.poll()
            except grpc.aio.AioRpcError as exc:  # the pool restarting: ask again later
                self.observer.event(f"block report unavailable: {exc.details()}", level="warning")
            if want is not None and len(self.completed) >= want:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL_SECONDS)

    async def final(self, want: int) -> list[BlockOutcome]:
        """The run's first ``want`` blocks: complete ones as recorded, the others assessed
        as they stand (their missing outcomes count against the run)."""
        outcomes = sorted(self.completed.values(), key=lambda o: o.index)[:want]
        if len(outcomes) < want:
            seen = {o.index for o in outcomes}
            for summary in sorted(await self._ours(), key=lambda b: b.block_index):
                if summary.block_index in seen or len(outcomes) >= want:
                    continue
                outcomes.append(assess(await self._block(summary.block_index), final=True))
        return sorted(outcomes, key=lambda o: o.index)


def summary_table(outcomes: list[BlockOutcome]) -> Table:
    """The blocks table (planted, worked, harvested, best zeros, reward, failures' causes)
    of the run's blocks, as the pool reported them."""
    return blocks_table(
        [o.block.block for o in outcomes],
        {o.index: block_failures(o.block) for o in outcomes},
        title="farmed blocks",
    )


def failure_lines(outcomes: list[BlockOutcome]) -> list[str]:
    """Each failure with its cause, and each planted farmer left without an outcome."""
    lines: list[str] = []
    for o in outcomes:
        lines += [note.describe() for note in block_failures(o.block)]
        lines += [
            f"block {o.index}: farmer {farmer_id} has no recorded outcome"
            for farmer_id in o.unresolved
        ]
    return lines
