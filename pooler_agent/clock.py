"""The chain's clock as the agent estimates it between ledgers.

Block opening times, work deadlines and transaction time bounds are all ledger close
times, and a chain's clock may run apart from the machine's (a devnet started in the
past, a skewed machine). The estimate is the latest ledger's close time plus the wall
time since that ledger was first seen: the first sighting of a ledger is the closest to
its close, so later sightings of the same ledger do not move the estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ChainClock:
    """Chain time (Unix seconds) from ledger sightings and a monotonic wall clock."""

    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._sequence: int | None = None
        self._offset: float | None = None

    @property
    def synced(self) -> bool:
        """Whether a ledger has been seen (before that, `now` is unknown)."""
        return self._offset is not None

    def observe(self, sequence: int, close_time: int) -> None:
        """Record a sighting of ledger `sequence`, closed at `close_time`."""
        if self._sequence is not None and sequence <= self._sequence:
            return
        self._sequence = sequence
        self._offset = close_time - self._wall()

    def now(self) -> float:
        """The chain's time now, as estimated; RuntimeError before any ledger was seen."""
        if self._offset is None:
            raise RuntimeError("the chain clock has not seen a ledger yet")
        return self._wall() + self._offset

    def seconds_until(self, chain_time: float) -> float:
        """Wall seconds until the chain reaches `chain_time` (negative once past)."""
        return chain_time - self.now()
