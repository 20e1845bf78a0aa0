"""Run a command that dies with the process that started it.

`python -m kalepool.app.deathsig PARENT_PID COMMAND [ARGS...]` is how `kale-pool up`
starts each part: on Linux it asks the kernel to send SIGTERM when the parent dies
(`PR_SET_PDEATHSIG`, kept across exec) and then becomes COMMAND, so a supervisor killed
with SIGKILL leaves no process holding its ports. Elsewhere it stays as a small parent
that forwards signals and ends COMMAND when PARENT_PID is gone.

Setting the signal here rather than in a `preexec_fn` keeps the supervisor's fork free
of Python code (it runs gRPC threads, which a fork with a preexec_fn can deadlock).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5


def _linux(parent: int, command: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return _watching(parent, command)
    if os.getppid() != parent:
        return 1  # the parent died before the signal was armed: do not start at all
    os.execvp(command[0], command)
    return 127  # not reached


def _watching(parent: int, command: list[str]) -> int:
    """Without prctl: run COMMAND as a child, forward signals, end it if PARENT_PID dies."""
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    while child.poll() is None:
        if os.getppid() != parent:
            child.terminate()
            break
        time.sleep(_POLL_SECONDS)
    return child.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print(
            "usage: python -m kalepool.app.deathsig PARENT_PID COMMAND [ARGS...]", file=sys.stderr
        )
        return 2
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        return _linux(parent, command)
    return _watching(parent, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
