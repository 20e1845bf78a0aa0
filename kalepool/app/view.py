"""The live view of a running stack: what `kale-pool up` shows while it farms.

`make_view` returns a `StackObserver`: on a terminal a rich `Live` screen (the current
block and the time left in it, the recent blocks' plant/work/harvest outcomes, best
zeros and rewards, each pooler's last heartbeat, each farmer's balance, and a scrolling
event log); elsewhere (a pipe, a CI log) one plain line per event.

Everything comes from the pool's public API through `OperatorClient`, polled at most a
few times a second (`PoolWatch`); records that appeared between two polls (plantings,
works, harvests, compensations, failures with their cause, new blocks, poolers, farmers)
become events. The view never blocks the event loop (every call is async, with a
deadline), keeps its last figures and says so while the pool cannot be reached, and
reconnects with a fresh channel when it can be again. Every event also goes to the
`kalepool.events` logger, which the supervisor writes under `<data dir>/logs/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kalepool.amounts import format_kale
from kalepool.app.observer import EVENT_LOGGER, StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.runstate import RunState
from kalepool.app.tables import (
    FailureNote,
    block_failures,
    blocks_table,
    failure_cause,
    farmer_status,
    farmers_table,
    fault_party,
    format_span,
    is_failure,
    poolers_table,
    short_kale,
)
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from kalepool.wire import when

log = logging.getLogger(EVENT_LOGGER)

LEVELS = {
    "info": logging.INFO,
    "good": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_STYLE = {"info": "", "good": "green", "warning": "yellow", "error": "bold red"}

# Errors that mean "the pool is not there (now)", as opposed to a refusal.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

# What a secret looks like in this project: a Stellar secret seed (S + 55 base32
# characters) or a pooler API key (`kp_...`). No API message holds one; the supervisor's
# own lines are masked too, so a careless message never reaches the screen or the log.
_SECRET = re.compile(r"\bS[A-Z2-7]{55}\b|\bkp_[A-Za-z0-9_-]{8,}")


def redact(text: str) -> str:
    """`text` with anything shaped like a secret seed or an API key masked."""
    return _SECRET.sub("[redacted]", text)


@dataclass(frozen=True)
class ViewEvent:
    """One line of the event log."""

    at: dt.datetime
    level: str  # info | warning | error
    message: str

    def line(self) -> str:
        """`12:34:56 warning block 41 work failed ...` (local time)."""
        return f"{self.at.astimezone():%H:%M:%S} {self.level:<7} {self.message}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _event(message: str, level: str = "info") -> ViewEvent:
    return ViewEvent(_now(), level, redact(message))


class PoolWatch:
    """Polls the pool's API and tells what changed since the previous poll.

    The figures of the last successful poll stay readable (`stats`, `blocks`,
    `failures`, `poolers`, `pooler_stats`, `farmers`) while the pool is unreachable;
    `reachable`, `problem` and `down_since` say how things stand.
    """

    def __init__(
        self,
        connect: Callable[[], OperatorClient],
        *,
        recent_blocks: int = 6,
        detail_blocks: int = 3,
        max_poolers: int = 20,
        max_farmers: int = 1000,
        timeout: float = 3.0,
    ) -> None:
        self._connect = connect
        self._client: OperatorClient | None = None
        self.address = ""
        self.recent_blocks = recent_blocks
        self.detail_blocks = detail_blocks
        self.max_poolers = max_poolers
        self.max_farmers = max_farmers
        self.timeout = timeout

        self.stats: pool_pb2.GetPoolStatsResponse | None = None
        self.blocks: list[pool_pb2.BlockSummary] = []
        self.failures: dict[int, list[FailureNote]] = {}
        self.poolers: list[pool_pb2.Pooler] = []
        self.pooler_stats: dict[str, pool_pb2.GetPoolerStatsResponse] = {}
        self.farmers: list[pool_pb2.Farmer] = []

        self.reachable: bool | None = None  # None until the first poll ends
        self.problem = ""
        self.down_since: float | None = None  # monotonic
        self.polled_at: float | None = None  # monotonic, last successful poll

        self._watching = False  # True once a whole poll succeeded: later records are news
        self._summaries: dict[int, bytes] = {}
        self._opened: dict[int, pool_pb2.BlockSummary] = {}  # GetBlock's summary (opened_at)
        self._seen: dict[int, set[str]] = {}  # block -> ids of the records already told
        self._farmer_status: dict[str, int] = {}
        self._problems_told: set[str] = set()

    # --- names --------------------------------------------------------------------------

    def pooler_names(self) -> dict[str, str]:
        return {p.pooler_id: p.name for p in self.poolers}

    def _pooler(self, pooler_id: str) -> str:
        return self.pooler_names().get(pooler_id) or f"pooler {pooler_id[:8]}"

    # --- polling ------------------------------------------------------------------------

    async def poll(self, *, full: bool = True) -> list[ViewEvent]:
        """One round of calls; `full` also reads poolers, their statistics and farmers.
        Returns the events detected (never raises for the pool's own errors)."""
        events: list[ViewEvent] = []
        if self._client is None:
            self._client = self._connect()
            self.address = self._client.address
        try:
            await self._poll(self._client, full, events)
        except grpc.aio.AioRpcError as error:
            events.extend(await self._failed(error))
            return events
        if self.reachable is False:
            down = time.monotonic() - (self.down_since or time.monotonic())
            events.append(_event(f"pool reachable again at {self.address} after {down:.0f}s"))
        if full and not self._watching:
            events.append(_event(self._watching_line()))
        self.reachable = True
        self.problem = ""
        self.down_since = None
        self.polled_at = time.monotonic()
        self._problems_told.clear()
        self._watching = self._watching or full
        return events

    def _watching_line(self) -> str:
        stats = self.stats or pool_pb2.GetPoolStatsResponse()
        return (
            f"watching the pool at {self.address}: block {stats.current_block_index},"
            f" {stats.poolers_active} active poolers, {stats.farmers_active} active farmers"
        )

    async def _failed(self, error: grpc.aio.AioRpcError) -> list[ViewEvent]:
        code = error.code()
        detail = redact((error.details() or code.name).strip().splitlines()[0])
        events: list[ViewEvent] = []
        if code in _UNREACHABLE:
            problem = f"unreachable at {self.address} ({code.name.lower()}: {detail})"
            if self.reachable is not False:
                self.down_since = time.monotonic()
                events.append(_event(f"pool {problem}; retrying", "error"))
            self.reachable = False
            # A fresh channel connects at once when the pool is back (an old one may sit
            # in its reconnect backoff).
            await self.close()
        else:
            problem = f"refused: {code.name.lower()}: {detail}"
            if problem not in self._problems_told:
                self._problems_told.add(problem)
                events.append(_event(f"pool {problem}", "error"))
        self.problem = problem
        return events

    async def _poll(self, client: OperatorClient, full: bool, events: list[ViewEvent]) -> None:
        pool = client.pool
        t = self.timeout
        stats = await pool.GetPoolStats(pool_pb2.GetPoolStatsRequest(), timeout=t)
        if (
            self._watching
            and self.stats is not None
            and stats.current_block_index > self.stats.current_block_index
        ):
            events.append(_event(f"block {stats.current_block_index} opened"))
        self.stats = stats

        listed = await pool.ListBlocks(
            pool_pb2.ListBlocksRequest(
                pagination=common_pb2.Pagination(page_size=self.recent_blocks)
            ),
            timeout=t,
        )
        blocks = list(listed.blocks)
        for summary in reversed(blocks[: self.detail_blocks]):  # oldest first
            key = summary.SerializeToString(deterministic=True)
            unsettled = summary.status in (
                pool_pb2.BLOCK_STATUS_ACTIVE,
                pool_pb2.BLOCK_STATUS_HARVESTING,
            )
            if self._summaries.get(summary.block_index) == key and not (full and unsettled):
                continue
            detail = await pool.GetBlock(
                pool_pb2.GetBlockRequest(block_index=summary.block_index), timeout=t
            )
            self._records(detail, events)
            self._summaries[summary.block_index] = key
            self._opened[summary.block_index] = detail.block
            self.failures[summary.block_index] = block_failures(detail)
        kept = {b.block_index for b in blocks}
        for store in (self._summaries, self._opened, self._seen, self.failures):
            for index in [i for i in store if i not in kept]:
                del store[index]
        self.blocks = [self._with_opened(b) for b in blocks]

        if full:
            await self._poll_poolers(client, events)
            await self._poll_farmers(client, events)

    def _with_opened(self, summary: pool_pb2.BlockSummary) -> pool_pb2.BlockSummary:
        """The summary with the block's opening time, which only GetBlock tells."""
        detail = self._opened.get(summary.block_index)
        if detail is None or not detail.HasField("opened_at") or summary.HasField("opened_at"):
            return summary
        shown = pool_pb2.BlockSummary()
        shown.CopyFrom(summary)
        shown.opened_at.CopyFrom(detail.opened_at)
        return shown

    async def _poll_poolers(self, client: OperatorClient, events: list[ViewEvent]) -> None:
        poolers: list[pool_pb2.Pooler] = []
        token = ""
        while len(poolers) < self.max_poolers:
            page = await client.pool.ListPoolers(
                pool_pb2.ListPoolersRequest(
                    pagination=common_pb2.Pagination(page_size=100, page_token=token)
                ),
                timeout=self.timeout,
            )
            poolers.extend(page.poolers)
            token = page.next_page_token
            if not token:
                break
        poolers = poolers[: self.max_poolers]
        known = {p.pooler_id for p in self.poolers}
        if self._watching:
            for p in poolers:
                if p.pooler_id not in known:
                    events.append(_event(f"pooler {p.name} registered ({p.pooler_id})"))
        stats = await asyncio.gather(
            *(
                client.pool.GetPoolerStats(
                    pool_pb2.GetPoolerStatsRequest(pooler_id=p.pooler_id), timeout=self.timeout
                )
                for p in poolers
            )
        )
        self.poolers = poolers
        self.pooler_stats = {p.pooler_id: s for p, s in zip(poolers, stats, strict=True)}

    async def _poll_farmers(self, client: OperatorClient, events: list[ViewEvent]) -> None:
        farmers: list[pool_pb2.Farmer] = []
        token = ""
        while len(farmers) < self.max_farmers:
            page = await client.pool.ListFarmers(
                pool_pb2.ListFarmersRequest(
                    pagination=common_pb2.Pagination(page_size=500, page_token=token)
                ),
                timeout=self.timeout,
            )
            farmers.extend(page.farmers)
            token = page.next_page_token
            if not token:
                break
        for f in farmers:
            before = self._farmer_status.get(f.farmer_id)
            if self._watching and before != f.status:
                label = farmer_status(f.status)
                if before is None:
                    events.append(
                        _event(
                            f"farmer {f.farmer_id[:8]} registered with {self._pooler(f.pooler_id)}"
                            f" ({label})"
                        )
                    )
                else:
                    events.append(_event(f"farmer {f.farmer_id[:8]} is {label}"))
            self._farmer_status[f.farmer_id] = f.status
        self.farmers = farmers

    # --- records ------------------------------------------------------------------------

    def _records(self, block: pool_pb2.GetBlockResponse, events: list[ViewEvent]) -> None:
        """Events for the block's records not told before (none on the first poll)."""
        index = block.block.block_index
        seen = self._seen.setdefault(index, set())
        fresh: list[ViewEvent] = []
        for p in block.plantings:
            if ("p" + p.planting_id) not in seen:
                seen.add("p" + p.planting_id)
                fresh.append(self._planting(p))
        for w in block.works:
            if ("w" + w.work_id) not in seen:
                seen.add("w" + w.work_id)
                fresh.append(self._work(w))
        for h in block.harvests:
            if ("h" + h.harvest_id) not in seen:
                seen.add("h" + h.harvest_id)
                fresh.append(self._harvest(h))
        for c in block.compensations:
            if ("c" + c.compensation_id) not in seen:
                seen.add("c" + c.compensation_id)
                fresh.append(self._compensation(c))
        if self._watching:
            events.extend(fresh)

    @staticmethod
    def _failure(block: int, stage: str, farmer_id: str, failure: common_pb2.Failure) -> ViewEvent:
        text = f"block {block}: {stage} failed for farmer {farmer_id[:8]}: {failure_cause(failure)}"
        if failure.message:
            text += f": {failure.message}"
        # Nobody's fault (e.g. harvest asked before the block was over): retried, not a failure.
        level = "warning" if is_failure(failure) else "info"
        return _event(text, level)

    def _planting(self, p: records_pb2.PlantingEvent) -> ViewEvent:
        if p.status == records_pb2.EVENT_STATUS_FAILED:
            return self._failure(p.block_index, "plant", p.farmer_id, p.failure)
        if p.status == records_pb2.EVENT_STATUS_PENDING:
            return _event(
                f"block {p.block_index}: plant for farmer {p.farmer_id[:8]} pending"
                f" (tx {p.transaction.tx_hash[:12]})"
            )
        return _event(
            f"block {p.block_index}: planted farmer {p.farmer_id[:8]}"
            f" for {self._pooler(p.pooler_id)}, stake {format_kale(p.stake_stroops)} KALE"
        )

    def _work(self, w: records_pb2.WorkEvent) -> ViewEvent:
        if w.status == records_pb2.EVENT_STATUS_FAILED:
            return self._failure(w.block_index, "work", w.farmer_id, w.failure)
        if w.status == records_pb2.EVENT_STATUS_PENDING:
            return _event(f"block {w.block_index}: work for farmer {w.farmer_id[:8]} pending")
        seen = " (seen on chain)" if w.observed_on_chain else ""
        return _event(
            f"block {w.block_index}: {self._pooler(w.pooler_id)} worked farmer"
            f" {w.farmer_id[:8]}: {w.zeros} zeros, gap {w.gap}{seen}"
        )

    def _harvest(self, h: records_pb2.HarvestEvent) -> ViewEvent:
        if h.status == records_pb2.EVENT_STATUS_FAILED:
            return self._failure(h.block_index, "harvest", h.farmer_id, h.failure)
        if h.status == records_pb2.EVENT_STATUS_PENDING:
            return _event(f"block {h.block_index}: harvest for farmer {h.farmer_id[:8]} pending")
        return _event(
            f"block {h.block_index}: harvested farmer {h.farmer_id[:8]}:"
            f" reward {format_kale(h.reward_stroops)} KALE"
            f" (+{format_kale(h.stake_returned_stroops)} stake back)"
        )

    def _compensation(self, c: records_pb2.Compensation) -> ViewEvent:
        return _event(
            f"block {c.block_index}: {format_kale(c.amount_stroops)} KALE owed by the"
            f" {fault_party(c.owed_by)}"
            f" to farmer {c.farmer_id[:8]}: {c.reason}",
            "warning",
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class ConsoleView:
    """The `StackObserver` of a console: a live screen on a terminal, else plain lines."""

    def __init__(
        self,
        watch: PoolWatch,
        console: Console,
        *,
        live: bool,
        network: str = "",
        started_at: float | None = None,
        poll_seconds: float = 1.0,
        full_every_seconds: float = 5.0,
        log_lines: int = 12,
        farmer_rows: int = 8,
    ) -> None:
        # At most a few polls a second, whatever the caller asks.
        self.poll_seconds = max(0.25, poll_seconds)
        self.full_every_seconds = full_every_seconds
        self.watch = watch
        self.console = console
        self.live = live
        self.network = network
        self.started_at = started_at
        self.log_lines = log_lines
        self.farmer_rows = farmer_rows
        self.events: deque[ViewEvent] = deque(maxlen=200)

    # --- StackObserver --------------------------------------------------------------------

    def event(self, message: str, *, level: str = "info") -> None:
        """A line of the supervisor's own (a process started, a farmer provisioned)."""
        self._record(_event(message, level if level in LEVELS else "info"))

    async def run(self, stop: asyncio.Event) -> None:
        poller = asyncio.create_task(self._poll_loop(stop))
        try:
            if self.live:
                with Live(
                    self.render(), console=self.console, auto_refresh=False, transient=False
                ) as screen:
                    while not stop.is_set():
                        screen.update(self.render(), refresh=True)
                        await _wait(stop, 0.5)
                    screen.update(self.render(), refresh=True)
            else:
                await stop.wait()
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await self.watch.close()

    # --- polling --------------------------------------------------------------------------

    def _record(self, event: ViewEvent) -> None:
        log.log(LEVELS.get(event.level, logging.INFO), event.message)
        self.events.append(event)
        if not self.live:
            self.console.print(event.line(), markup=False, highlight=False, soft_wrap=True)

    async def _poll_loop(self, stop: asyncio.Event) -> None:
        last_full = float("-inf")
        last_error = ""
        while not stop.is_set():
            full = time.monotonic() - last_full >= self.full_every_seconds
            try:
                events = await self.watch.poll(full=full)
                last_error = ""
            except Exception as error:  # a bug here must not take the stack down
                told = f"the view failed to read the pool: {error!r}"
                events = [] if told == last_error else [_event(told, "error")]
                if told != last_error:
                    log.debug("the live view failed to read the pool", exc_info=True)
                last_error = told
            if full and self.watch.reachable:
                last_full = time.monotonic()
            for event in events:
                self._record(event)
            await _wait(stop, self.poll_seconds)

    # --- rendering ------------------------------------------------------------------------

    def render(self) -> RenderableType:
        """The whole screen, from the last poll's figures."""
        watch = self.watch
        parts: list[RenderableType] = [self._header()]
        if watch.blocks:
            parts.append(blocks_table(watch.blocks, watch.failures, title="recent blocks"))
        else:
            parts.append(Text("no blocks yet: nothing planted", style="dim"))
        if watch.poolers:
            parts.append(
                poolers_table(watch.poolers, watch.pooler_stats, title="poolers", compact=True)
            )
        if watch.farmers:
            ranked = sorted(watch.farmers, key=lambda f: -f.balance_stroops)
            shown = ranked[: self.farmer_rows]
            title = "farmers" if len(shown) == len(ranked) else f"farmers (top {len(shown)} "
            title += "" if len(shown) == len(ranked) else f"of {len(ranked)} by balance)"
            parts.append(farmers_table(shown, watch.pooler_names(), title=title, compact=True))
        parts.append(self._log())
        return Group(*parts)

    def _header(self) -> RenderableType:
        watch = self.watch
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        top = Text("kale-pool", style="bold")
        if self.network:
            top.append(f"  {self.network}")
        top.append(f"  pool {watch.address or '…'}")
        if self.started_at is not None:
            top.append(f"  up {format_span(time.time() - self.started_at)}")
        grid.add_row(top)
        if watch.reachable is None:
            if watch.problem:
                grid.add_row(Text(f"pool {watch.problem}", style="bold red"))
            else:
                grid.add_row(Text("connecting to the pool…", style="dim"))
        elif not watch.reachable:
            since = time.monotonic() - (watch.down_since or time.monotonic())
            line = Text(f"pool {watch.problem} for {format_span(since)}", style="bold red")
            if watch.polled_at is not None:
                line.append(
                    f"; figures below are {format_span(time.monotonic() - watch.polled_at)} old",
                    style="red",
                )
            grid.add_row(line)
        stats = watch.stats
        if stats is not None:
            grid.add_row(self._block_line(stats))
            grid.add_row(
                Text(
                    f"poolers {stats.poolers_active}/{stats.poolers_total} active   "
                    f"farmers {stats.farmers_active} active, {stats.farmers_pending_funding}"
                    f" pending funding, {stats.farmers_leaving} leaving   "
                    f"rewards {short_kale(stats.total_reward_stroops)} KALE   "
                    f"balances {short_kale(stats.total_balance_stroops)} KALE   "
                    f"paid out {short_kale(stats.total_paid_out_stroops)} KALE"
                )
            )
        return grid

    def _block_line(self, stats: pool_pb2.GetPoolStatsResponse) -> Text:
        line = Text(f"block {stats.current_block_index}", style="bold cyan")
        opened = when(stats.current_block_opened_at)
        if opened is not None:
            line.append(f"  opened {opened.astimezone():%H:%M:%S}")
        due = when(stats.next_block_due_at)
        as_of = when(stats.as_of)
        if due is None or as_of is None or self.watch.polled_at is None:
            line.append("  time left: unknown", style="dim")
            return line
        # The pool's figures are as of its poll; count down from there on our own clock.
        left = (due - as_of).total_seconds() - (time.monotonic() - self.watch.polled_at)
        if left > 0:
            line.append(f"  next block in {format_span(left)}", style="bold")
        else:
            line.append("  next block due now", style="bold")
        return line

    def _log(self) -> RenderableType:
        lines = Text()
        shown: Sequence[ViewEvent] = list(self.events)[-self.log_lines :]
        for i, event in enumerate(shown):
            if i:
                lines.append("\n")
            lines.append(event.line(), style=LEVEL_STYLE.get(event.level, ""))
        if not shown:
            lines.append("nothing yet", style="dim")
        return Panel(lines, title="events", title_align="left", border_style="dim")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def make_view(settings: Settings, state: RunState, console: Console) -> StackObserver:
    """The view of the stack in `state`: live on a terminal, plain lines elsewhere."""
    watch = PoolWatch(lambda: OperatorClient(settings, address=state.pool_address, timeout=3.0))
    return ConsoleView(
        watch,
        console,
        live=console.is_terminal,
        network=state.network,
        started_at=state.started_at,
    )
