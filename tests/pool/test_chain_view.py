"""The pool's view of the farm (unit): the current block and latest ledger are read at
most once per `current_ttl` (every heartbeat, stats call and stream asks), except when a
caller needs them fresh (a plant request's block check); and whether a block's work
window has closed, on the chain's clock."""

from __future__ import annotations

from typing import cast

from kalepool.chain import Block, ChainClient, CurrentBlock, Plantable
from pool_service.chain_view import ChainView

OPENED = 1_000_000
BLOCK_SECONDS = 300


def _block(index: int) -> Block:
    return Block(
        index=index,
        timestamp=OPENED,
        min_gap=0,
        min_stake=0,
        min_zeros=0,
        max_gap=0,
        max_stake=0,
        max_zeros=0,
        entropy=b"\0" * 32,
        staked_total=0,
        normalized_total=0,
    )


class _Counting(ChainView):
    """A view whose chain reads are counted (and whose chain's clock is set by hand)."""

    def __init__(self, ttl: float) -> None:
        config = type("C", (), {"block_seconds": BLOCK_SECONDS})()
        super().__init__(cast(ChainClient, type("Chain", (), {"config": config})()), ttl)
        self.reads = 0
        self.now = OPENED
        self.blocks = {7: _block(7)}

    async def _read(self) -> Plantable:
        self.reads += 1
        current = CurrentBlock(7, OPENED, None, OPENED + BLOCK_SECONDS, False, _block(7), 99)
        return Plantable(current, self.now, 99 + self.reads)

    async def block(self, index: int) -> Block | None:
        return self.blocks.get(index)


async def test_the_farm_is_read_once_per_ttl_unless_asked_fresh() -> None:
    view = _Counting(ttl=3600)
    first = await view.plantable()
    for _ in range(10):  # heartbeats, stats, streams
        assert await view.plantable() is first
        assert await view.current_index() == 7
    assert view.reads == 1
    fresh = await view.plantable(fresh=True)  # a plant request's block check
    assert view.reads == 2 and fresh.latest_ledger == 101
    assert await view.plantable() is fresh  # and the fresh read is the new cache
    expiring = _Counting(ttl=0)
    await expiring.plantable()
    await expiring.plantable()
    assert expiring.reads == 2


async def test_the_work_window_closes_a_submit_margin_before_the_next_block() -> None:
    view = _Counting(ttl=0)
    due = OPENED + BLOCK_SECONDS
    for now, closed in [(OPENED, False), (due - 11, False), (due - 10, True), (due + 5, True)]:
        view.now = now
        assert await view.work_window_closed(7, margin=10) is closed, now
    view.now = OPENED
    assert await view.work_window_closed(3, margin=10)  # Block(3) gone: long over
