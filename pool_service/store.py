"""The pool service's SQL: poolers, API keys, farmers, plantings, works and the ledger.

Plain SQL over a psycopg 3 async pool in autocommit mode; statements that must hold
together run in an explicit transaction. The database owns the rules (capacity, one
success per (farmer, block), append-only events, derived balances), so the services map
its refusals to statuses instead of re-checking them here.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import class_row

from kalepool.db.reads import Pool, fetch_all, fetch_one


@dataclass
class PoolerRow:
    id: UUID
    name: str
    public_key: str
    max_farmers: int
    current_farmers: int
    is_active: bool
    last_seen_at: dt.datetime | None
    created_at: dt.datetime


@dataclass
class FarmerRow:
    id: UUID
    pooler_id: UUID
    custodial_public_key: str
    payout_address: str
    stake_bps: int
    current_balance: int
    is_funded: bool
    status: str
    created_at: dt.datetime


@dataclass
class PlantingRow:
    id: int
    block_index: int
    farmer_id: UUID
    pooler_id: UUID
    custodial_public_key: str
    stake_amount: int
    tx_hash: str | None
    ledger: int | None
    status: str
    fault: str
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime
    # Recorded when the chain's clock was past its block's work window (the pool's fault
    # if its work is missing or late).
    recorded_late: bool = False


@dataclass
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


@dataclass
class WorkRow:
    id: int
    block_index: int
    farmer_id: UUID
    pooler_id: UUID
    custodial_public_key: str
    nonce: Any  # numeric(20, 0)
    hash: bytes | None
    zeros: int | None
    gap: int | None
    tx_hash: str | None
    ledger: int | None
    status: str
    fault: str
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime
    # Recorded from the pail's worked state, not from a report (nonce, hash, tx unknown).
    observed_on_chain: bool


@dataclass
class LedgerRow:
    id: int
    farmer_id: UUID
    kind: str
    amount: int
    balance_after: int
    block_index: int | None
    tx_hash: str | None
    source_id: str | None
    created_at: dt.datetime


@dataclass
class BalanceTotals:
    staked: int
    rewards: int
    paid_out: int


@dataclass
class NewPlanting:
    """One plant outcome to record."""

    farmer_id: UUID
    block_index: int
    stake: int
    status: str  # success | failed
    tx_hash: str | None
    ledger: int | None
    fault: str
    error_code: str | None
    error_message: str | None
    # Success recorded after its block's work window (decided by the planter).
    recorded_late: bool = False


@dataclass
class NewWork:
    """One work result to record."""

    farmer_id: UUID
    status: str  # success | failed
    nonce: int | None
    hash: bytes | None
    zeros: int | None
    gap: int | None
    tx_hash: str | None
    ledger: int | None
    fault: str
    error_code: str | None
    error_message: str | None
    observed_on_chain: bool = False  # from the pail's state, not from a report


@dataclass
class Heartbeat:
    """The figures of a pooler's heartbeat, as stored (`poolers.heartbeat_*`)."""

    capacity: int
    hashes_per_second: int
    threads: int
    mining_farmers: int
    agent_version: str
    block_index: int


@dataclass
class HeartbeatRow:
    """A pooler's last stored heartbeat (all None before the first)."""

    last_heartbeat_at: dt.datetime | None
    heartbeat_capacity: int | None
    heartbeat_hashes_per_second: int | None
    heartbeat_threads: int | None
    heartbeat_mining_farmers: int | None
    heartbeat_agent_version: str | None
    heartbeat_block_index: int | None


POOLER_COLUMNS = (
    "id, name, public_key, max_farmers, current_farmers, is_active, last_seen_at, created_at"
)
FARMER_COLUMNS = (
    "id, pooler_id, custodial_public_key, payout_address, stake_bps, current_balance,"
    " is_funded, status::text, created_at"
)
PLANTING_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, stake_amount, tx_hash,"
    " ledger, status::text, fault::text, error_code, error_message, created_at, recorded_late"
)
PLANT_REQUEST_COLUMNS = (
    "r.id, r.idempotency_key, r.farmer_id, r.pooler_id, r.block_index, r.stake_amount,"
    " r.attempts, r.settled_at, r.planting_id, f.custodial_public_key,"
    " extract(epoch FROM now() - r.opened_at)::float8 AS age_seconds"
)
WORK_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, nonce, hash, zeros, gap,"
    " tx_hash, ledger, status::text, fault::text, error_code, error_message, created_at,"
    " observed_on_chain"
)

