"""The pooler agent: the cycle of docs/api.md run against the pool, block after block.

Four loops share one event loop:

- blocks: every tick of the block monitor (and sooner when something it waits on
  changed), `plan_plant` decides what to plant. A block is planted only while there is
  time left to work it (`min_work_window`); a block that is due is first finished (its
  mining ended early, the best hashes sent, and those works settled or past their time
  bound) and only then is the next one planted, so the agent's own plant never makes its
  own work late. A plant refused or failed is asked again, with backoff, while it still
  makes sense; one the pool's contract watch holds (the farm's code changed, or it is
  paused) is asked again only after `CONTRACT_HOLD_BACKOFF`, whichever block. `OPENED`
  cancels the searches of older blocks and asks the pool to harvest the blocks that
  just ended;
- the assignment stream: each assignment is mined (`WorkManager.assign`) until its
  deadline, its work submitted from a channel account (journaled before it is sent),
  and the result queued for `ReportWork`. A work whose fate is unknown is followed by
  its hash until the chain settles it, and reported again with its real outcome;
- the work reporter: per-block batches, each result answered on its own;
- the heartbeat: hash rate, capacity and the last cursor, at the pool's interval.

At start the agent follows every journaled work envelope not yet reported (an agent
killed after sending work) and reports it.

`stop()` (SIGINT/SIGTERM in `run_pooler`) stops the monitor and the stream, cancels the
searches and sends what was already queued. Work cancelled by the shutdown is not
reported: the saved cursor stays before it, so a restarted agent gets it again; work
sent and not yet settled stays in the journal for the restarted agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from stellar_sdk import Keypair

from kalepool import __version__, wire
from kalepool.chain import ChainClient, Fault
from kalepool.settings import Settings
from kalepool.tls import CertificateFiles, Identity, MissingCertificateError
from kalepool.v1 import pooler_pb2
from pooler_agent.assignment import Assignment
from pooler_agent.block_monitor import (
    BlockEvent,
    BlockEventKind,
    BlockMonitor,
    PlantAction,
    plan_plant,
)
from pooler_agent.journal import WorkJournal
from pooler_agent.metrics import HASH_RATE, WORKS, ZEROS, MachineLoad
from pooler_agent.pool_client import (
    Backoff,
    CursorFile,
    CursorTracker,
    PoolClient,
    PoolError,
    ReportOutcome,
    StreamTakenOver,
    WorkReporter,
)
from pooler_agent.work_manager import CapacityError, MinedWork, WorkManager
from pooler_agent.work_submitter import FailureCode, WorkResult, WorkStatus, WorkSubmitter

log = logging.getLogger(__name__)


# Between lookups of a work transaction whose fate is unknown (the chain is not answering).
FOLLOW_BACKOFF = Backoff(initial=0.5, maximum=15.0)
# Between plant requests while the pool's contract watch holds plants (the farm's code
# changed, or it is paused): a hold ends when a person acts, not at the next block, so the
# agent asks slowly, across blocks, instead of every few seconds.
CONTRACT_HOLD_BACKOFF = Backoff(initial=15.0, maximum=120.0)


class AgentError(Exception):
    """The agent cannot go on (the pool refused it, another agent took its stream)."""


@dataclass
class AgentStats:
    """What the agent did, for its last log line, the live view and tests."""

    plant_requests: int = 0
    plant_refused: int = 0  # RequestPlant refused (FAILED_PRECONDITION and the like)
    plant_held: int = 0  # ... of which the pool's contract watch held plants
    plant_errors: int = 0  # RequestPlant failed (the pool unreachable, ...)
    blocks_skipped: int = 0  # blocks judged too late to work
    assignments: int = 0
    submitted: int = 0  # work transactions sent
    succeeded: int = 0  # ... that landed
    failed: int = 0  # works that failed (sent or not)
    recovered: int = 0  # journaled works followed after a restart
    harvest_requests: int = 0
    harvested: int = 0
    harvest_reward_stroops: int = 0


@dataclass(frozen=True, slots=True)
class FarmerState:
    """One farmer's work in one block, as the live view shows it."""

    farmer_address: str
    block_index: int
    zeros: int  # best so far
    hashes: int
    state: str  # mining, sending, following, landed, failed, pending


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """The agent's state at one moment (read on the event loop; immutable afterwards)."""

    hashes_per_second: float
    threads: int | None
    capacity: int
    mining_farmers: int
    block_index: int | None  # the farm's current block as last read
    block_opened_at: float | None
    seconds_to_work_deadline: float | None  # until mining of the current block ends
    seconds_to_next_block: float | None  # until a plant may open the next block
    farmers: tuple[FarmerState, ...]
    following: int  # works sent whose fate is not known yet
    stats: AgentStats


