"""The block monitor: watches the farm for a new block and for a block that is due to end.

Every `interval` seconds it reads the farm's current block and the latest ledger. It
reports (the cycle's step 1 in docs/api.md):

- `OPENED` when a block index appears (the first sighting too, marked `initial`): the
  agent then asks the pool to plant in it;
- `DUE` when the current block is at least a block interval old on the chain's clock and
  nobody has opened the next one: a plant now opens block `index + 1` (reported once per
  block);
- `CHAIN_ERROR` when the RPC fails (after the chain client's own retries): logged, blamed
  on the chain, and tried again at the next tick.

Each read also sets the shared :class:`ChainClock`, which the work manager times against.

What to plant is not decided by the events alone: :func:`plan_plant` looks at the block
as the last read left it, every tick, so a plant refused or failed once is asked again
while it still makes sense, and a block is opened only once this machine holds no
unsent work of the block before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import StrEnum

from kalepool.chain import ChainClient, ChainError, CurrentBlock, Fault, current_block
from kalepool.chain.client import describe_failure
from pooler_agent.clock import ChainClock

log = logging.getLogger(__name__)


class BlockEventKind(StrEnum):
    """What the monitor saw."""

    OPENED = "opened"  # a new block index is current
    DUE = "due"  # the current block is a block interval old: the next plant opens index + 1
    CHAIN_ERROR = "chain_error"  # the chain could not be read this tick


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """One observation worth acting on."""

    kind: BlockEventKind
    block: CurrentBlock | None  # the block read (None for CHAIN_ERROR)
    initial: bool = False  # OPENED: the first block this monitor saw (it did not see it open)
    fault: Fault = Fault.NONE  # CHAIN_ERROR: whose fault (the chain's)
    error: str | None = None  # CHAIN_ERROR: what failed, without URLs
    failures: int = 0  # CHAIN_ERROR: consecutive failed ticks

    @property
    def plant_index(self) -> int | None:
        """The block to ask the pool to plant in: the opened one, or the one a plant opens."""
        if self.block is None:
            return None
        if self.kind is BlockEventKind.OPENED:
            return self.block.index
        if self.kind is BlockEventKind.DUE:
            return self.block.index + 1
        return None


Reader = Callable[[ChainClient], Awaitable[CurrentBlock]]


class BlockMonitor:
    """Polls the chain and turns what it reads into :class:`BlockEvent` s.

    `poll()` reads once (tests drive it tick by tick); `events()` polls every `interval`
    seconds until `stop()`.
    """

    def __init__(
        self,
        client: ChainClient,
        *,
        interval: float,
        clock: ChainClock | None = None,
        reader: Reader = current_block,
    ) -> None:
        if interval <= 0:
            raise ValueError("the poll interval must be positive")
        self.client = client
        self.interval = interval
        self.clock = clock or ChainClock()
        self._read = reader
        self._stop = asyncio.Event()
        self.latest: CurrentBlock | None = None
        self._due_reported: int | None = None  # the block whose DUE was already emitted
        self.failures = 0
        self.polls = 0  # polls finished: a caller can wait for the next one to end

    def stop(self) -> None:
        """End `events()` at once (also while it waits for the next tick)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def poll(self) -> list[BlockEvent]:
        """Read the chain once and return what changed (possibly nothing)."""
        try:
            return await self._poll()
        finally:
            self.polls += 1

    async def _poll(self) -> list[BlockEvent]:
        try:
            block = await self._read(self.client)
            ledger = await self.client.latest_ledger()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any read failure is the chain's: retried next tick
            self.failures += 1
            # The chain client's messages name the server without its path or query (a
            # provider URL may hold an API key); anything else is named by its type only.
            detail = str(exc) if isinstance(exc, ChainError) else describe_failure(exc)
            log.warning("block monitor: reading the chain failed (%s); retrying next tick", detail)
            return [
                BlockEvent(
                    BlockEventKind.CHAIN_ERROR,
                    None,
                    fault=Fault.CHAIN,
                    error=detail,
                    failures=self.failures,
                )
            ]
        self.failures = 0
        self.clock.observe(ledger.sequence, ledger.close_time)
        events: list[BlockEvent] = []
        previous = self.latest
        self.latest = block
        if previous is None or block.index != previous.index:
            initial = previous is None
            log.info("block %d %s", block.index, "is current" if initial else "opened")
            events.append(BlockEvent(BlockEventKind.OPENED, block, initial=initial))
        # Due by the estimated chain time: a plant sent now lands in a ledger closing no
        # earlier, so it opens the next block.
        if (
            not block.paused
            and block.can_open_next(int(self.clock.now()))
            and self._due_reported != block.index
        ):
            self._due_reported = block.index
            log.info("block %d is due: the next plant opens %d", block.index, block.index + 1)
            events.append(BlockEvent(BlockEventKind.DUE, block))
        return events

    async def events(self) -> AsyncIterator[BlockEvent]:
        """Poll every `interval` seconds and yield each event, until `stop()`."""
        async for events in self.ticks():
            for event in events:
                yield event

    async def ticks(self, wake: asyncio.Event | None = None) -> AsyncIterator[list[BlockEvent]]:
        """Poll every `interval` seconds (sooner when `wake` is set) and yield each poll's
        events, an empty list included, until `stop()`."""
        while not self._stop.is_set():
            yield await self.poll()
            waiters = [asyncio.ensure_future(self._stop.wait())]
            if wake is not None:
                waiters.append(asyncio.ensure_future(wake.wait()))
            try:
                await asyncio.wait(
                    waiters, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if wake is not None:
                wake.clear()


# --- what to plant -----------------------------------------------------------------------


class PlantAction(StrEnum):
    """What the agent should do about planting, as of one look at the farm."""

    WAIT = "wait"  # nothing to ask now (planted already, or the farm is paused)
    PLANT = "plant"  # ask the pool to plant `block`
    SKIP = "skip"  # `block` is current but too little time is left to work it
    FINISH = "finish"  # `block` is due but work of it is unsent: end its mining, send, settle


@dataclass(frozen=True, slots=True)
class PlantPlan:
    """One decision of :func:`plan_plant`."""

    action: PlantAction
    block: int | None  # the block planted, skipped or finished (None for WAIT)
    seconds_left: float  # chain seconds until the next block may open (negative once due)


def plan_plant(
    current: CurrentBlock,
    now: float,
    *,
    min_window: float,
    planted: Collection[int],
    holding: bool,
) -> PlantPlan:
    """What to plant now, on the chain's clock `now`.

    - Not due yet: plant the current block unless it is planted already, and only while
      at least `min_window` seconds remain before the next block may open (a plant, some
      mining and a work transaction must fit); otherwise SKIP it and wait for it to be due.
    - Due: a plant now opens `index + 1`. While this machine still `holding` unsent or
      unsettled work of the current block, FINISH it first (end its mining and send the
      best hashes); only then PLANT the next block, so our own plant never makes our own
      work late.
    """
    left = current.next_block_at - now
    if current.paused:
        return PlantPlan(PlantAction.WAIT, None, left)
    if left > 0:
        if current.index in planted:
            return PlantPlan(PlantAction.WAIT, None, left)
        if left < min_window:
            return PlantPlan(PlantAction.SKIP, current.index, left)
        return PlantPlan(PlantAction.PLANT, current.index, left)
    following = current.index + 1
    if following in planted:
        return PlantPlan(PlantAction.WAIT, None, left)
    if holding:
        return PlantPlan(PlantAction.FINISH, current.index, left)
    return PlantPlan(PlantAction.PLANT, following, left)
