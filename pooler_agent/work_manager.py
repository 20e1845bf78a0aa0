"""The work manager: mines every assigned farmer of a block at once on the shared miner.

One `miner_ext.Search` per (farmer, block), all on the process-wide pool of hashing
threads, which takes chunks from every running search in turn: N farmers share the
cores evenly, each with its own deadline. A search keeps the best hash it has seen and
ends at its deadline (or a target, when one is set), is ended early by `finish_block`
when its block is due (the best hash so far is sent), and is cancelled when a newer block
opens (its work could no longer land) or on shutdown.

Timing (docs/protocol.md): more gap is rewarded, so mining runs late into the block, but
work that lands after the next block opened is lost. Mining for a block that opened at
`T` ends at `T + work_delay`, clamped to `T + block_seconds - submit_margin` (and to the
pool's own work deadline, less the margin) so the `work` transaction still has time to
land in a ledger that closes before anyone can open the next block.

Waiting for a search never holds the GIL and never blocks the event loop: each waits in
a thread of the manager's own executor (`Search.result` releases the GIL), sized to the
capacity so waiters never queue behind each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import miner_ext
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock

log = logging.getLogger(__name__)


class CapacityError(Exception):
    """More farmers assigned at once than this machine mines (`max_farmers_capacity`)."""


@dataclass(frozen=True, slots=True)
class WorkTiming:
    """When mining for a block ends, on the chain's clock."""

    block_seconds: float  # the farm's block interval (300 on the real networks)
    work_delay_seconds: float  # mining ends this long after the block opened ...
    submit_margin_seconds: float = 10.0  # ... but at least this long before the next may open
    min_search_seconds: float = 0.05  # a late assignment still gets a short search and is sent

    def __post_init__(self) -> None:
        if self.block_seconds <= 0:
            raise ValueError("block_seconds must be positive")
        if self.work_delay_seconds < 0 or self.submit_margin_seconds < 0:
            raise ValueError("work_delay_seconds and submit_margin_seconds must not be negative")
        if self.min_search_seconds <= 0:
            raise ValueError("min_search_seconds must be positive")

    def mining_ends_at(self, assignment: Assignment) -> float:
        """Chain time at which mining this assignment stops and its work is sent."""
        return self.block_mining_ends_at(assignment.block_opened_at, assignment.work_deadline)

    def block_mining_ends_at(self, opened: float, work_deadline: float | None = None) -> float:
        """Chain time at which mining of a block opened at `opened` stops."""
        cutoff = opened + self.block_seconds  # from here a plant may open the next block
        if work_deadline is not None:
            cutoff = min(cutoff, work_deadline)
        return min(opened + self.work_delay_seconds, cutoff - self.submit_margin_seconds)


@dataclass(frozen=True, slots=True)
class MinedWork:
    """The best hash found for one assignment, and whether it is still worth sending."""

    assignment: Assignment
    nonce: int
    hash: bytes
    zeros: int
    hashes: int
    elapsed: float
    stop_reason: str  # the miner's: "deadline", "target", "cancelled"; "finished" when ended early
    cancelled: str | None = None  # why mining was cancelled (then the work is not sent)
    block_closed: bool = False  # cancelled because a newer block opened (the work is late)

    @property
    def sendable(self) -> bool:
        """Whether the work should be submitted (it was not cancelled)."""
        return self.cancelled is None


@dataclass(frozen=True, slots=True)
class FarmerProgress:
    """One running (or finished, not yet collected) search."""

    farmer_address: str
    block_index: int
    zeros: int  # best so far
    hashes: int
    elapsed: float
    running: bool


@dataclass(frozen=True, slots=True)
class MiningProgress:
    """What the machine is doing: for heartbeats and the live display."""

    hashes_per_second: float  # over the running searches (they share the cores)
    farmers: tuple[FarmerProgress, ...]

    @property
    def mining_farmers(self) -> int:
        return sum(1 for f in self.farmers if f.running)

    def best_zeros(self) -> dict[tuple[str, int], int]:
        """Best zeros per (farmer, block)."""
        return {(f.farmer_address, f.block_index): f.zeros for f in self.farmers}


@dataclass
class _Job:
    assignment: Assignment
    search: miner_ext.Search
    task: asyncio.Task[MinedWork] | None = None
    cancel_reason: str | None = None
    block_closed: bool = False
    finished: bool = False  # ended early by finish_block: the best hash is still sent


