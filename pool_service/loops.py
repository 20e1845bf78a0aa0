"""The pool's background loops: one pass of some work, again and again, each pass on its
own (a failed pass is logged and the next one tries again)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("pool_service")


def _stopping() -> bool:
    """Whether this task was asked to stop (even if a library swallowed the request)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def every(seconds: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `step` now and then every `seconds` after each pass ends, until cancelled."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive a bad pass; the next one retries
            if not _stopping():
                log.exception("%s pass failed", what)
        # A cancellation that a library turned into an error or an ordinary return
        # (it happens inside database and HTTP clients) still stops the loop.
        if _stopping():
            raise asyncio.CancelledError
        await asyncio.sleep(seconds)
