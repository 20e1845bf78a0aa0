"""The pool's reads of the farm: the block a plant may name now, the current block
(briefly cached: every stream asks), and each block's entropy and opening time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kalepool.chain import Block, ChainClient, ChainError, CurrentBlock, current_block, read_block
from kalepool.grpc_server import Unavailable


@dataclass(frozen=True, slots=True)
class Plantable:
    """The farm's current block and the close time of the latest ledger."""

    current: CurrentBlock
    close_time: int

    @property
    def target(self) -> int:
        """The only block a plant may name now (the chain client's rule, shared with the
        wallet service): the current block, or the next one once the current is due."""
        return self.current.plant_target(self.close_time)


class ChainView:
    """Farm reads for the pool service; chain failures become UNAVAILABLE."""

    def __init__(self, chain: ChainClient, current_ttl: float = 1.0) -> None:
        self.chain = chain
        self.current_ttl = current_ttl
        self._current: tuple[float, int] | None = None
        self._blocks: dict[int, Block] = {}

    @property
    def block_seconds(self) -> int:
        return self.chain.config.block_seconds

    async def plantable(self) -> Plantable:
        try:
            current = await current_block(self.chain)
            latest = await self.chain.latest_ledger()
        except ChainError as exc:
            raise Unavailable(f"the farm cannot be read: {exc}") from None
        self._remember(current.index)
        return Plantable(current, latest.close_time)

    def _remember(self, index: int) -> None:
        self._current = (asyncio.get_running_loop().time(), index)

    async def current_index(self) -> int:
        """The farm's current block index, read at most once per `current_ttl` seconds."""
        now = asyncio.get_running_loop().time()
        if self._current is not None and now - self._current[0] < self.current_ttl:
            return self._current[1]
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