class PoolerAgent:
    """Runs the cycle until `stop()`; `run()` returns then (or raises AgentError).

    With a `journal`, the submitter records every work envelope in it before sending
    (its `record` hook is set here), acknowledged reports close their entries, and
    `run()` first follows and reports the entries a previous run left open.
    """

    def __init__(
        self,
        *,
        pool: PoolClient,
        monitor: BlockMonitor,
        manager: WorkManager,
        submitter: WorkSubmitter,
        cursors: CursorTracker,
        journal: WorkJournal | None = None,
        heartbeat_seconds: float = 30.0,
        report_linger: float = 0.2,
        harvest_attempts: int = 20,
        min_work_window: float = 30.0,
        follow_backoff: Backoff = FOLLOW_BACKOFF,
        hold_backoff: Backoff = CONTRACT_HOLD_BACKOFF,
    ) -> None:
        self.hold_backoff = hold_backoff
        self.pool = pool
        self.monitor = monitor
        self.manager = manager
        self.submitter = submitter
        self.cursors = cursors
        self.journal = journal
        if journal is not None:
            submitter.record = journal.record
        self.heartbeat_seconds = heartbeat_seconds
        self.harvest_attempts = harvest_attempts
        self.min_work_window = min_work_window
        self.follow_backoff = follow_backoff
        self.reporter = WorkReporter(
            pool,
            cursors,
            linger=report_linger,
            journal=journal,
            on_acknowledged=self._acknowledged,
        )
        self.stats = AgentStats()
        self._stop = asyncio.Event()
        self._stopping = False
        self._synced = asyncio.Event()
        self._wake = asyncio.Event()  # something the block loop waits on changed
        self._tasks: set[asyncio.Task[Any]] = set()
        # Works of this machine not settled yet: None while mining or being submitted,
        # the PENDING result while its transaction is followed by hash.
        self._unsettled: dict[tuple[str, int], WorkResult | None] = {}
        self._journaled: set[tuple[str, int]] = set()  # sent before this start
        self._outstanding: dict[int, set[tuple[str, int]]] = {}  # block -> not finally reported
        self._worked: set[int] = set()  # blocks with work that landed, not yet harvested
        self._harvesting: set[int] = set()
        self._newest = -1
        self._fatal: BaseException | None = None
        # Planting.
        self._planted: set[int] = set()  # blocks whose RequestPlant was answered
        self._plant_task: asyncio.Task[None] | None = None
        self._plant_block: int | None = None  # the block asked for last
        self._plant_failures = 0  # consecutive failures asking for `_plant_block`
        self._plant_not_before = 0.0  # loop time before which it is not asked again
        # The pool's contract watch: consecutive holds, and the loop time before which no
        # block is asked for (kept across blocks, unlike `_plant_not_before`).
        self._holds = 0
        self._held_until = 0.0
        self._expected: dict[int, tuple[set[str], float]] = {}  # planted, not yet assigned
        self._assigned: dict[int, set[str]] = {}  # block -> farmer ids assigned
        self._said: set[tuple[str, int]] = set()  # (what, block) logged once
        self._board: dict[tuple[str, int], FarmerState] = {}
        self._followers: set[asyncio.Task[Any]] = set()  # tasks following a work by hash

    def stop(self) -> None:
        """Ask `run()` to end (safe from a signal handler)."""
        self._stop.set()

    # ---- the main loop ------------------------------------------------------------------

    async def run(self) -> AgentStats:
        self._recover()
        loops = [
            asyncio.create_task(self._watch_blocks(), name="block monitor"),
            asyncio.create_task(self._consume_assignments(), name="assignment stream"),
            asyncio.create_task(self.reporter.run(), name="work reporter"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    self._fatal = task.exception()
        finally:
            await self._shutdown(loops, stopper)
        if self._fatal is not None:
            raise AgentError(str(self._fatal)) from None
        return self.stats

    async def _shutdown(self, loops: list[asyncio.Task[Any]], stopper: asyncio.Task[Any]) -> None:
        self._stopping = True
        self.monitor.stop()
        stopper.cancel()
        reporter = loops[2]
        for task in loops:
            if task is not reporter:
                task.cancel()
        running = self.manager.progress().mining_farmers
        await self.manager.shutdown()
        # Works followed by hash stay in the journal for the next start; submissions
        # already under way end by themselves.
        following = sum(1 for r in self._unsettled.values() if r is not None)
        for task in list(self._followers):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.pool.timeout)
        # Let the reporter finish what is queued or in flight, so acknowledged reports
        # also move the saved cursor; then stop it.
        self.reporter.cancel_later()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reporter.wait_idle(), self.pool.timeout)
        reporter.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.reporter.flush()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info(
            "pooler agent stopped: %d searches cancelled (to be mined again after a restart),"
            " %d works submitted, %d landed, %d still followed (journaled for the next start)",
            running,
            self.stats.submitted,
            self.stats.succeeded,
            following,
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- blocks: plan, plant, cancel, harvest -------------------------------------------

    async def _watch_blocks(self) -> None:
        async for events in self.monitor.ticks(self._wake):
            if self.monitor.clock.synced:
                self._synced.set()
            for event in events:
                self._on_block_event(event)
            self._plan()

    def _on_block_event(self, event: BlockEvent) -> None:
        if event.kind is not BlockEventKind.OPENED or event.block is None:
            return
        index = event.block.index
        self._newest = max(self._newest, index)
        self.manager.block_opened(index)
        # Only the current block and the one before it still matter.
        for table in (self._expected, self._assigned):
            for block in [b for b in table if b < index - 1]:
                del table[block]
        self._planted = {b for b in self._planted if b >= index - 1}
        self._said = {s for s in self._said if s[1] >= index - 1}
        self._board = {k: v for k, v in self._board.items() if k[1] >= index - 1}
        for block in sorted(self._worked):
            self._maybe_harvest(block)

    def _holding(self, block: int) -> bool:
        """Whether this machine still holds work of `block` (or older) that a plant opening
        the next block would make late: searches running, works being submitted, works
        whose transaction may still apply, a plant of it in flight, or farmers it planted
        whose assignments have not arrived yet (for a while)."""
        if self._plant_task is not None and self._plant_block == block:
            return True
        now = self.monitor.clock.now()
        for key, result in self._unsettled.items():
            if key[1] > block:
                continue
            if result is None:
                return True
            envelope = result.envelope
            if envelope is None or now <= envelope.max_time:
                return True
        expected = self._expected.get(block)
        if expected is not None and expected[0]:
            waited = asyncio.get_running_loop().time() - expected[1]
            if waited < self.pool.timeout:
                return True
        return False

    def _plan(self) -> None:
        current = self.monitor.latest
        if current is None or not self.monitor.clock.synced or self._stopping:
            return
        asked = set(self._planted)
        if self._plant_task is not None and self._plant_block is not None:
            asked.add(self._plant_block)  # being asked for now
        plan = plan_plant(
            current,
            self.monitor.clock.now(),
            min_window=self.min_work_window,
            planted=asked,
            holding=self._holding(current.index),
        )
        if plan.action is PlantAction.SKIP and plan.block is not None:
            if ("skip", plan.block) not in self._said:
                self._said.add(("skip", plan.block))
                self.stats.blocks_skipped += 1
                log.info(
                    "block %d: %.0f s left before the next block may open, under the %.0f s"
                    " a plant, mining and a work transaction need: not planting it;"
                    " the next block is planted when it is due",
                    plan.block,
                    plan.seconds_left,
                    self.min_work_window,
                )
        elif plan.action is PlantAction.FINISH and plan.block is not None:
            self.manager.finish_block(plan.block)
            if ("finish", plan.block) not in self._said:
                self._said.add(("finish", plan.block))
                log.info(
                    "block %d is due: its work is sent and settled before block %d is planted",
                    plan.block,
                    plan.block + 1,
                )
        elif plan.action is PlantAction.PLANT and plan.block is not None:
            self._ask_plant(plan.block)

    def _ask_plant(self, block: int) -> None:
        if self._plant_task is not None:
            return  # one request at a time; the next tick looks again
        if block != self._plant_block:
            self._plant_block = block
            self._plant_failures = 0
            self._plant_not_before = 0.0
        now = asyncio.get_running_loop().time()
        if now < self._plant_not_before or now < self._held_until:
            return
        self._plant_task = self._spawn(self._plant(block), f"plant #{block}")

    async def _plant(self, index: int) -> None:
        self.stats.plant_requests += 1
        try:
            answer = await self.pool.request_plant(index, self.manager.capacity)
        except PoolError as exc:
            refused = exc.code not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.CANCELLED,
            )
            if refused:
                self.stats.plant_refused += 1
            else:
                self.stats.plant_errors += 1
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION and wire.is_contract_hold(
                exc.detail
            ):
                self._plant_held(index, exc.detail)
                return
            self._plant_failed(index, "refused" if refused else "failed", str(exc))
            return
        finally:
            self._plant_task = None
            self._wake.set()
        s = answer.summary
        log.info(
            "block %d: %d planted, %d failed, %d pending of %d",
            index,
            s.planted,
            s.failed,
            s.pending,
            s.total_requested,
        )
        if s.total_requested and not s.planted and not s.pending:
            # Nobody planted nor on the way: a due block is not opened by this, and the
            # pool tries failed farmers again on the next request. Not a plant: ask again.
            # (Pending plants are sent: the pool answers before they land, and each
            # reaches the assignment stream as it does.)
            self.stats.plant_errors += 1
            self._plant_failed(index, "planted nobody", f"{s.failed} failed, {s.pending} pending")
            return
        self._plant_failures = 0
        if self._holds:
            log.warning("the pool plants again (its contract watch let block %d through)", index)
            self._holds = 0
        self._planted.add(index)
        planted = {p.farmer_id for p in answer.planted}
        waiting = planted - self._assigned.get(index, set())
        if waiting:
            self._expected[index] = (waiting, asyncio.get_running_loop().time())

    def _plant_held(self, index: int, why: str) -> None:
        """The pool holds every plant until an operator acknowledges the farm's new code
        or the farm is unpaused: ask again after a long, growing delay, whatever block."""
        self.stats.plant_held += 1
        delay = self.hold_backoff.delay(self._holds)
        self._holds += 1
        self._held_until = asyncio.get_running_loop().time() + delay
        # Loud when a hold begins; each later ask (minutes apart) is one quiet line.
        level = logging.WARNING if self._holds == 1 else logging.INFO
        log.log(
            level,
            "the pool holds plants (block %d): %s; asking again in %.0f s",
            index,
            why,
            delay,
        )

    def _plant_failed(self, index: int, what: str, why: str) -> None:
        """Ask for `index` again at a later tick, after a backoff."""
        delay = self.pool.backoff.delay(self._plant_failures)
        self._plant_failures += 1
        self._plant_not_before = asyncio.get_running_loop().time() + delay
        # Loud the first time; the same answer again is routine until the block moves.
        level = logging.WARNING if self._plant_failures == 1 else logging.INFO
        log.log(
            level,
            "plant in block %d %s (%s); asking again while it can be planted",
            index,
            what,
            why,
        )

    def _maybe_harvest(self, block: int) -> None:
        """Harvest a block once a newer one opened and all its work is reported."""
        if (
            block in self._worked
            and block < self._newest
            and not self._outstanding.get(block)
            and block not in self._harvesting
        ):
            self._harvesting.add(block)
            self._spawn(self._harvest(block), f"harvest #{block}")

    async def _harvest(self, block: int) -> None:
        self.stats.harvest_requests += 1
        try:
            for attempt in range(self.harvest_attempts):
                try:
                    answer = await self.pool.request_harvest(block)
                except PoolError as exc:
                    # The pool may not have seen the next block yet: ask again shortly.
                    log.info("harvest of block %d: %s", block, exc)
                    await asyncio.sleep(self.pool.backoff.delay(attempt))
                    continue
                if answer.pending:
                    await asyncio.sleep(self.pool.backoff.delay(attempt))
                    continue
                self.stats.harvested += len(answer.harvested)
                self.stats.harvest_reward_stroops += answer.total_reward_stroops
                log.info(
                    "block %d: %d pails harvested (%d stroops reward), %d failed",
                    block,
                    len(answer.harvested),
                    answer.total_reward_stroops,
                    len(answer.failed),
                )
                self._worked.discard(block)
                return
            log.warning("block %d: harvest not settled; the pool keeps harvesting it", block)
            self._worked.discard(block)
        finally:
            self._harvesting.discard(block)

    # ---- assignments: mine, submit, follow, report --------------------------------------

    async def _consume_assignments(self) -> None:
        await self._synced.wait()  # mining times against the chain's clock
        try:
            async for message in self.pool.assignments(self.cursors):
                self._take(message)
        except StreamTakenOver as exc:
            raise AgentError(
                f"another agent with this API key took over the assignment stream ({exc.detail})"
            ) from None

    def _take(self, message: pooler_pb2.Assignment) -> None:
        try:
            assignment = Assignment.from_proto(message)
        except ValueError as exc:
            log.error("malformed assignment %d skipped: %s", message.cursor, exc)
            self.cursors.done([message.cursor])
            return
        block, key = assignment.block_index, assignment.key
        self._assigned.setdefault(block, set()).add(assignment.farmer_id)
        expected = self._expected.get(block)
        if expected is not None:
            expected[0].discard(assignment.farmer_id)
        if key in self._journaled:
            # Its work was sent before a restart: the journal follows and reports it.
            self.cursors.done([message.cursor])
            return
        try:
            task = self.manager.assign(assignment)
        except CapacityError as exc:
            self._outstanding.setdefault(block, set()).add(key)
            self._result(_not_mined(assignment, str(exc)))
            return
        if task is None:  # already mining this (farmer, block)
            self.cursors.done([message.cursor])
            return
        self.stats.assignments += 1
        self._outstanding.setdefault(block, set()).add(key)
        self._unsettled[key] = None
        self._board[key] = FarmerState(assignment.farmer_address, block, 0, 0, "mining")
        self._spawn(self._finish(key, task), f"work {assignment.farmer_address}")

    async def _finish(self, key: tuple[str, int], task: asyncio.Task[MinedWork]) -> None:
        try:
            mined = await task
            if self._stopping and not mined.sendable and not mined.block_closed:
                return  # cancelled by the shutdown: left for the restarted agent
            if mined.sendable:
                self.stats.submitted += 1
                self._show(key, zeros=mined.zeros, hashes=mined.hashes, state="sending")
            result = await self.submitter.submit(mined)
            self._result(result)
            if result.status is WorkStatus.PENDING and result.envelope is not None:
                await self._follow(result)
        finally:
            self._unsettled.pop(key, None)
            self._wake.set()

    async def _follow(self, result: WorkResult) -> None:
        """Follow a sent work of unknown fate by its hash until the chain settles it (or
        can no longer tell), then report its outcome."""
        self._unsettled[result.key] = result
        self._wake.set()
        task = asyncio.current_task()
        if task is not None and task not in self._followers:
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)
        attempt = 0
        while True:
            settled, final = await self.submitter.settle(result)
            if settled.status is not WorkStatus.PENDING:
                self._result(settled)
                return
            if final:
                self._result(replace(settled, final=True))
                return
            result = settled
            self._unsettled[result.key] = result
            await asyncio.sleep(self.follow_backoff.delay(attempt))
            attempt += 1

    def _recover(self) -> None:
        """Follow and report every journaled work a previous run left unreported."""
        if self.journal is None:
            return
        self._journaled = self.journal.keys
        passphrase = self.submitter.client.config.network_passphrase
        for entry in self.journal.unreported:
            try:
                result = entry.pending_result(passphrase)
            except ValueError as exc:
                log.error("work journal: entry %s cannot be followed: %s", entry.tx_hash, exc)
                continue
            self.stats.recovered += 1
            self.submitter.channels.hold(entry.channel, entry.max_time)
            self._outstanding.setdefault(entry.assignment.block_index, set()).add(entry.key)
            self._unsettled[entry.key] = result
            self._board[entry.key] = FarmerState(
                entry.assignment.farmer_address,
                entry.assignment.block_index,
                entry.zeros,
                entry.hashes,
                "following",
            )
            log.info(
                "work for %s in block %d was sent before a restart (%s): following it",
                entry.assignment.farmer_address,
                entry.assignment.block_index,
                entry.tx_hash,
            )
            self._spawn(self._follow_recovered(result), f"follow {entry.tx_hash[:12]}")

    async def _follow_recovered(self, result: WorkResult) -> None:
        try:
            await self._follow(result)
        finally:
            self._unsettled.pop(result.key, None)
            self._wake.set()

    def _result(self, result: WorkResult) -> None:
        """A result to report (and to count and show)."""
        if result.status is WorkStatus.SUCCESS:
            self.stats.succeeded += 1
            state = "landed"
            WORKS.labels("submitted").inc()
            ZEROS.observe(result.zeros)
        elif result.status is WorkStatus.FAILED:
            self.stats.failed += 1
            state = "failed"
            late = result.failure is FailureCode.WORK_LATE
            WORKS.labels("late" if late else "failed").inc()
        else:
            state = "pending" if result.final else "following"
        self._show(result.key, zeros=result.zeros, hashes=result.hashes, state=state)
        self.reporter.add(result)

    def _show(self, key: tuple[str, int], *, zeros: int, hashes: int, state: str) -> None:
        self._board[key] = FarmerState(key[0], key[1], zeros, hashes, state)

    def _acknowledged(self, result: WorkResult, outcome: ReportOutcome) -> None:
        if outcome.final or (outcome is ReportOutcome.PENDING and result.final):
            block = result.block_index
            keys = self._outstanding.get(block)
            if keys is not None:
                keys.discard(result.key)
                if not keys:
                    del self._outstanding[block]
            if result.status is WorkStatus.SUCCESS and outcome is not ReportOutcome.REFUSED:
                self._worked.add(block)
            self._maybe_harvest(block)

    # ---- what the agent is doing --------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        """The state for the live view (cheap: call it a few times a second)."""
        progress = self.manager.progress()
        board = dict(self._board)
        for farmer in progress.farmers:
            key = (farmer.farmer_address, farmer.block_index)
            if farmer.running:
                board[key] = FarmerState(
                    farmer.farmer_address, farmer.block_index, farmer.zeros, farmer.hashes, "mining"
                )
        current = self.monitor.latest
        clock = self.monitor.clock
        to_deadline = to_next = opened = None
        if current is not None and clock.synced:
            now = clock.now()
            opened = float(current.timestamp)
            to_next = current.next_block_at - now
            to_deadline = self.manager.timing.block_mining_ends_at(opened) - now
        return AgentSnapshot(
            hashes_per_second=progress.hashes_per_second,
            threads=self.manager.threads,
            capacity=self.manager.capacity,
            mining_farmers=progress.mining_farmers,
            block_index=current.index if current is not None else None,
            block_opened_at=opened,
            seconds_to_work_deadline=to_deadline,
            seconds_to_next_block=to_next,
            farmers=tuple(sorted(board.values(), key=lambda f: (-f.block_index, f.farmer_address))),
            following=sum(1 for r in self._unsettled.values() if r is not None),
            stats=replace(self.stats),
        )

    # ---- heartbeat ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.heartbeat_seconds
        load = MachineLoad()
        while True:
            progress = self.manager.progress()
            latest = self.monitor.latest
            HASH_RATE.set(progress.hashes_per_second)
            cpu, memory = load.sample()
            try:
                answer = await self.pool.heartbeat(
                    pooler_pb2.HeartbeatRequest(
                        agent_version=__version__,
                        capacity=self.manager.capacity,
                        hashes_per_second=int(progress.hashes_per_second),
                        threads=self.manager.threads or 0,
                        mining_farmers=progress.mining_farmers,
                        observed_block_index=latest.index if latest else 0,
                        last_cursor=self.cursors.received,
                        cpu_percent=cpu,
                        memory_percent=memory,
                    )
                )
                if answer.interval_seconds:
                    interval = min(float(answer.interval_seconds), self.heartbeat_seconds)
            except PoolError as exc:
                log.warning("heartbeat: %s", exc)
            await asyncio.sleep(interval)


