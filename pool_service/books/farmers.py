"""Farmers: their custodial account, payout address, stake share, funding and status
(`farmers`; the balance is derived from the ledger by trigger)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.db.reads import Pool, fetch_all, fetch_one
from pool_service.books.enums import FarmerState, FarmerStatus


@dataclass(frozen=True)
class FarmerRow:
    id: UUID
    pooler_id: UUID
    custodial_public_key: str
    payout_address: str
    stake_bps: int
    current_balance: int
    is_funded: bool
    status: FarmerStatus
    created_at: dt.datetime
    funded_at: dt.datetime | None = None  # when is_funded turned true (0013's trigger)
    left_at: dt.datetime | None = None  # when the status left 'active'


FARMER_COLUMNS = (
    "id, pooler_id, custodial_public_key, payout_address, stake_bps, current_balance,"
    " is_funded, status::text, created_at, funded_at, left_at"
)
_FARMER_COLUMNS_OF_F = ", ".join("f." + c.strip() for c in FARMER_COLUMNS.split(","))

# The farmer states of the API as conditions on (status, is_funded) of `farmers f`.
FARMER_STATE_SQL = {
    FarmerState.PENDING_FUNDING: "f.status = 'active' AND NOT f.is_funded",
    FarmerState.ACTIVE: "f.status = 'active' AND f.is_funded",
    FarmerState.LEAVING: "f.status = 'leaving'",
    FarmerState.DEPARTED: "f.status = 'departed'",
}


class FarmerStore:
    """Queries of farmers."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def insert_farmer(
        self,
        farmer_id: UUID,
        pooler_id: UUID,
        custodial_public_key: str,
        payout_address: str,
        stake_bps: int,
    ) -> tuple[FarmerRow, bool]:
        """Insert the farmer unless its id exists; (the farmer with that id, whether new)."""
        row = await fetch_one(
            self.pool,
            FarmerRow,
            "INSERT INTO farmers (id, pooler_id, custodial_public_key, payout_address,"
            " stake_bps) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
            f" RETURNING {FARMER_COLUMNS}",
            (farmer_id, pooler_id, custodial_public_key, payout_address, stake_bps),
        )
        if row is not None:
            return row, True
        existing = await self.farmer(farmer_id)
        assert existing is not None  # the conflict was on this id
        return existing, False

    async def farmer(self, farmer_id: UUID) -> FarmerRow | None:
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"SELECT {FARMER_COLUMNS} FROM farmers WHERE id = %s",
            (farmer_id,),
        )

    async def farmer_by_address(self, address: str) -> FarmerRow | None:
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"SELECT {FARMER_COLUMNS} FROM farmers WHERE custodial_public_key = %s",
            (address,),
        )

    @staticmethod
    async def by_addresses(
        conn: AsyncConnection[Any], addresses: list[str]
    ) -> dict[str, FarmerRow]:
        """The pool's farmers among these custodial accounts, by account (inside the
        caller's transaction)."""
        rows = await fetch_all(
            conn,
            FarmerRow,
            f"SELECT {FARMER_COLUMNS} FROM farmers WHERE custodial_public_key = ANY(%s)",
            (addresses,),
        )
        return {r.custodial_public_key: r for r in rows}

    async def list_farmers(
        self,
        pooler_id: UUID | None,
        state: FarmerState | None,
        after: tuple[str, str] | None,
        limit: int,
        *,
        payout_address: str | None = None,
    ) -> list[FarmerRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if pooler_id is not None:
            where.append("f.pooler_id = %s")
            params.append(pooler_id)
        if payout_address is not None:
            where.append("f.payout_address = %s")
            params.append(payout_address)
        if state is not None:
            where.append(FARMER_STATE_SQL[state])
        if after is not None:
            where.append("(f.created_at, f.id) > (%s::timestamptz, %s::uuid)")
            params.extend(after)
        params.append(limit)
        return await fetch_all(
            self.pool,
            FarmerRow,
            f"SELECT {_FARMER_COLUMNS_OF_F} FROM farmers f WHERE {' AND '.join(where)}"
            " ORDER BY f.created_at, f.id LIMIT %s",
            params,
        )

    async def mark_funded(self, farmer_id: UUID) -> FarmerRow | None:
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"UPDATE farmers SET is_funded = true WHERE id = %s RETURNING {FARMER_COLUMNS}",
            (farmer_id,),
        )

    async def set_payout_address(self, farmer_id: UUID, address: str) -> FarmerRow | None:
        """Record the payout address the wallet service changed to (it decides; the pool
        keeps its copy for its payouts and views)."""
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"UPDATE farmers SET payout_address = %s WHERE id = %s RETURNING {FARMER_COLUMNS}",
            (address, farmer_id),
        )

    async def set_status(
        self, farmer_id: UUID, status: FarmerStatus, only_from: FarmerStatus
    ) -> FarmerRow | None:
        """Move the farmer to `status` if it is `only_from` now; None if it was not."""
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"UPDATE farmers f SET status = %s::farmer_status WHERE id = %s"
            f" AND status = %s::farmer_status RETURNING {FARMER_COLUMNS}",
            (status, farmer_id, only_from),
        )

    async def plantable_farmers(self, pooler_id: UUID, limit: int) -> list[FarmerRow]:
        """The pooler's active, funded farmers, oldest first."""
        return await fetch_all(
            self.pool,
            FarmerRow,
            f"SELECT {FARMER_COLUMNS} FROM farmers"
            " WHERE pooler_id = %s AND status = 'active' AND is_funded"
            " ORDER BY created_at, id LIMIT %s",
            (pooler_id, limit),
        )
