"""Plantings: plant requests, their recorded outcomes, the assignment feed's cursors and
a (pooler, block)'s plant phase (`plant_requests`, `plantings`, and the plant stamps of
`block_operations`)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from pool_service.books.enums import EventStatus


@dataclass(frozen=True)
class PlantingRow:
    id: int
    block_index: int
    farmer_id: UUID
    pooler_id: UUID
    custodial_public_key: str
    stake_amount: int
    tx_hash: str | None
    ledger: int | None
    status: EventStatus
    fault: Fault
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime
    # Recorded when the chain's clock was past its block's work window (the pool's fault
    # if its work is missing or late).
    recorded_late: bool = False


@dataclass(frozen=True)
class PlantRequestRow:
    """A plant the pool asked the wallet for (`plant_requests`), with the farmer's account."""

    id: int
    idempotency_key: str
    farmer_id: UUID
    pooler_id: UUID
    block_index: int
    stake_amount: int
    attempts: int
    settled_at: dt.datetime | None
    planting_id: int | None
    custodial_public_key: str
    # How old its current attempt was when read (the database's clock), and when it was
    # read (this process's monotonic clock): together, its age at any later moment.
    age_seconds: float = 0.0
    read_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        """Seconds since the request's current attempt was opened."""
        return self.age_seconds + time.monotonic() - self.read_at


@dataclass(frozen=True, kw_only=True)
class NewPlanting:
    """One plant outcome to record."""

    farmer_id: UUID
    block_index: int
    stake: int
    status: EventStatus
    tx_hash: str | None = None
    ledger: int | None = None
    fault: Fault = Fault.NONE
    error_code: str | None = None
    error_message: str | None = None
    # Success recorded after its block's work window (decided by the planter).
    recorded_late: bool = False


@dataclass(frozen=True)
class _Settlement:
    settled_at: dt.datetime | None
    planting_id: int | None


PLANTING_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, stake_amount, tx_hash,"
    " ledger, status::text, fault::text, error_code, error_message, created_at, recorded_late"
)
PLANT_REQUEST_COLUMNS = (
    "r.id, r.idempotency_key, r.farmer_id, r.pooler_id, r.block_index, r.stake_amount,"
    " r.attempts, r.settled_at, r.planting_id, f.custodial_public_key,"
    " extract(epoch FROM now() - r.opened_at)::float8 AS age_seconds"
)


def _feed_lock_key(pooler_id: UUID) -> str:
    return f"kalepool.feed:{pooler_id}"