def _not_mined(assignment: Assignment, why: str) -> WorkResult:
    return WorkResult(
        assignment=assignment,
        status=WorkStatus.FAILED,
        nonce=0,
        hash=b"",
        zeros=0,
        hashes=0,
        fault=Fault.POOLER,
        message=f"not mined: {why}",
    )


# ---- building the agent from settings ---------------------------------------------------


def state_path(settings: Settings) -> Path:
    """The agent's cursor file under the data directory, one per pooler certificate."""
    return settings.layout().root / "pooler" / f"{settings.pooler_cert_name}-cursor.json"


def journal_path(settings: Settings) -> Path:
    """The work journal, beside the cursor file."""
    return state_path(settings).with_name(f"{settings.pooler_cert_name}-journal.jsonl")


def log_path(settings: Settings) -> Path:
    """The command's log file under the data directory's `logs/`."""
    return settings.layout().logs / f"pooler-{settings.pooler_cert_name}.log"


def channel_secrets(settings: Settings) -> list[str]:
    """The channel accounts' secret keys from the setting or its file (never echoed)."""
    if settings.pooler_channel_secrets is not None:
        raw = settings.pooler_channel_secrets.get_secret_value().replace("\n", ",")
    elif settings.pooler_channel_secrets_file is not None:
        path = settings.pooler_channel_secrets_file.expanduser()
        try:
            raw = path.read_text().replace("\n", ",")
        except OSError as exc:
            raise ValueError(
                f"KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: cannot read {path} ({exc.strerror})"
            ) from None
    else:
        raise ValueError(
            "set KALE_POOL_POOLER_CHANNEL_SECRETS (S… keys, comma-separated) or"
            " KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: work is paid from those accounts"
        )
    secrets = [part.strip() for part in raw.split(",") if part.strip()]
    if not secrets:
        raise ValueError("no channel account secret key is configured")
    for position, secret in enumerate(secrets, start=1):
        try:
            Keypair.from_secret(secret)
        except Exception:
            # Named by position only: a near-miss of a key is still secret.
            raise ValueError(f"channel account {position}: not a valid secret key") from None
    return secrets


