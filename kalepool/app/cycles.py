"""Farming cycles as the pool's API reports them: which blocks of this run are complete.

A cycle is one block: its farmers planted, worked and harvested. `kale-pool up` follows
the blocks first asked for after it started (`BlockSummary.plant_requested_at`), reports
each as it completes, and with `--blocks K` stops after K. A block counts as complete
once it is over and the pool has settled it (`BLOCK_STATUS_COMPLETED` or `_FAILED`: every
worked pail harvested or gone) and every farmer planted in it has a work record. Its
outcome is accepted when each planted farmer was worked and harvested, or its failure
was recorded with whose fault it was. A record that is nobody's fault
(`tables.is_failure`) is no failure and no outcome: the farmer's outcome is what comes
of the next try. Everything here reads `ListBlocks` and `GetBlock`
through the operator's client: the pool's public API, never its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import grpc
from rich.table import Table

from kalepool import wire
from kalepool.amounts import format_kale
from kalepool.app.observer import StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.tables import (
    FailureNote,
    block_failures,
    block_status,
    blocks_table,
)
from kalepool.v1 import common_pb2, pool_pb2, records_pb2

_POLL_SECONDS = 2.0
_SETTLED = (pool_pb2.BLOCK_STATUS_COMPLETED, pool_pb2.BLOCK_STATUS_FAILED)
_SUCCEEDED = records_pb2.EVENT_STATUS_SUCCEEDED


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
    failures: list[FailureNote] = field(default_factory=list)  # each farmer's, if it failed
    unresolved: list[str] = field(default_factory=list)  # planted farmers without an outcome

    @property
    def settled(self) -> bool:
        """Over, settled by the pool, and every planted farmer has a work record."""
        return self.status in ("completed", "failed") and not self.unresolved

    @property
    def accepted(self) -> bool:
        """Every planted farmer worked and harvested, or its failure attributed."""
        return self.settled and all(f.attributed for f in self.failures)


def assess(block: pool_pb2.GetBlockResponse, *, final: bool = False) -> BlockOutcome:
    """What became of each farmer in the block. ``final``: the run is over, so a failed
    harvest attempt counts as the pail's outcome even while the pool still retries it.

    The failures are `tables.block_failures`' (a record that is nobody's fault is none:
    the farmer's outcome is what comes of the next try), the last one of each farmer and
    step counting."""
    summary = block.block
    outcome = BlockOutcome(summary.block_index, block_status(summary.status), block)
    planted = {p.farmer_id for p in block.plantings if p.status == _SUCCEEDED}
    worked = {w.farmer_id for w in block.works if w.status == _SUCCEEDED}
    harvested: set[str] = set()
    for h in block.harvests:
        if h.status == _SUCCEEDED:
            harvested.add(h.farmer_id)
            outcome.reward_stroops += h.reward_stroops
    failed = {(note.stage, note.farmer_id): note for note in block_failures(block)}
    outcome.failures.extend(
        note
        for (stage, farmer_id), note in sorted(failed.items())
        if stage == "plant" and farmer_id not in planted
    )
    settled_by_pool = outcome.status in ("completed", "failed")
    for farmer_id in sorted(planted):
        if farmer_id in worked:
            if farmer_id in harvested:
                continue
            harvest = failed.get(("harvest", farmer_id))
            if harvest is not None and (final or settled_by_pool):
                outcome.failures.append(harvest)
            else:
                outcome.unresolved.append(farmer_id)  # its harvest is still to come
        elif ("work", farmer_id) in failed:
            outcome.failures.append(failed[("work", farmer_id)])
        else:
            outcome.unresolved.append(farmer_id)  # no work reported
    outcome.planted = len(planted)
    outcome.worked = len(worked & planted)
    outcome.harvested = len(harvested & planted)
    zeros = [w.zeros for w in block.works if w.status == _SUCCEEDED]
    outcome.best_zeros = summary.best_zeros or max(zeros, default=0)
    return outcome


def _requested_since(summary: pool_pb2.BlockSummary, since: float) -> bool:
    if not summary.HasField("plant_requested_at"):
        return False
    return wire.seconds(summary.plant_requested_at) >= since


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
                message = f": {failure.failure.message}" if failure.failure.message else ""
                self.observer.event(
                    f"  farmer {failure.farmer_id[:8]}: {failure.stage} failed,"
                    f" {failure.cause}{message}",
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
