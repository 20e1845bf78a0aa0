"""What `kale-pool pooler` shows: a live view on a terminal, a log file always.

The live view is drawn from :meth:`PoolerAgent.snapshot` a few times a second: the
machine's hash rate, the farmers being mined with their best zeros so far, the current
block and the time to its work deadline, works sent / landed / failed, and the latest
log lines. The snapshot is taken on the event loop (it only reads the agent's state);
rich's own thread draws it, so the agent's loops never wait on the terminal.

While the view holds the terminal, log lines go to the view's recent-events pane instead
of stderr; every line also goes to `logs/pooler-<cert name>.log` under the data
directory, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kalepool.masking import RedactingFormatter

if TYPE_CHECKING:
    from pooler_agent.agent import AgentSnapshot, PoolerAgent

_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class Event:
    """One log line as the view shows it."""

    at: float  # wall time (Unix)
    level: int
    message: str


class RecentEvents(logging.Handler):
    """Keeps the latest log lines for the view (appending to a deque is thread-safe)."""

    def __init__(self, size: int = 10) -> None:
        super().__init__()
        self._events: deque[Event] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not break the view
            message = str(record.msg)
        self._events.append(Event(record.created, record.levelno, message))

    @property
    def events(self) -> tuple[Event, ...]:
        return tuple(self._events)


RECENT = RecentEvents()


@contextlib.contextmanager
def log_to_file(path: Path, level: str) -> Iterator[Path]:
    """Every log line also goes to `path` (rotated at 10 MB, three kept), while inside."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=10_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(RedactingFormatter(_FILE_FORMAT))
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def showing_events(events: RecentEvents = RECENT) -> Iterator[RecentEvents]:
    """While inside, log lines go to the view's pane instead of the terminal."""
    root = logging.getLogger()
    terminal = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    for handler in terminal:
        root.removeHandler(handler)
    root.addHandler(events)
    try:
        yield events
    finally:
        root.removeHandler(events)
        for handler in terminal:
            root.addHandler(handler)


# --- drawing -----------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds <= 0:
        return "now"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{seconds:.0f}s"


def _rate(hashes_per_second: float) -> str:
    if hashes_per_second >= 1e6:
        return f"{hashes_per_second / 1e6:.2f} MH/s"
    if hashes_per_second >= 1e3:
        return f"{hashes_per_second / 1e3:.1f} kH/s"
    return f"{hashes_per_second:.0f} H/s"


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-6:]}" if len(address) > 14 else address


_STATE_STYLE = {
    "mining": "bold cyan",
    "sending": "yellow",
    "following": "yellow",
    "pending": "magenta",
    "landed": "green",
    "failed": "red",
}
_LEVEL_STYLE = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}


def render(snapshot: AgentSnapshot, events: Sequence[Event] = (), *, rows: int = 20) -> Table:
    """The view of one snapshot (and the latest log lines), as one rich renderable."""
    stats = snapshot.stats
    summary = Table.grid(padding=(0, 3))
    block = "?" if snapshot.block_index is None else str(snapshot.block_index)
    summary.add_row(
        Text.assemble(("block ", "dim"), (block, "bold")),
        Text.assemble(
            ("work deadline in ", "dim"), (_duration(snapshot.seconds_to_work_deadline), "bold")
        ),
        Text.assemble(
            ("next block in ", "dim"), (_duration(snapshot.seconds_to_next_block), "bold")
        ),
    )
    summary.add_row(
        Text.assemble(("hash rate ", "dim"), (_rate(snapshot.hashes_per_second), "bold green")),
        Text.assemble(
            ("farmers mining ", "dim"),
            (f"{snapshot.mining_farmers}/{snapshot.capacity}", "bold"),
        ),
        Text.assemble(("threads ", "dim"), (str(snapshot.threads or "all cores"), "bold")),
    )
    summary.add_row(
        Text.assemble(
            ("works sent ", "dim"),
            (str(stats.submitted), "bold"),
            ("  landed ", "dim"),
            (str(stats.succeeded), "bold green"),
            ("  failed ", "dim"),
            (str(stats.failed), "bold red" if stats.failed else "bold"),
        ),
        Text.assemble(("following ", "dim"), (str(snapshot.following), "bold")),
        Text.assemble(
            ("plants asked ", "dim"),
            (str(stats.plant_requests), "bold"),
            ("  refused ", "dim"),
            (str(stats.plant_refused + stats.plant_errors), "bold"),
        ),
    )

    farmers = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False)
    farmers.add_column("farmer")
    farmers.add_column("block", justify="right")
    farmers.add_column("best zeros", justify="right")
    farmers.add_column("hashes", justify="right")
    farmers.add_column("state")
    for farmer in snapshot.farmers[:rows]:
        farmers.add_row(
            _short(farmer.farmer_address),
            str(farmer.block_index),
            str(farmer.zeros),
            _count(farmer.hashes),
            Text(farmer.state, style=_STATE_STYLE.get(farmer.state, "")),
        )
    if len(snapshot.farmers) > rows:
        farmers.add_row(f"… {len(snapshot.farmers) - rows} more", "", "", "", "")
    if not snapshot.farmers:
        farmers.add_row(Text("no assignment yet", style="dim"), "", "", "", "")

    log_lines = Text()
    for event in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        log_lines.append(f"{stamp} ", style="dim")
        log_lines.append(event.message, style=_LEVEL_STYLE.get(event.level, ""))
        log_lines.append("\n")
    log_lines.rstrip()

    page = Table.grid(expand=True)
    page.add_row(Panel(summary, title="kale-pool pooler", title_align="left", box=box.ROUNDED))
    page.add_row(farmers)
    page.add_row(
        Panel(
            Group(log_lines) if events else Text("nothing yet", style="dim"),
            title="recent events",
            title_align="left",
            box=box.ROUNDED,
        )
    )
    return page


class LiveView:
    """Draws the agent's snapshot on the terminal `refresh_per_second` times a second
    until cancelled."""

    def __init__(
        self,
        agent: PoolerAgent,
        *,
        console: Console | None = None,
        events: RecentEvents = RECENT,
        refresh_per_second: float = 4.0,
    ) -> None:
        self.agent = agent
        self.console = console or Console(file=sys.stdout)
        self.events = events
        self.refresh_per_second = refresh_per_second

    def renderable(self) -> RenderableType:
        return render(self.agent.snapshot(), self.events.events)

    async def run(self) -> None:
        # Live redraws from its own thread; the snapshot is taken here, on the loop.
        with Live(
            self.renderable(),
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while True:
                await asyncio.sleep(1.0 / self.refresh_per_second)
                live.update(self.renderable())
