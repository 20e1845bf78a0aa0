"""What the operating system says about a process, by its pid, and the signals that
stop ours."""

from __future__ import annotations

import asyncio
import os
import signal


async def wait_for_shutdown() -> None:
    """Wait for Ctrl-C or SIGTERM (how Kubernetes stops a pod)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
