"""The processes of a local stack: started in order, watched, and stopped in reverse.

`kale-pool up` runs every part as its own process, as a deployment does: the devnet,
the wallet service, the pool service and the pooler agents. The `Supervisor` starts each
(its output appended to `<data dir>/logs/<name>.log`, its settings in its environment),
waits until it is ready (a probe: the port answers, the health check says SERVING),
notices one that exits when nobody asked it to, and stops them all in the reverse order
of their start: SIGINT, then SIGKILL after a grace period.

Each child runs in a session of its own (a Ctrl-C in the terminal reaches the supervisor
only, which then stops the parts in order) and dies with the supervisor
(`kalepool.app.deathsig`), so even a supervisor killed with SIGKILL leaves nothing
holding its ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kalepool.app.files import open_private_append
from kalepool.app.observer import StackObserver

Probe = Callable[[], Awaitable[bool]]
"""True once the part serves (a failed attempt returns False or raises)."""

_PROBE_INTERVAL = 0.25
_TAIL_BYTES = 8192


class PartFailed(Exception):
    """A part could not start, or stopped by itself; the message says which and why."""


@dataclass
class Part:
    """One process of the stack, as the supervisor starts it."""

    name: str  # also its log file's name: logs/<name>.log
    role: str  # devnet | wallet | pool | web | pooler
    argv: list[str]
    env: dict[str, str]
    address: str = ""  # where it listens, for `status`
    probe: Probe | None = None
    ready_timeout: float = 90.0
    stop_grace: float = 20.0


@dataclass
class Child:
    """A started part."""

    part: Part
    process: asyncio.subprocess.Process
    log: Path
    log_offset: int  # where this run's output starts in the log
    started_at: float
    waiter: asyncio.Task[int] = field(repr=False)
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def last_line(self) -> str:
        """The last line this run of the part wrote (its one-line error, usually)."""
        return last_log_line(self.log, self.log_offset)


def last_log_line(path: Path, offset: int = 0) -> str:
    """The last non-empty line written to ``path`` after ``offset``; empty if none."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(offset, size - _TAIL_BYTES)
            handle.seek(start)
            tail = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the child's process group (its own session: the child and anything it ran)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """Starts parts, watches them, stops them (reverse order of start)."""

    def __init__(self, logs: Path, observer: StackObserver) -> None:
        self.logs = logs
        self.observer = observer
        self.children: dict[str, Child] = {}
        self._exits: asyncio.Queue[Child] = asyncio.Queue()
        self._hurry = asyncio.Event()

    def hurry(self) -> None:
        """Stop waiting out grace periods: parts still stopping are killed now (a second
        Ctrl-C)."""
        self._hurry.set()

    async def start(self, part: Part) -> Child:
        """Start ``part`` and wait until its probe says it is ready (PartFailed if it
        exits first or is not ready in time: it is stopped then)."""
        if part.name in self.children and self.children[part.name].running:
            raise PartFailed(f"{part.name} is already running")
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{part.name}.log"
        fd = open_private_append(log)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"--- {stamp} kale-pool up starts {part.name}\n".encode())
            # This run's output starts here: a failure's last line is never an old run's.
            offset = os.lseek(fd, 0, os.SEEK_END)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kalepool.app.deathsig",
                str(os.getpid()),
                *part.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                env=part.env,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        child = Child(
            part=part,
            process=process,
            log=log,
            log_offset=offset,
            started_at=time.time(),
            waiter=asyncio.create_task(process.wait(), name=f"wait {part.name}"),
        )
        child.waiter.add_done_callback(lambda _task: self._exits.put_nowait(child))
        self.children[part.name] = child
        self.observer.event(f"{part.name}: started (pid {process.pid}), log {log}")
        try:
            await self._wait_ready(child)
        except BaseException:
            await self.stop_child(child)
            raise
        ready = f" at {part.address}" if part.address else ""
        self.observer.event(f"{part.name}: ready{ready}", level="good")
        return child

    async def _wait_ready(self, child: Child) -> None:
        part = child.part
        deadline = time.monotonic() + part.ready_timeout
        while True:
            if not child.running:
                await child.waiter
                raise PartFailed(self._exit_message(child))
            if part.probe is None:
                return
            try:
                if await part.probe():
                    return
            except Exception:  # not serving yet: keep probing until the deadline
                pass
            if time.monotonic() > deadline:
                raise PartFailed(
                    f"{part.name} was not ready after {part.ready_timeout:.0f} s (see {child.log})"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.waiter), _PROBE_INTERVAL)

    def _exit_message(self, child: Child) -> str:
        code = child.process.returncode
        how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-(code or 0)}"
        last = child.last_line()
        detail = f": {last}" if last else ""
        return f"{child.part.name} stopped by itself ({how}){detail} (log: {child.log})"

    async def unexpected_exit(self) -> str:
        """Wait until a part exits that nobody asked to stop; what happened, in one line."""
        while True:
            child = await self._exits.get()
            if not child.stopping:
                return self._exit_message(child)

    async def stop_child(self, child: Child) -> None:
        """SIGINT, then SIGKILL after the part's grace period; waits until it is gone."""
        child.stopping = True
        if not child.running:
            await child.waiter
            return
        _signal_group(child.pid, signal.SIGINT)
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            await asyncio.wait(
                {child.waiter, hurry},
                timeout=child.part.stop_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hurry.cancel()
        if child.running:
            why = "asked twice" if self._hurry.is_set() else f"{child.part.stop_grace:.0f} s"
            self.observer.event(
                f"{child.part.name}: still running after SIGINT ({why}), killed",
                level="warning",
            )
            _signal_group(child.pid, signal.SIGKILL)
            await child.waiter

    async def stop_all(self) -> None:
        """Stop every part, last started first (poolers, pool, wallet, devnet)."""
        for child in reversed(list(self.children.values())):
            if child.running:
                self.observer.event(f"{child.part.name}: stopping")
            await self.stop_child(child)
            code = child.process.returncode
            if code:
                self.observer.event(f"{child.part.name}: exited with code {code}", level="warning")