# Farmer statuses of the API as conditions on (status, is_funded).
FARMER_STATUS_SQL = {
    "pending_funding": "f.status = 'active' AND NOT f.is_funded",
    "active": "f.status = 'active' AND f.is_funded",
    "leaving": "f.status = 'leaving'",
    "departed": "f.status = 'departed'",
}


def _feed_lock_key(pooler_id: UUID) -> str:
    return f"kalepool.feed:{pooler_id}"


def works_lock_key(pooler_id: UUID, block_index: int) -> str:
    """The advisory lock under which a (pooler, block)'s works are decided and written."""
    return f"kalepool.works:{pooler_id}:{block_index}"


# The chain follower's row in chain_cursors (pool_service.deposits): how far the KALE
# asset's events have been read, so also how far harvests made by anyone are recorded.
FOLLOWER_CURSOR = "kale-events"


class Store:
    """Queries of the pool service."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- poolers and keys ------------------------------------------------------------------

    async def insert_pooler(
        self, name: str, public_key: str, max_farmers: int, key_hash: bytes, key_prefix: str
    ) -> PoolerRow:
        """A new pooler and its first API key, together or not at all."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=class_row(PoolerRow))
            await cur.execute(
                f"INSERT INTO poolers (name, public_key, max_farmers) VALUES (%s, %s, %s)"
                f" RETURNING {POOLER_COLUMNS}",
                (name, public_key, max_farmers),
            )
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(
                "INSERT INTO pooler_api_keys (pooler_id, key_hash, key_prefix) VALUES (%s, %s, %s)",
                (row.id, key_hash, key_prefix),
            )
            return row

    async def pooler(self, pooler_id: UUID) -> PoolerRow | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PoolerRow))
            await cur.execute(f"SELECT {POOLER_COLUMNS} FROM poolers WHERE id = %s", (pooler_id,))
            return await cur.fetchone()

    async def list_poolers(
        self, active: bool | None, after: tuple[str, str] | None, limit: int
    ) -> list[PoolerRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if active is not None:
            where.append("is_active = %s")
            params.append(active)
        if after is not None:
            where.append("(created_at, id) > (%s::timestamptz, %s::uuid)")
            params.extend(after)
        params.append(limit)
        return await fetch_all(
            self.pool,
            PoolerRow,
            f"SELECT {POOLER_COLUMNS} FROM poolers WHERE {' AND '.join(where)}"
            " ORDER BY created_at, id LIMIT %s",
            params,
        )

    async def update_pooler(
        self, pooler_id: UUID, name: str | None, max_farmers: int | None, active: bool | None
    ) -> PoolerRow | None:
        return await fetch_one(
            self.pool,
            PoolerRow,
            "UPDATE poolers SET name = coalesce(%s, name),"
            " max_farmers = coalesce(%s, max_farmers), is_active = coalesce(%s, is_active)"
            f" WHERE id = %s RETURNING {POOLER_COLUMNS}",
            (name, max_farmers, active, pooler_id),
        )

    async def rotate_key(self, pooler_id: UUID, key_hash: bytes, key_prefix: str) -> bool:
        """Revoke every live key of the pooler and add the new one; False if no such pooler."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM poolers WHERE id = %s FOR UPDATE", (pooler_id,))
            if await cur.fetchone() is None:
                return False
            await conn.execute(
                "UPDATE pooler_api_keys SET revoked_at = now()"
                " WHERE pooler_id = %s AND revoked_at IS NULL",
                (pooler_id,),
            )
            await conn.execute(
                "INSERT INTO pooler_api_keys (pooler_id, key_hash, key_prefix) VALUES (%s, %s, %s)",
                (pooler_id, key_hash, key_prefix),
            )
            return True

    async def pooler_by_key(self, key_hash: bytes) -> PoolerRow | None:
        """The pooler holding this live (unrevoked) key; marks the key and pooler as seen.

        The "seen" writes are skipped within 30 s of the last one, so a busy pooler does
        not turn every call into a write.
        """
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PoolerRow))
            await cur.execute(
                f"SELECT {', '.join('p.' + c.strip() for c in POOLER_COLUMNS.split(','))}"
                " FROM pooler_api_keys k JOIN poolers p ON p.id = k.pooler_id"
                " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
                (key_hash,),
            )
            row = await cur.fetchone()
            if row is not None and (
                row.last_seen_at is None
                or row.last_seen_at < dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
            ):
                await conn.execute(
                    "UPDATE pooler_api_keys SET last_used_at = now() WHERE key_hash = %s",
                    (key_hash,),
                )
                await conn.execute(
                    "UPDATE poolers SET last_seen_at = now() WHERE id = %s", (row.id,)
                )
            return row

    # --- farmers -----------------------------------------------------------------------------

    async def insert_farmer(
        self,
        farmer_id: UUID,
        pooler_id: UUID,
        custodial_public_key: str,
        payout_address: str,
        stake_bps: int,
    ) -> tuple[FarmerRow, bool]:
        """Insert the farmer unless its id exists; (the farmer with that id, whether new)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(FarmerRow))
            await cur.execute(
                "INSERT INTO farmers (id, pooler_id, custodial_public_key, payout_address,"
                " stake_bps) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
                f" RETURNING {FARMER_COLUMNS}",
                (farmer_id, pooler_id, custodial_public_key, payout_address, stake_bps),
            )
            row = await cur.fetchone()
            if row is not None:
                return row, True
        existing = await self.farmer(farmer_id)
        assert existing is not None  # the conflict was on this id
        return existing, False

    async def _one_farmer(self, where: str, value: object) -> FarmerRow | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(FarmerRow))
            await cur.execute(f"SELECT {FARMER_COLUMNS} FROM farmers WHERE {where}", (value,))
            return await cur.fetchone()

    async def farmer(self, farmer_id: UUID) -> FarmerRow | None:
        return await self._one_farmer("id = %s", farmer_id)

    async def farmer_by_address(self, address: str) -> FarmerRow | None:
        return await self._one_farmer("custodial_public_key = %s", address)

    async def list_farmers(
        self,
        pooler_id: UUID | None,
        status: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[FarmerRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if pooler_id is not None:
            where.append("f.pooler_id = %s")
            params.append(pooler_id)
        if status is not None:
            where.append(FARMER_STATUS_SQL[status])
        if after is not None:
            where.append("(f.created_at, f.id) > (%s::timestamptz, %s::uuid)")
            params.extend(after)
        params.append(limit)
        return await fetch_all(
            self.pool,
            FarmerRow,
            f"SELECT {', '.join('f.' + c.strip() for c in FARMER_COLUMNS.split(','))}"
            f" FROM farmers f WHERE {' AND '.join(where)} ORDER BY f.created_at, f.id LIMIT %s",
            params,
        )

    async def mark_funded(self, farmer_id: UUID) -> FarmerRow | None:
        return await fetch_one(
            self.pool,
            FarmerRow,
            f"UPDATE farmers SET is_funded = true WHERE id = %s RETURNING {FARMER_COLUMNS}",
            (farmer_id,),
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

    # --- balance ----------------------------------------------------------------------------

    async def balance_totals(self, farmer_id: UUID) -> BalanceTotals:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT"
                " (SELECT coalesce(sum(p.stake_amount), 0) FROM plantings p"
                "   WHERE p.farmer_id = %(f)s AND p.status = 'success' AND NOT EXISTS ("
                "     SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id"
                "     AND h.block_index = p.block_index AND h.status = 'success')),"
                " (SELECT coalesce(sum(reward_amount), 0) FROM harvests"
                "   WHERE farmer_id = %(f)s AND status = 'success'),"
                " (SELECT coalesce(-sum(amount), 0) FROM balance_ledger"
                "   WHERE farmer_id = %(f)s AND kind IN ('payout', 'payout_reversal'))",
                {"f": farmer_id},
            )
            row = await cur.fetchone()
            assert row is not None
            return BalanceTotals(int(row[0]), int(row[1]), int(row[2]))

    async def ledger(self, farmer_id: UUID, before_id: int | None, limit: int) -> list[LedgerRow]:
        """The farmer's ledger entries, newest first, with the balance after each."""
        return await fetch_all(
            self.pool,
            LedgerRow,
            "SELECT * FROM ("
            " SELECT l.id, l.farmer_id, l.kind::text AS kind, l.amount,"
            "  (sum(l.amount) OVER (ORDER BY l.id))::bigint AS balance_after,"
            "  coalesce(p.block_index, h.block_index, c.block_index) AS block_index,"
            "  coalesce(p.tx_hash, h.tx_hash, l.tx_hash, po.tx_hash, d.tx_hash) AS tx_hash,"
            "  coalesce(l.planting_id::text, l.harvest_id::text, l.compensation_id::text,"
            "           l.transaction_id::text, l.payout_id::text, l.deposit_id::text)"
            "   AS source_id,"
            "  l.created_at"
            " FROM balance_ledger l"
            " LEFT JOIN plantings p ON p.id = l.planting_id"
            " LEFT JOIN harvests h ON h.id = l.harvest_id"
            " LEFT JOIN pooler_compensations c ON c.id = l.compensation_id"
            " LEFT JOIN payouts po ON po.id = l.payout_id"
            " LEFT JOIN deposits d ON d.id = l.deposit_id"
            " WHERE l.farmer_id = %s) entries"
            " WHERE %s::bigint IS NULL OR id < %s::bigint ORDER BY id DESC LIMIT %s",
            (farmer_id, before_id, before_id, limit),
        )

    # --- plantings and the assignment feed --------------------------------------------------

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
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM block_operations WHERE pooler_id = %s AND block_index = %s",
                (pooler_id, block_index),
            )
            return await cur.fetchone() is not None

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

    async def open_plant_request(
        self, pooler_id: UUID, farmer_id: UUID, block_index: int, key: str, stake: int
    ) -> PlantRequestRow:
        """The farmer's plant request for the block, written before the wallet is called.

        The first request stores its stake; every later one (a repeat, another replica,
        the reconciler) drives the same key with the same stored stake, so the wallet
        sees the same parameters and never signs a second plant. A request settled by a
        failure is opened again for a new attempt (`attempts` + 1, its age counted from
        now); one settled by a success, or still unsettled, is returned as it is.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO plant_requests (idempotency_key, farmer_id, pooler_id, block_index,"
                " stake_amount) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (key, farmer_id, pooler_id, block_index, stake),
            )
            await conn.execute(
                "UPDATE plant_requests r SET settled_at = NULL, planting_id = NULL,"
                " attempts = r.attempts + 1, opened_at = now() FROM plantings p"
                " WHERE r.idempotency_key = %s AND p.id = r.planting_id AND p.status = 'failed'",
                (key,),
            )
            cur = conn.cursor(row_factory=class_row(PlantRequestRow))
            await cur.execute(
                f"SELECT {PLANT_REQUEST_COLUMNS} FROM plant_requests r"
                " JOIN farmers f ON f.id = r.farmer_id WHERE r.idempotency_key = %s",
                (key,),
            )
            row = await cur.fetchone()
            assert row is not None  # inserted, or there already
            return row

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
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(PlantRequestRow))
            await cur.execute(
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
            return await cur.fetchall()

    async def _lock_request(
        self, conn: AsyncConnection[Any], request: PlantRequestRow
    ) -> tuple[bool, PlantingRow | None]:
        """Within a transaction: the pooler's feed lock, then the request's row lock;
        (whether the request is settled, the planting that settled it)."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (_feed_lock_key(request.pooler_id),),
        )
        cur = await conn.execute(
            "SELECT settled_at, planting_id FROM plant_requests WHERE id = %s FOR UPDATE",
            (request.id,),
        )
        found = await cur.fetchone()
        assert found is not None
        if found[0] is None:
            return False, None
        rows = conn.cursor(row_factory=class_row(PlantingRow))
        await rows.execute(f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE id = %s", (found[1],))
        return True, await rows.fetchone()

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
            cur = conn.cursor(row_factory=class_row(PlantingRow))
            if p.status == "success":
                await cur.execute(
                    f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                    " AND block_index = %s AND status = 'success'",
                    (p.farmer_id, p.block_index),
                )
            else:
                # The wallet answers a settled key with the same failed transaction each
                # time: one row for it is the record; a new attempt (new hash) is another.
                await cur.execute(
                    f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                    " AND block_index = %s AND status = 'failed' AND tx_hash = %s",
                    (p.farmer_id, p.block_index, p.tx_hash),
                )
            row = await cur.fetchone()
            new = row is None
            if row is None:
                await cur.execute(
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
                row = await cur.fetchone()
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
            cur = conn.cursor(row_factory=class_row(PlantingRow))
            await cur.execute(
                f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE farmer_id = %s"
                " AND block_index IN (%s, %s + 1) AND status = 'success'"
                " ORDER BY block_index LIMIT 1",
                (request.farmer_id, request.block_index, request.block_index),
            )
            row = await cur.fetchone()
            if row is not None:
                await conn.execute(
                    "UPDATE plant_requests SET settled_at = now(), planting_id = %s WHERE id = %s",
                    (row.id, request.id),
                )
            return row

    async def last_cursor(self, pooler_id: UUID) -> int:
        """The highest assignment cursor issued to the pooler (0 if none)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(max(id), 0) FROM plantings"
                " WHERE pooler_id = %s AND status = 'success'",
                (pooler_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

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

    # --- works ------------------------------------------------------------------------------

    async def record_works(
        self,
        pooler_id: UUID,
        block_index: int,
        decide: Callable[[list[WorkRow]], list[NewWork]],
    ) -> list[WorkRow]:
        """Record a batch of work results in one transaction.

        Under a lock on (pooler, block), `decide` sees the works already recorded for the
        block and returns what to insert (or raises to refuse the whole batch), so two
        concurrent reports cannot both find a pail unrecorded.
        """
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (works_lock_key(pooler_id, block_index),),
            )
            cur = conn.cursor(row_factory=class_row(WorkRow))
            await cur.execute(
                f"SELECT {WORK_COLUMNS} FROM works WHERE pooler_id = %s AND block_index = %s"
                " ORDER BY id",
                (pooler_id, block_index),
            )
            works = decide(await cur.fetchall())
            rows: list[WorkRow] = []
            for w in works:
                await cur.execute(
                    "INSERT INTO works (block_index, farmer_id, pooler_id, nonce, hash, zeros,"
                    " gap, tx_hash, ledger, status, fault, error_code, error_message,"
                    " observed_on_chain) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " %s, %s, %s)"
                    f" RETURNING {WORK_COLUMNS}",
                    (
                        block_index,
                        w.farmer_id,
                        pooler_id,
                        w.nonce,
                        w.hash,
                        w.zeros,
                        w.gap,
                        w.tx_hash,
                        w.ledger,
                        w.status,
                        w.fault,
                        w.error_code,
                        w.error_message,
                        w.observed_on_chain,
                    ),
                )
                row = await cur.fetchone()
                assert row is not None
                rows.append(row)
            await conn.execute(
                "UPDATE block_operations SET work_completed_at = now()"
                " WHERE pooler_id = %s AND block_index = %s",
                (pooler_id, block_index),
            )
            return rows

    async def works(self, pooler_id: UUID, block_index: int) -> list[WorkRow]:
        return await fetch_all(
            self.pool,
            WorkRow,
            f"SELECT {WORK_COLUMNS} FROM works WHERE pooler_id = %s AND block_index = %s"
            " ORDER BY id",
            (pooler_id, block_index),
        )

    # --- heartbeats -------------------------------------------------------------------------

    async def record_heartbeat(self, pooler_id: UUID, beat: Heartbeat, min_seconds: float) -> bool:
        """Store a heartbeat's figures and time; whether it was written.

        Skipped within `min_seconds` of the last one stored (the database's clock decides,
        so several machines or replicas of one pooler cost one write every few seconds).
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE poolers SET last_heartbeat_at = now(), heartbeat_capacity = %s,"
                " heartbeat_hashes_per_second = %s, heartbeat_threads = %s,"
                " heartbeat_mining_farmers = %s, heartbeat_agent_version = %s,"
                " heartbeat_block_index = %s WHERE id = %s AND (last_heartbeat_at IS NULL"
                " OR last_heartbeat_at <= now() - make_interval(secs => %s))",
                (
                    beat.capacity,
                    beat.hashes_per_second,
                    beat.threads,
                    beat.mining_farmers,
                    beat.agent_version,
                    beat.block_index,
                    pooler_id,
                    min_seconds,
                ),
            )
            return cur.rowcount > 0

    async def heartbeat(self, pooler_id: UUID) -> HeartbeatRow | None:
        return await fetch_one(
            self.pool,
            HeartbeatRow,
            "SELECT last_heartbeat_at, heartbeat_capacity, heartbeat_hashes_per_second,"
            " heartbeat_threads, heartbeat_mining_farmers, heartbeat_agent_version,"
            " heartbeat_block_index FROM poolers WHERE id = %s",
            (pooler_id,),
        )


@dataclass
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
    status: str
    fault: str
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime


@dataclass
class Pail:
    """A worked pail of a finished block: what a harvest needs."""

    farmer_id: UUID
    pooler_id: UUID
    block_index: int
    custodial_public_key: str
    stake_amount: int


@dataclass
class Unreported:
    """A successful planting of a finished block whose work the chain has not been
    asked about: no successful work row, none observed on chain, no successful harvest."""

    farmer_id: UUID
    pooler_id: UUID
    block_index: int
    custodial_public_key: str
    ledger: int
    recorded_late: bool = False  # the planting's: recorded after the block's work window
    # The last failure the pooler reported for the pail, if it reported one.
    reported_fault: str | None = None
    reported_code: str | None = None
    reported_message: str | None = None


HARVEST_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, reward_amount, stake_amount,"
    " tx_hash, ledger, status::text, fault::text, error_code, error_message, created_at"
)


