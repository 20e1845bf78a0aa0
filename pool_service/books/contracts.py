"""Acknowledgements of the farm contract's code (`contract_acks`, append-only): the
newest is the code an operator has reviewed (or the code the pool first saw)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from kalepool.db.reads import Pool, fetch_one

ACK_COLUMNS = "id, wasm_hash, source, acknowledged_by, acknowledged_at"

FIRST_SEEN = "first_seen"
OPERATOR = "operator"
# Who a first sighting is recorded as acknowledged by.
POOL = "pool"


@dataclass(frozen=True)
class ContractAckRow:
    id: int
    wasm_hash: str  # 64 lowercase hex digits
    source: str  # FIRST_SEEN or OPERATOR
    acknowledged_by: str
    acknowledged_at: dt.datetime


class ContractAckStore:
    """Queries of `contract_acks`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def latest(self) -> ContractAckRow | None:
        """The acknowledged code: the newest acknowledgement (None: none yet)."""
        return await fetch_one(
            self.pool,
            ContractAckRow,
            f"SELECT {ACK_COLUMNS} FROM contract_acks ORDER BY id DESC LIMIT 1",
        )

    async def first_seen(self, wasm_hash: str) -> ContractAckRow | None:
        """Record `wasm_hash` as acknowledged when nothing is yet (the first sighting);
        the acknowledged code afterwards. Replicas racing on an empty table record one
        sighting (the partial unique index); a table that has a row is left alone."""
        await fetch_one(
            self.pool,
            ContractAckRow,
            "INSERT INTO contract_acks (wasm_hash, source, acknowledged_by)"
            " SELECT %s, %s, %s WHERE NOT EXISTS (SELECT 1 FROM contract_acks)"
            f" ON CONFLICT DO NOTHING RETURNING {ACK_COLUMNS}",
            (wasm_hash, FIRST_SEEN, POOL),
        )
        return await self.latest()

    async def acknowledge(self, wasm_hash: str, by: str) -> ContractAckRow:
        """Record an operator's acknowledgement of `wasm_hash`."""
        row = await fetch_one(
            self.pool,
            ContractAckRow,
            "INSERT INTO contract_acks (wasm_hash, source, acknowledged_by)"
            f" VALUES (%s, %s, %s) RETURNING {ACK_COLUMNS}",
            (wasm_hash, OPERATOR, by),
        )
        assert row is not None
        return row
