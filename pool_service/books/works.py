"""Works: the results poolers report and the verdicts the harvest loop observes on chain
(`works`, and the work stamp of `block_operations`).

A (pooler, block)'s works are decided and written under one advisory lock, so two
reports (or a report and an observation) cannot both find a pail's work unrecorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_one
from pool_service.books.enums import EventStatus


@dataclass(frozen=True)
class WorkRow:
    id: int
    block_index: int
    farmer_id: UUID
    pooler_id: UUID
    custodial_public_key: str
    nonce: Decimal | None  # numeric(20, 0): a u64
    hash: bytes | None
    zeros: int | None
    gap: int | None
    tx_hash: str | None
    ledger: int | None
    status: EventStatus
    fault: Fault
    error_code: str | None
    error_message: str | None
    created_at: dt.datetime
    # Recorded from the pail's worked state, not from a report (nonce, hash, tx unknown).
    observed_on_chain: bool


@dataclass(frozen=True, kw_only=True)
class NewWork:
    """One work result to record."""

    farmer_id: UUID
    status: EventStatus
    nonce: int | None = None
    hash: bytes | None = None
    zeros: int | None = None
    gap: int | None = None
    tx_hash: str | None = None
    ledger: int | None = None
    fault: Fault = Fault.NONE
    error_code: str | None = None
    error_message: str | None = None
    observed_on_chain: bool = False  # from the pail's state, not from a report


@dataclass(frozen=True)
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
    reported_fault: Fault | None = None
    reported_code: str | None = None
    reported_message: str | None = None


WORK_COLUMNS = (
    "id, block_index, farmer_id, pooler_id, custodial_public_key, nonce, hash, zeros, gap,"
    " tx_hash, ledger, status::text, fault::text, error_code, error_message, created_at,"
    " observed_on_chain"
)


def _works_lock_key(pooler_id: UUID, block_index: int) -> str:
    """The advisory lock under which a (pooler, block)'s works are decided and written."""
    return f"kalepool.works:{pooler_id}:{block_index}"


class WorkStore:
    """Queries of works."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

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
                (_works_lock_key(pooler_id, block_index),),
            )
            recorded = await fetch_all(
                conn,
                WorkRow,
                f"SELECT {WORK_COLUMNS} FROM works WHERE pooler_id = %s AND block_index = %s"
                " ORDER BY id",
                (pooler_id, block_index),
            )
            works = decide(recorded)
            rows: list[WorkRow] = []
            for w in works:
                row = await fetch_one(
                    conn,
                    WorkRow,
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
                (_works_lock_key(pail.pooler_id, pail.block_index),),
            )
            return await fetch_one(
                conn,
                WorkRow,
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
