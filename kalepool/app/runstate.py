"""What a running `kale-pool up` left for the other commands: where each part listens.

`kale-pool up` writes `<data dir>/run/stack.json` once its parts are up and removes it
when it stops; `status`, `blocks`, `farmers` and the other everyday commands read it to
find the pool, the chain and the processes. A stack that died without removing it is
told apart by its processes: `RunState.alive()` checks each pid.

`StackLock` is the lock that keeps a second `up` off a data directory already in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from kalepool.processes import pid_alive
from kalepool.settings import Settings

STATE_FILE = "stack.json"
LOCK_FILE = "up.lock"


def run_dir(settings: Settings) -> Path:
    """`<data dir>/run`: the running stack's state and lock."""
    return settings.layout().root / "run"


@dataclass
class ProcessInfo:
    """One process of the stack."""

    pid: int
    role: str  # devnet | wallet | pool | web | pooler
    log: str  # its log file
    address: str = ""  # where it listens (host:port or URL), if it does


@dataclass
class RunState:
    """Where the parts of a running stack are."""

    network: str
    rpc_url: str
    pool_address: str  # host:port of the pool service (mTLS)
    wallet_address: str  # host:port of the wallet service (mTLS)
    started_at: float
    supervisor_pid: int
    processes: dict[str, ProcessInfo] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # part -> /metrics URL
    web_url: str = ""  # the farmers' web page ("" when `up` does not serve it)

    def save(self, settings: Settings) -> Path:
        """Write the state atomically (readers never see half a file)."""
        path = run_dir(settings) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, settings: Settings) -> RunState | None:
        """The state a running (or crashed) stack left; None when there is none."""
        path = run_dir(settings) / STATE_FILE
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # half-written or foreign: treat as absent
        processes = {name: ProcessInfo(**info) for name, info in raw.pop("processes", {}).items()}
        return cls(processes=processes, **raw)

    @staticmethod
    def clear(settings: Settings) -> None:
        """Remove the state file (the stack stopped)."""
        with contextlib.suppress(FileNotFoundError):
            (run_dir(settings) / STATE_FILE).unlink()

    def alive(self) -> dict[str, bool]:
        """Whether each process still runs (by pid; the supervisor included)."""
        result = {"supervisor": pid_alive(self.supervisor_pid)}
        for name, info in self.processes.items():
            result[name] = pid_alive(info.pid)
        return result


class StackLockedError(Exception):
    """Another `kale-pool up` holds this data directory."""


class StackLock:
    """An exclusive lock on the data directory for one `kale-pool up` (released on exit,
    also when the process dies: the kernel drops an flock with its holder)."""

    def __init__(self, settings: Settings) -> None:
        self.path = run_dir(settings) / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StackLockedError(
                f"kale-pool up is already running on {self.path.parent.parent} ({holder}); "
                "stop it first, or use another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> StackLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
