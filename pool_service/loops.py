"""The pool's background loops: one pass of some work, again and again, each pass on its
own (a failed pass is logged and the next one tries again)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("pool_service")


async def every(seconds: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `step` now and then every `seconds` after each pass ends, until cancelled."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive a bad pass; the next one retries
            log.exception("%s pass failed", what)
        await asyncio.sleep(seconds)
