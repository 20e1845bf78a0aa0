"""Rate limits of the web API: token buckets in this process's memory.

The pool's and wallet's limits live in the database (`kalepool.limits`), shared by
replicas; the web page may not reach the database, so each web process counts on its
own (N replicas admit N times the rate; docs/security.md). A bucket holds at most
`per_minute` tokens and refills at `per_minute` a minute. Only the `max_keys` most
recently used keys are kept, so a flood of addresses cannot grow memory without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class Buckets:
    """Token buckets keyed by who is limited (an IP, a payout address)."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> bool:
        """Take a token from `key`'s bucket: whether there was one."""
        now = self.clock()
        tokens, since = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - since) * self.per_minute / 60.0)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
