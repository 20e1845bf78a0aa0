"""What `kale-pool up` shows while it runs: the supervisor's own events, one interface.

`up` reports every step it takes (a process started, ready or gone; a pooler provisioned;
a farmer funded; a block farmed) to a `StackObserver`. `PlainObserver` prints each as one
line; the live view implements the same Protocol and draws the farm around them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.markup import escape

LEVELS = ("info", "good", "warning", "error")
# Where the stack's events are logged (`kale-pool up` writes it to logs/events.log).
EVENT_LOGGER = "kalepool.events"
_LOG_LEVEL = {"info": logging.INFO, "good": logging.INFO, "warning": logging.WARNING}
_STYLE = {"info": "", "good": "green", "warning": "yellow", "error": "bold red"}


class StackObserver(Protocol):
    """Receives the supervisor's events and, while the stack runs, shows them."""

    def event(self, message: str, *, level: str = "info") -> None:
        """One thing that happened (``level``: info, good, warning or error)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Show the running stack until ``stop`` is set."""


class PlainObserver:
    """Prints each event as one line (a time, the message); errors go to stderr."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        file: TextIO | None = None,
        errors: Console | None = None,
    ) -> None:
        self.console = console or Console(file=file, highlight=False, soft_wrap=True)
        self.errors = errors or (
            self.console if file is not None else Console(stderr=True, highlight=False)
        )

    def event(self, message: str, *, level: str = "info") -> None:
        if level not in LEVELS:
            level = "info"
        stamp = time.strftime("%H:%M:%S")
        style = _STYLE[level]
        text = escape(message)
        line = f"[dim]{stamp}[/dim] " + (f"[{style}]{text}[/{style}]" if style else text)
        out = self.errors if level == "error" else self.console
        out.print(line, highlight=False, soft_wrap=True)
        logging.getLogger(EVENT_LOGGER).log(_LOG_LEVEL.get(level, logging.ERROR), message)

    async def run(self, stop: asyncio.Event) -> None:
        # Events print as they come; there is nothing else to draw.
        await stop.wait()


class RecordingObserver:
    """Keeps events in memory (tests, and a caller that prints them later)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def event(self, message: str, *, level: str = "info") -> None:
        self.events.append((level, message))

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