class WorkManager:
    """Accepts assignments and mines them concurrently; each yields one :class:`MinedWork`.

    `assign()` starts mining at once and returns the task that ends with the result (None
    for a duplicate (farmer, block)). `finish_block(index)` ends the searches of a block
    that is due now, keeping their best hashes sendable; `block_opened(index)` cancels
    every search of an older block; `shutdown()` cancels everything. `target_zeros` ends
    a search early once a hash that good is found (a cap for cheap blocks and tests; None
    mines to the deadline).
    """

    def __init__(
        self,
        timing: WorkTiming,
        clock: ChainClock,
        *,
        capacity: int = 50,
        threads: int | None = None,
        target_zeros: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.timing = timing
        self.clock = clock
        self.capacity = capacity
        self.threads = threads
        self.target_zeros = target_zeros
        self._jobs: dict[tuple[str, int], _Job] = {}
        self._seen: set[tuple[str, int]] = set()
        self._newest_block = -1
        self._finished_through = -1  # blocks up to this one are due: mine them briefly
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=capacity, thread_name_prefix="kale-search-wait"
        )

    # ---- taking work --------------------------------------------------------------------

    def assign(self, assignment: Assignment) -> asyncio.Task[MinedWork] | None:
        """Start mining one assignment; None when this (farmer, block) was assigned before.

        An assignment for a block older than the newest one seen is not mined: its task
        ends at once, cancelled. Raises CapacityError (and mines nothing) when `capacity`
        searches are running, RuntimeError after shutdown or before the clock has a ledger.
        """
        if self._closed:
            raise RuntimeError("the work manager is shut down")
        key = assignment.key
        if key in self._seen:
            log.info("ignoring duplicate assignment %s in block %d", *key)
            return None
        running = sum(1 for job in self._jobs.values() if not job.search.done())
        if running >= self.capacity:
            raise CapacityError(
                f"{running} farmers are being mined; this machine mines at most {self.capacity}"
            )
        self._seen.add(key)
        self._newest_block = max(self._newest_block, assignment.block_index)
        if assignment.block_index < self._newest_block:
            reason = f"block {self._newest_block} opened before mining began"
            return asyncio.get_running_loop().create_task(self._stale(assignment, reason))
        if assignment.block_index <= self._finished_through:
            seconds = self.timing.min_search_seconds  # its block is due: send at once
        else:
            seconds = max(
                self.clock.seconds_until(self.timing.mining_ends_at(assignment)),
                self.timing.min_search_seconds,
            )
        search = miner_ext.Search(
            assignment.block_index,
            assignment.entropy,
            assignment.farmer_bytes,
            seconds=seconds,
            target_zeros=self.target_zeros,
            threads=self.threads,
        )
        job = _Job(assignment, search)
        task = asyncio.get_running_loop().create_task(
            self._wait(key, job), name=f"mine {assignment.farmer_address} #{assignment.block_index}"
        )
        job.task = task
        self._jobs[key] = job
        log.debug("mining %s in block %d for %.2fs", assignment.farmer_address, key[1], seconds)
        return task

    async def mine(self, assignments: Iterable[Assignment]) -> list[MinedWork]:
        """Mine several assignments at once (duplicates skipped) and wait for all of them."""
        tasks = [task for a in assignments if (task := self.assign(a)) is not None]
        return list(await asyncio.gather(*tasks))

    async def _stale(self, assignment: Assignment, reason: str) -> MinedWork:
        return MinedWork(
            assignment, 0, b"", 0, 0, 0.0, "cancelled", cancelled=reason, block_closed=True
        )

    async def _wait(self, key: tuple[str, int], job: _Job) -> MinedWork:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self._executor, job.search.result)
        except asyncio.CancelledError:
            job.search.cancel()
            raise
        finally:
            self._jobs.pop(key, None)
        cancelled = job.cancel_reason if found.reason == "cancelled" else None
        reason: str = found.reason or "cancelled"
        if reason == "cancelled" and cancelled is None and job.finished:
            reason = "finished"
        return MinedWork(
            assignment=job.assignment,
            nonce=found.nonce,
            hash=found.hash,
            zeros=found.zeros,
            hashes=found.hashes,
            elapsed=found.elapsed,
            stop_reason=reason,
            cancelled=cancelled,
            block_closed=cancelled is not None and job.block_closed,
        )

    # ---- stopping -----------------------------------------------------------------------

    def finish_block(self, index: int) -> int:
        """Block `index` is due: end its searches (and older ones) now, keeping each best
        hash as sendable work, unlike cancelling. Assignments of it that come later get a
        short search only. Returns how many searches were ended."""
        self._finished_through = max(self._finished_through, index)
        ended = 0
        for job in list(self._jobs.values()):
            if (
                job.assignment.block_index <= index
                and job.cancel_reason is None
                and not job.finished
                and not job.search.done()
            ):
                job.finished = True
                job.search.cancel()
                ended += 1
        if ended:
            log.info("block %d is due: ended %d searches early, sending their best", index, ended)
        return ended

    def block_opened(self, index: int) -> int:
        """A block opened: cancel the searches of older blocks (their work can no longer
        land). Returns how many were cancelled."""
        self._newest_block = max(self._newest_block, index)
        # Duplicates only matter while their block can still be assigned.
        self._seen = {key for key in self._seen if key[1] >= index - 1}
        cancelled = 0
        for job in list(self._jobs.values()):
            if job.assignment.block_index < index and job.cancel_reason is None:
                job.cancel_reason = f"block {index} opened before the work was sent"
                job.block_closed = True
                job.search.cancel()
                cancelled += 1
        if cancelled:
            log.warning("block %d opened: cancelled %d searches of older blocks", index, cancelled)
        return cancelled

    async def shutdown(self) -> None:
        """Cancel every search, wait for them to stop, and release the waiting threads."""
        self._closed = True
        jobs = list(self._jobs.values())
        for job in jobs:
            if job.cancel_reason is None:
                job.cancel_reason = "the agent shut down"
            job.search.cancel()
        await asyncio.gather(
            *(job.task for job in jobs if job.task is not None), return_exceptions=True
        )
        self._executor.shutdown(wait=True)

    # ---- progress -----------------------------------------------------------------------

    def progress(self) -> MiningProgress:
        """Best zeros and hashes per running search, and the machine's hash rate."""
        farmers = []
        rate = 0.0
        for job in list(self._jobs.values()):
            now = job.search.progress()
            running = not now.done
            if running and now.elapsed > 0:
                rate += now.hashes / now.elapsed
            farmers.append(
                FarmerProgress(
                    farmer_address=job.assignment.farmer_address,
                    block_index=job.assignment.block_index,
                    zeros=now.zeros,
                    hashes=now.hashes,
                    elapsed=now.elapsed,
                    running=running,
                )
            )
        return MiningProgress(hashes_per_second=rate, farmers=tuple(farmers))