def pooler_identity(settings: Settings) -> tuple[Identity, bytes]:
    """The pooler's client certificate and the CA, from `certs/` in the data directory."""
    certs = CertificateFiles(settings.layout().certs)
    name = settings.pooler_cert_name
    try:
        certs.check(name)
    except MissingCertificateError as error:
        raise ValueError(
            f"the pooler's certificate is missing: {', '.join(map(str, error.missing))}"
            " (KALE_POOL_POOLER_CERT_NAME names certs/<name>.pem and certs/<name>-key.pem)"
        ) from None
    return certs.identity(name), certs.ca_pem


async def run_agent(
    settings: Settings, *, install_signals: bool = True, live: bool = False
) -> AgentStats:
    """Build every part from settings and run the agent until SIGINT/SIGTERM; with
    `live`, the live view on the terminal while it runs."""
    import aiohttp

    from kalepool.chain import resolve_chain_config
    from pooler_agent.clock import ChainClock
    from pooler_agent.work_manager import WorkTiming
    from pooler_agent.work_submitter import ChannelPool

    if settings.pooler_api_key is None or not settings.pooler_api_key.get_secret_value().strip():
        raise ValueError("KALE_POOL_POOLER_API_KEY is required (the key the operator issued)")
    secrets = channel_secrets(settings)
    identity, ca_pem = pooler_identity(settings)
    async with aiohttp.ClientSession() as http:
        config = await resolve_chain_config(settings, session=http)
    chain = ChainClient(config)
    pool = PoolClient(
        settings.pool_address,
        identity,
        ca_pem,
        settings.pooler_api_key.get_secret_value(),
        timeout=settings.request_timeout_seconds,
        retry_attempts=settings.retry_attempts,
    )
    clock = ChainClock()
    manager = WorkManager(
        WorkTiming(
            block_seconds=config.block_seconds,
            work_delay_seconds=settings.work_delay_seconds,
            submit_margin_seconds=settings.pooler_submit_margin_seconds,
        ),
        clock,
        capacity=settings.max_farmers_capacity,
        threads=settings.mining_threads,
    )
    view: asyncio.Task[None] | None = None
    metrics = serve_pooler_metrics(settings)
    try:
        channels = ChannelPool.from_secrets(chain, secrets, clock=clock)
        cursors = CursorTracker(CursorFile(state_path(settings)))
        journal = WorkJournal(journal_path(settings), covered=lambda: cursors.saved)
        agent = PoolerAgent(
            pool=pool,
            monitor=BlockMonitor(chain, interval=settings.block_poll_interval_seconds, clock=clock),
            manager=manager,
            submitter=WorkSubmitter(chain, channels),
            cursors=cursors,
            journal=journal,
            min_work_window=settings.pooler_min_work_window_seconds,
        )
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, agent.stop)
        log.info(
            "pooler agent: pool %s, %d channel accounts, capacity %d, %d journaled works to follow",
            settings.pool_address,
            channels.size,
            manager.capacity,
            len(journal.unreported),
        )
        if live:
            from pooler_agent.view import LiveView

            view = asyncio.create_task(LiveView(agent).run(), name="live view")
        return await agent.run()
    finally:
        if view is not None:
            view.cancel()
            await asyncio.gather(view, return_exceptions=True)
        await manager.shutdown()
        await pool.close()
        await chain.aclose()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


