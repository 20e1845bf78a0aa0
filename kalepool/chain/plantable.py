"""Which block can be planted now: the one answer both services act on.

A plant names a block; the contract puts the pail in the current block until that block
is due, and in the next one from then on (`CurrentBlock.plant_target`). Deciding needs
the farm's current block and the chain's clock (the latest ledger's close time), read
together by :func:`read_plantable`. The pool checks a plant request with it, and the
wallet service checks each plant again before signing; :class:`PlantableReads` lets
concurrent checks share one read without ever using a read older than the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kalepool.chain.client import ChainClient
from kalepool.chain.farm_state import CurrentBlock, current_block


@dataclass(frozen=True, slots=True)
class Plantable:
    """The farm's current block and the latest ledger (its sequence and close time)."""

    current: CurrentBlock
    close_time: int
    latest_ledger: int

    @property
    def target(self) -> int:
        """The only block a plant may name now: the current block, or the next one once
        the current is due (see `CurrentBlock.plant_target`)."""
        return self.current.plant_target(self.close_time)


async def read_plantable(client: ChainClient) -> Plantable:
    """The farm's current block and the chain's clock, read now."""
    current = await current_block(client)
    latest = await client.latest_ledger()
    return Plantable(current, latest.close_time, latest.sequence)


class PlantableReads:
    """`read_plantable` shared by concurrent callers, never older than the call.

    A fresh `get` returns a read that began after it was called: a call that finds a read
    under way that began earlier waits for it and shares the next one with every other
    call that came meanwhile, so checks that come together cost one or two reads instead
    of one each. A call that is not fresh may also take the last read while it is
    younger than `max_age` seconds. `read` is what reads (`PlantableReads.of(client)`:
    `read_plantable`); its errors reach every call that shares it.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[Plantable]],
        *,
        max_age: float = 0.0,
    ) -> None:
        self._read = read
        self.max_age = max_age
        self._flight: asyncio.Task[Plantable] | None = None
        self._began: float | None = None  # when the read in flight began; None: not yet
        self._last: tuple[float, Plantable] | None = None  # (when it began, what it read)

    @classmethod
    def of(cls, client: ChainClient, *, max_age: float = 0.0) -> PlantableReads:
        """Reads of `client`'s farm."""
        return cls(lambda: read_plantable(client), max_age=max_age)

    async def get(self, *, fresh: bool = False) -> Plantable:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        if not fresh and self._last is not None and asked - self._last[0] < self.max_age:
            return self._last[1]
        while True:
            flight = self._flight
            if flight is None:
                flight = self._flight = loop.create_task(self._run())
                # Its error is each caller's to see; retrieved here too in case none waits.
                flight.add_done_callback(lambda t: t.cancelled() or t.exception())
                self._began = None
            if self._began is None or self._began >= asked:
                # Not begun yet, or begun since this call: as fresh as a read of its own.
                return await asyncio.shield(flight)
            # Begun before this call: wait it out (whatever it ends in), share the next.
            await asyncio.wait([flight])

    async def _run(self) -> Plantable:
        began = self._began = asyncio.get_running_loop().time()
        try:
            got = await self._read()
        finally:
            self._flight = None
        self._last = (began, got)
        return got
