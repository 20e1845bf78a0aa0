"""The pool's reads of the farm: the block a plant may name now, the current block and
the latest ledger (briefly cached: every stream, heartbeat and stats call asks), each
block's entropy and opening time, and whether a block's work window has closed."""

from __future__ import annotations

from kalepool.chain import (
    Block,
    ChainClient,
    ChainError,
    Plantable,
    PlantableReads,
    read_block,
    read_plantable,
)
from kalepool.grpc_server import Unavailable


class ChainView:
    """Farm reads for the pool service; chain failures become UNAVAILABLE."""

    def __init__(self, chain: ChainClient, current_ttl: float = 1.0) -> None:
        self.chain = chain
        self.current_ttl = current_ttl
        self._plantable = PlantableReads(self._read, max_age=current_ttl)
        self._blocks: dict[int, Block] = {}

    @property
    def block_seconds(self) -> int:
        return self.chain.config.block_seconds

    async def plantable(self, *, fresh: bool = False) -> Plantable:
        """The farm's current block and the latest ledger, read at most once per
        `current_ttl` seconds; `fresh` takes a read begun after the call (a plant
        request's block check: a view a second old may still call a due block plantable).
        Concurrent calls share reads (`kalepool.chain.PlantableReads`)."""
        return await self._plantable.get(fresh=fresh)

    async def _read(self) -> Plantable:
        try:
            return await read_plantable(self.chain)
        except ChainError as exc:
            raise Unavailable(f"the farm cannot be read: {exc}") from None

    async def current_index(self) -> int:
        """The farm's current block index (from the briefly cached view)."""
        return (await self.plantable()).current.index

    async def block(self, index: int) -> Block | None:
        """Block(index) (entropy, opening time); kept once read: it never changes."""
        if index in self._blocks:
            return self._blocks[index]
        try:
            block = await read_block(self.chain, index)
        except ChainError as exc:
            raise Unavailable(f"the farm cannot be read: {exc}") from None
        if block is not None:
            if len(self._blocks) > 64:  # only recent blocks are ever asked for again
                self._blocks.pop(min(self._blocks))
            self._blocks[index] = block
        return block

    async def work_window_closed(self, index: int, margin: float) -> bool:
        """Whether the chain's clock (the latest ledger's close time, briefly cached) is
        past block `index`'s work window: its opening time + the block interval -
        `margin`, the time a pooler needs to send its work. A block whose entry is gone
        from the chain is long over."""
        block = await self.block(index)
        if block is None:
            return True
        now = (await self.plantable()).close_time
        return now >= block.timestamp + self.block_seconds - margin