def serve_pooler_metrics(settings: Settings) -> WSGIServer | None:
    """The agent's Prometheus endpoint on `pooler_metrics_port` (None: unset)."""
    if settings.pooler_metrics_port is None:
        return None
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(settings.pooler_metrics_port, addr=settings.metrics_host)
    except OSError as error:
        raise ValueError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.pooler_metrics_port}:"
            f" {error.strerror or error} (set KALE_POOL_POOLER_METRICS_PORT)"
        ) from None
    log.info("pooler metrics on %s:%d", settings.metrics_host, server.server_port)
    return server


def run_pooler(settings: Settings) -> None:
    """`kale-pool pooler`: the agent in the foreground until Ctrl-C.

    Logs also go to `logs/pooler-<cert name>.log` under the data directory. On a terminal
    the live view holds it (recent log lines show in the view); otherwise each event is
    one plain log line on stderr.
    """
    from pooler_agent.view import log_to_file, showing_events

    live = sys.stdout.isatty()
    path = log_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write the log file {path} ({exc.strerror})") from None
    with (
        log_to_file(path, settings.log_level),
        showing_events() if live else contextlib.nullcontext(),
        contextlib.suppress(KeyboardInterrupt),
    ):
        asyncio.run(run_agent(settings, live=live))


__all__ = [
    "AgentError",
    "AgentSnapshot",
    "AgentStats",
    "FarmerState",
    "PoolerAgent",
    "channel_secrets",
    "journal_path",
    "log_path",
    "pooler_identity",
    "run_agent",
    "run_pooler",
    "state_path",
]
