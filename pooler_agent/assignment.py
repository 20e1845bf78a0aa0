"""One farmer to mine in one block, as the agent's mining core takes it.

Mirrors `kalepool.v1.Assignment` (proto/kalepool/v1/pooler.proto) as a plain, checked
dataclass, so the work manager and submitter do not depend on the wire format; the
assignment stream converts each message with :meth:`Assignment.from_proto`.
All times are on the chain's clock (Unix seconds of ledger close times).
"""

from __future__ import annotations

from dataclasses import dataclass

from kalepool import protocol, wire
from kalepool.chain.farm_state import check_address
from kalepool.v1 import pooler_pb2


@dataclass(frozen=True, slots=True)
class Assignment:
    """Everything the work hash and the `work` call need for one (farmer, block), nothing secret."""

    farmer_address: str  # G… account (or C… contract): what the hash binds and `work` names
    block_index: int
    entropy: bytes  # the block's 32-byte entropy
    stake_stroops: int
    plant_ledger: int  # the pail's sequence: work must land in a later ledger
    block_opened_at: float  # when the block opened on chain
    work_deadline: float | None = None  # the pool's "submit before this", when it set one
    cursor: int = 0  # position in the pool's feed (0 when not from the feed)
    planting_id: str = ""
    farmer_id: str = ""

    def __post_init__(self) -> None:
        check_address(self.farmer_address)
        if not isinstance(self.entropy, bytes) or len(self.entropy) != 32:
            raise ValueError(f"assignment for {self.farmer_address}: entropy must be 32 bytes")
        if not 0 <= self.block_index <= protocol.U32_MAX:
            raise ValueError(f"assignment for {self.farmer_address}: block index outside u32")
        if not 0 <= self.plant_ledger <= protocol.U32_MAX:
            raise ValueError(f"assignment for {self.farmer_address}: plant ledger outside u32")
        if self.stake_stroops < 0:
            raise ValueError(f"assignment for {self.farmer_address}: negative stake")
        if self.block_opened_at <= 0:
            raise ValueError(f"assignment for {self.farmer_address}: no block opening time")
        if self.work_deadline is not None and self.work_deadline <= self.block_opened_at:
            raise ValueError(
                f"assignment for {self.farmer_address}: work deadline is not after the block opened"
            )

    @property
    def key(self) -> tuple[str, int]:
        """What makes an assignment unique: one work per (farmer, block)."""
        return (self.farmer_address, self.block_index)

    @property
    def farmer_bytes(self) -> bytes:
        """The 32 bytes of the farmer the work hash binds."""
        return protocol.farmer_key(self.farmer_address)

    @classmethod
    def from_proto(cls, message: pooler_pb2.Assignment) -> Assignment:
        """Convert a wire assignment; a malformed one raises ValueError naming the farmer."""
        if not message.HasField("block_opened_at"):
            raise ValueError(
                f"assignment {message.cursor} for {message.farmer_address!r} has no block_opened_at"
            )
        deadline = (
            wire.seconds(message.work_deadline) if message.HasField("work_deadline") else None
        )
        return cls(
            farmer_address=message.farmer_address,
            block_index=message.block_index,
            entropy=bytes(message.entropy),
            stake_stroops=message.stake_stroops,
            plant_ledger=message.plant_ledger,
            block_opened_at=wire.seconds(message.block_opened_at),
            work_deadline=deadline,
            cursor=message.cursor,
            planting_id=message.planting_id,
            farmer_id=message.farmer_id,
        )

    def to_proto(self) -> pooler_pb2.Assignment:
        """The wire form (the pool side and tests build messages with it)."""
        message = pooler_pb2.Assignment(
            cursor=self.cursor,
            planting_id=self.planting_id,
            farmer_id=self.farmer_id,
            farmer_address=self.farmer_address,
            block_index=self.block_index,
            entropy=self.entropy,
            stake_stroops=self.stake_stroops,
            plant_ledger=self.plant_ledger,
        )
        message.block_opened_at.CopyFrom(wire.epoch(self.block_opened_at))
        if self.work_deadline is not None:
            message.work_deadline.CopyFrom(wire.epoch(self.work_deadline))
        return message
