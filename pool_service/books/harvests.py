"""Harvests: the worked pails still to harvest and every harvest attempt (`harvests`;
the ledger credit of a success follows by trigger)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value, fetch_values
from pool_service.books.deposits import FOLLOWER_CURSOR
from pool_service.books.enums import EventStatus


@dataclass(frozen=True)
class HarvestRow:
    id: int
    block_index: int
    farmer_id: UUID
    pooler_id: UUID
    custodial_public_key: str
    reward_amount: int | None
    stake_amount: int | None
    tx_hash: str | None
    ledger: int | None
    status: EventStatus
    fault: Fault
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class Pail:
    """A worked pail of a finished block: what a harvest needs."""

    farmer_id: UUID
    pooler_id: UUID
    block_index: int
    custodial_public_key: str
    stake_amount: int


HARVEST_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, reward_amount, stake_amount,"
    " tx_hash, ledger, status::text, fault::text, error_code, error_message, created_at"
)


class HarvestStore:
    """Queries of harvests."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def pails(
        self,
        below_block: int,
        pooler_id: UUID | None = None,
        block_index: int | None = None,
        farmer_ids: list[UUID] | None = None,
        limit: int = 200,
    ) -> list[Pail]:
        """Successfully worked pails of blocks below `below_block` with no harvest
        recorded as succeeded (or failed for good: a missing pail is not retried)."""
        where = ["w.status = 'success'", "w.block_index < %s"]
        params: list[Any] = [below_block]
        if pooler_id is not None:
            where.append("w.pooler_id = %s")
            params.append(pooler_id)
        if block_index is not None:
            where.append("w.block_index = %s")
            params.append(block_index)
        if farmer_ids:
            where.append("w.farmer_id = ANY(%s)")
            params.append(farmer_ids)
        params.append(limit)
        return await fetch_all(
            self.pool,
            Pail,
            "SELECT w.farmer_id, w.pooler_id, w.block_index, w.custodial_public_key,"
            " p.stake_amount FROM works w JOIN plantings p ON p.farmer_id = w.farmer_id"
            " AND p.block_index = w.block_index AND p.status = 'success'"
            f" WHERE {' AND '.join(where)} AND NOT EXISTS (SELECT 1 FROM harvests h"
            " WHERE h.farmer_id = w.farmer_id AND h.block_index = w.block_index"
            " AND (h.status = 'success' OR h.error_code = 'PAIL_MISSING'))"
            " ORDER BY w.block_index, w.id LIMIT %s",
            params,
        )

    async def follower_ledger(self) -> int | None:
        """The last ledger the chain follower has read through (None before it started):
        a harvest made by anyone until then is in the books."""
        return await fetch_value(
            self.pool, int, "SELECT ledger FROM chain_cursors WHERE name = %s", (FOLLOWER_CURSOR,)
        )

    async def harvests(
        self, pooler_id: UUID, block_index: int, farmer_ids: list[UUID] | None
    ) -> list[HarvestRow]:
        return await fetch_all(
            self.pool,
            HarvestRow,
            f"SELECT {HARVEST_COLUMNS} FROM harvests WHERE pooler_id = %s"
            " AND block_index = %s AND (%s::uuid[] IS NULL OR farmer_id = ANY(%s::uuid[]))"
            " ORDER BY id",
            (pooler_id, block_index, farmer_ids or None, farmer_ids or None),
        )

    @staticmethod
    async def own_harvest(conn: AsyncConnection[Any], farmer_id: UUID, tx_hash: str) -> bool:
        """Whether this is the pool's own recorded harvest of the farmer: a transaction the
        wallet signed (recorded from its answer, not observed on chain), one `harvest`
        call, so one pail and one mint."""
        found = await fetch_value(
            conn,
            int,
            "SELECT 1 FROM harvests WHERE farmer_id = %s AND tx_hash = %s"
            " AND status = 'success' AND NOT observed_on_chain",
            (farmer_id, tx_hash),
        )
        return found is not None

    @staticmethod
    async def harvested_by(conn: AsyncConnection[Any], farmer_id: UUID, tx_hash: str) -> set[int]:
        """The blocks of the farmer whose successful harvest is this transaction."""
        blocks = await fetch_values(
            conn,
            int,
            "SELECT block_index FROM harvests WHERE farmer_id = %s AND tx_hash = %s"
            " AND status = 'success'",
            (farmer_id, tx_hash),
        )
        return set(blocks)

    async def record(
        self,
        pail: Pail,
        *,
        status: EventStatus,
        reward: int | None = None,
        tx_hash: str | None = None,
        ledger: int | None = None,
        fault: Fault = Fault.NONE,
        error_code: str | None = None,
        error_message: str | None = None,
        observed_on_chain: bool = False,
    ) -> HarvestRow | None:
        """Record one harvest attempt; None when its success (or this failed transaction)
        is already recorded. The ledger credit of a success follows by trigger.
        `observed_on_chain`: the chain follower records it from the chain."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"kalepool.harvest:{pail.farmer_id}:{pail.block_index}",),
            )
            recorded = await fetch_value(
                conn,
                int,
                "SELECT 1 FROM harvests WHERE farmer_id = %s AND block_index = %s"
                " AND (status = 'success' OR (tx_hash IS NOT NULL AND tx_hash = %s))",
                (pail.farmer_id, pail.block_index, tx_hash),
            )
            if recorded is not None:
                return None
            return await fetch_one(
                conn,
                HarvestRow,
                "INSERT INTO harvests (block_index, farmer_id, pooler_id, reward_amount,"
                " stake_amount, tx_hash, ledger, status, fault, error_code, error_message,"
                " observed_on_chain) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {HARVEST_COLUMNS}",
                (
                    pail.block_index,
                    pail.farmer_id,
                    pail.pooler_id,
                    reward,
                    pail.stake_amount if status == EventStatus.SUCCESS else None,
                    tx_hash,
                    ledger,
                    status,
                    fault,
                    error_code,
                    error_message,
                    observed_on_chain,
                ),
            )