class HarvestStore:
    """Queries of the harvest loop."""

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

    async def unreported(
        self,
        below_block: int,
        from_block: int,
        after_ledger: int,
        pooler_id: UUID | None = None,
        block_index: int | None = None,
        limit: int = 200,
    ) -> list[Unreported]:
        """Successful plantings of blocks in [from_block, below_block) planted after
        `after_ledger` (pails still alive) whose work is not settled in the books."""
        return await fetch_all(
            self.pool,
            Unreported,
            "SELECT p.farmer_id, p.pooler_id, p.block_index, p.custodial_public_key, p.ledger,"
            " p.recorded_late, r.fault AS reported_fault, r.error_code AS reported_code,"
            " r.error_message AS reported_message FROM plantings p"
            " LEFT JOIN LATERAL (SELECT w.fault::text, w.error_code, w.error_message FROM works w"
            "  WHERE w.farmer_id = p.farmer_id AND w.block_index = p.block_index"
            "  AND w.status = 'failed' AND NOT w.observed_on_chain ORDER BY w.id DESC LIMIT 1) r"
            " ON true"
            " WHERE p.status = 'success' AND p.block_index < %(below)s"
            " AND p.block_index >= %(from)s AND p.ledger > %(after)s"
            " AND (%(pooler)s::uuid IS NULL OR p.pooler_id = %(pooler)s::uuid)"
            " AND (%(block)s::bigint IS NULL OR p.block_index = %(block)s::bigint)"
            " AND NOT EXISTS (SELECT 1 FROM works w WHERE w.farmer_id = p.farmer_id"
            "  AND w.block_index = p.block_index AND (w.status = 'success' OR w.observed_on_chain))"
            " AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id"
            "  AND h.block_index = p.block_index AND h.status = 'success')"
            " ORDER BY p.block_index, p.id LIMIT %(limit)s",
            {
                "below": below_block,
                "from": from_block,
                "after": after_ledger,
                "pooler": pooler_id,
                "block": block_index,
                "limit": limit,
            },
        )

    async def record_observed(self, pail: Unreported, work: NewWork) -> WorkRow | None:
        """Record what the chain shows of an unreported pail's work (observed_on_chain);
        None when its work got settled meanwhile (a report, another replica, a harvest)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (works_lock_key(pail.pooler_id, pail.block_index),),
            )
            cur = conn.cursor(row_factory=class_row(WorkRow))
            await cur.execute(
                "INSERT INTO works (block_index, farmer_id, pooler_id, zeros, gap, status,"
                " fault, error_code, error_message, observed_on_chain)"
                " SELECT %(block)s, %(farmer)s, %(pooler)s, %(zeros)s, %(gap)s, %(status)s,"
                " %(fault)s, %(code)s, %(message)s, true"
                " WHERE NOT EXISTS (SELECT 1 FROM works w WHERE w.farmer_id = %(farmer)s"
                "  AND w.block_index = %(block)s AND (w.status = 'success' OR w.observed_on_chain))"
                " AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = %(farmer)s"
                "  AND h.block_index = %(block)s AND h.status = 'success')"
                f" RETURNING {WORK_COLUMNS}",
                {
                    "block": pail.block_index,
                    "farmer": pail.farmer_id,
                    "pooler": pail.pooler_id,
                    "zeros": work.zeros,
                    "gap": work.gap,
                    "status": work.status,
                    "fault": work.fault,
                    "code": work.error_code,
                    "message": work.error_message,
                },
            )
            return await cur.fetchone()

    async def follower_ledger(self) -> int | None:
        """The last ledger the chain follower has read through (None before it started)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ledger FROM chain_cursors WHERE name = %s", (FOLLOWER_CURSOR,)
            )
            row = await cur.fetchone()
            return None if row is None else int(row[0])

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

    async def record(
        self,
        pail: Pail,
        status: str,
        reward: int | None,
        tx_hash: str | None,
        ledger: int | None,
        fault: str,
        error_code: str | None,
        error_message: str | None,
        *,
        observed_on_chain: bool = False,
    ) -> HarvestRow | None:
        """Record one harvest attempt; None when its success (or this failed transaction)
        is already recorded. The ledger credit of a success follows by trigger.
        `observed_on_chain`: the chain follower saw it (the pool did not make it)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"kalepool.harvest:{pail.farmer_id}:{pail.block_index}",),
            )
            cur = await conn.execute(
                "SELECT 1 FROM harvests WHERE farmer_id = %s AND block_index = %s"
                " AND (status = 'success' OR (tx_hash IS NOT NULL AND tx_hash = %s))",
                (pail.farmer_id, pail.block_index, tx_hash),
            )
            if await cur.fetchone() is not None:
                return None
            rows = conn.cursor(row_factory=class_row(HarvestRow))
            await rows.execute(
                "INSERT INTO harvests (block_index, farmer_id, pooler_id, reward_amount,"
                " stake_amount, tx_hash, ledger, status, fault, error_code, error_message,"
                " observed_on_chain) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {HARVEST_COLUMNS}",
                (
                    pail.block_index,
                    pail.farmer_id,
                    pail.pooler_id,
                    reward,
                    pail.stake_amount if status == "success" else None,
                    tx_hash,
                    ledger,
                    status,
                    fault,
                    error_code,
                    error_message,
                    observed_on_chain,
                ),
            )
            return await rows.fetchone()