class PlantingStore:
    """Queries of plant requests, plantings and the assignment feed."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- a (pooler, block)'s plant phase ---------------------------------------------------

    async def claim_block(self, pooler_id: UUID, block_index: int) -> None:
        """The (pooler, block) record of a plant request; the first request stamps it."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO block_operations (pooler_id, block_index, plant_requested_at)"
                " VALUES (%s, %s, now()) ON CONFLICT (pooler_id, block_index) DO UPDATE"
                " SET plant_requested_at = coalesce(block_operations.plant_requested_at, now())",
                (pooler_id, block_index),
            )

    async def plant_settled(self, pooler_id: UUID, block_index: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE block_operations SET plant_completed_at = now()"
                " WHERE pooler_id = %s AND block_index = %s",
                (pooler_id, block_index),
            )

    async def block_known(self, pooler_id: UUID, block_index: int) -> bool:
        found = await fetch_value(
            self.pool,
            int,
            "SELECT 1 FROM block_operations WHERE pooler_id = %s AND block_index = %s",
            (pooler_id, block_index),
        )
        return found is not None

    # --- plantings -------------------------------------------------------------------------

    async def plantings(self, pooler_id: UUID, block_index: int) -> list[PlantingRow]:
        """Every plant attempt of the pooler's farmers in the block, oldest first."""
        return await fetch_all(
            self.pool,
            PlantingRow,
            f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE pooler_id = %s"
            " AND block_index = %s ORDER BY id",
            (pooler_id, block_index),
        )

    async def planting(self, planting_id: int) -> PlantingRow | None:
        return await fetch_one(
            self.pool,
            PlantingRow,
            f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE id = %s",
            (planting_id,),
        )

    @staticmethod
    async def success_of(
        conn: AsyncConnection[Any], farmer_id: UUID, block_index: int
    ) -> PlantingRow | None:
        """The farmer's successful planting in the block, if recorded (inside the caller's
        transaction)."""
        return await fetch_one(
            conn,
            PlantingRow,
            f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
            " AND block_index = %s AND status = 'success'",
            (farmer_id, block_index),
        )

    # --- plant requests --------------------------------------------------------------------

    async def open_plant_requests(
        self, pooler_id: UUID, block_index: int, wanted: Sequence[tuple[UUID, str, int]]
    ) -> list[PlantRequestRow]:
        """The plant requests of farmers of one (pooler, block), each (farmer_id, key,
        stake), written before the wallet is called: three statements in one transaction
        for the whole batch. Returned in no particular order.

        The first request stores its stake; every later one (a repeat, another replica,
        the reconciler) drives the same key with the same stored stake, so the wallet
        sees the same parameters and never signs a second plant. A request settled by a
        failure is opened again for a new attempt (`attempts` + 1, its age counted from
        now); one settled by a success, or still unsettled, is returned as it is.
        """
        if not wanted:
            return []
        farmer_ids = [w[0] for w in wanted]
        keys = [w[1] for w in wanted]
        stakes = [w[2] for w in wanted]
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO plant_requests (idempotency_key, farmer_id, pooler_id, block_index,"
                " stake_amount) SELECT k, f, %s, %s, s"
                " FROM unnest(%s::text[], %s::uuid[], %s::bigint[]) AS w(k, f, s)"
                " ORDER BY k ON CONFLICT DO NOTHING",
                (pooler_id, block_index, keys, farmer_ids, stakes),
            )
            await conn.execute(
                "UPDATE plant_requests r SET settled_at = NULL, planting_id = NULL,"
                " attempts = r.attempts + 1, opened_at = now() FROM plantings p"
                " WHERE r.idempotency_key = ANY(%s) AND p.id = r.planting_id"
                " AND p.status = 'failed'",
                (keys,),
            )
            return await fetch_all(
                conn,
                PlantRequestRow,
                f"SELECT {PLANT_REQUEST_COLUMNS} FROM plant_requests r"
                " JOIN farmers f ON f.id = r.farmer_id WHERE r.idempotency_key = ANY(%s)",
                (keys,),
            )

    async def take_unsettled_plant_requests(
        self, limit: int, deadline: float, longest_wait: float, busy: Sequence[int] = ()
    ) -> list[PlantRequestRow]:
        """Unsettled plant requests due for the reconciler, oldest-attempted first, each
        counted as an attempt (`attempts` + 1, `updated_at` now) in the same statement:
        another replica's pass then leaves them alone until they are due again.

        Due: the current attempt is older than `deadline` (the plant deadline: a call
        asking about it now has given up), and the last attempt is older than
        `deadline` * 2^(attempts - 1), at most `longest_wait` seconds, so a request that
        stays pending is asked less and less often and never starves the others. Rows
        being recorded right now are skipped, and so are `busy` (asked about by this
        process)."""
        return await fetch_all(
            self.pool,
            PlantRequestRow,
            "WITH due AS (SELECT id, updated_at AS last FROM plant_requests"
            "  WHERE settled_at IS NULL"
            "  AND opened_at <= now() - make_interval(secs => %(deadline)s)"
            "  AND updated_at <= now() - make_interval(secs => least(%(longest)s,"
            "   %(deadline)s * power(2, least(attempts - 1, 30))))"
            "  AND NOT (id = ANY(%(busy)s::bigint[]))"
            "  ORDER BY updated_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " taken AS (UPDATE plant_requests r SET attempts = r.attempts + 1 FROM due"
            "  WHERE r.id = due.id RETURNING r.*, due.last)"
            f" SELECT {PLANT_REQUEST_COLUMNS} FROM taken r"
            " JOIN farmers f ON f.id = r.farmer_id ORDER BY r.last, r.id",
            {
                "deadline": deadline,
                "longest": longest_wait,
                "busy": list(busy),
                "limit": limit,
            },
        )

    @staticmethod
    async def _lock_request(
        conn: AsyncConnection[Any], request: PlantRequestRow
    ) -> tuple[bool, PlantingRow | None]:
        """Within a transaction: the pooler's feed lock, then the request's row lock;
        (whether the request is settled, the planting that settled it)."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (_feed_lock_key(request.pooler_id),),
        )
        found = await fetch_one(
            conn,
            _Settlement,
            "SELECT settled_at, planting_id FROM plant_requests WHERE id = %s FOR UPDATE",
            (request.id,),
        )
        assert found is not None
        if found.settled_at is None:
            return False, None
        by = await fetch_one(
            conn,
            PlantingRow,
            f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE id = %s",
            (found.planting_id,),
        )
        return True, by

    async def record_planting(
        self, request: PlantRequestRow, p: NewPlanting
    ) -> tuple[PlantingRow | None, bool]:
        """Record one plant outcome and settle its request, in one database transaction:
        (the planting that settles the request, whether it is a new row).

        A request already settled (by another replica, or a racing call) keeps its record
        and nothing is written. An outcome already recorded (the same success, or the same
        failed transaction) is not recorded again: the request is settled by that row.
        Inserted under the pooler's advisory lock held until commit, so the ids of one
        pooler's plantings (the assignment cursors) become visible in increasing order: a
        stream that has sent cursor N can never later find a committed row below N.
        """
        async with self.pool.connection() as conn, conn.transaction():
            settled, by = await self._lock_request(conn, request)
            if settled:
                return by, False
            if p.status == EventStatus.SUCCESS:
                row = await fetch_one(
                    conn,
                    PlantingRow,
                    f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                    " AND block_index = %s AND status = 'success'",
                    (p.farmer_id, p.block_index),
                )
            else:
                # The wallet answers a settled key with the same failed transaction each
                # time: one row for it is the record; a new attempt (new hash) is another.
                row = await fetch_one(
                    conn,
                    PlantingRow,
                    f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                    " AND block_index = %s AND status = 'failed' AND tx_hash = %s",
                    (p.farmer_id, p.block_index, p.tx_hash),
                )
            new = row is None
            if row is None:
                row = await fetch_one(
                    conn,
                    PlantingRow,
                    "INSERT INTO plantings (block_index, farmer_id, pooler_id, stake_amount,"
                    " tx_hash, ledger, status, fault, error_code, error_message, recorded_late)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {PLANTING_COLUMNS}",
                    (
                        p.block_index,
                        p.farmer_id,
                        request.pooler_id,
                        p.stake,
                        p.tx_hash,
                        p.ledger,
                        p.status,
                        p.fault,
                        p.error_code,
                        p.error_message,
                        p.recorded_late,
                    ),
                )
                assert row is not None
            await conn.execute(
                "UPDATE plant_requests SET settled_at = now(), planting_id = %s WHERE id = %s",
                (row.id, request.id),
            )
            return row, new

    async def settle_by_success(self, request: PlantRequestRow) -> PlantingRow | None:
        """Settle a request whose plant the chain refused because the farmer already holds
        the pail (an earlier attempt planted it) with that attempt's recorded success in
        the block asked, or the next one; None while that success is not recorded yet."""
        async with self.pool.connection() as conn, conn.transaction():
            settled, by = await self._lock_request(conn, request)
            if settled:
                return by
            row = await fetch_one(
                conn,
                PlantingRow,
                f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                " AND block_index IN (%s, %s + 1) AND status = 'success'"
                " ORDER BY block_index LIMIT 1",
                (request.farmer_id, request.block_index, request.block_index),
            )
            if row is not None:
                await conn.execute(
                    "UPDATE plant_requests SET settled_at = now(), planting_id = %s WHERE id = %s",
                    (row.id, request.id),
                )
            return row

    # --- the assignment feed ---------------------------------------------------------------

    async def last_cursor(self, pooler_id: UUID) -> int:
        """The highest assignment cursor issued to the pooler (0 if none)."""
        last = await fetch_value(
            self.pool,
            int,
            "SELECT coalesce(max(id), 0) FROM plantings"
            " WHERE pooler_id = %s AND status = 'success'",
            (pooler_id,),
        )
        assert last is not None
        return last

    async def assignments_after(
        self, pooler_id: UUID, cursor: int, min_block: int, limit: int = 500
    ) -> list[PlantingRow]:
        """Successful plantings of the pooler after `cursor` in blocks >= min_block."""
        return await fetch_all(
            self.pool,
            PlantingRow,
            f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE pooler_id = %s"
            " AND status = 'success' AND id > %s AND block_index >= %s ORDER BY id LIMIT %s",
            (pooler_id, cursor, min_block, limit),
        )
