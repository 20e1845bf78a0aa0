"""Waiting in tests: on a condition the code under test makes true, never on time.

A test that sleeps "long enough" passes when the behaviour it waits for never happens;
`until` waits for the evidence itself and fails loudly, naming what it waited for, once
the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    seconds: float = 15.0,
    *,
    what: str = "the condition",
    poll: float = 0.02,
) -> None:
    """Return once `check()` (plain or awaitable) is true; AssertionError after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        await asyncio.sleep(poll)
