"""Payouts: what the pool decided to pay each farmer, and their ledger entries
(`payouts`; the `payout` and `payout_reversal` entries of `balance_ledger`).

A payout and its debit are written in one database transaction under the farmer's row
lock, before the wallet is asked to sign; a failed payout's status and its reversal
commit together (docs/database.md, the payout lifecycle).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from kalepool.grpc_server import FailedPrecondition
from pool_service.books.enums import PayoutStatus


@dataclass(frozen=True)
class PayoutRow:
    id: UUID
    farmer_id: UUID
    destination: str
    amount: int
    request_key: str | None
    wallet_key: str
    status: PayoutStatus
    tx_hash: str | None
    ledger: int | None
    error_code: str | None
    error_message: str | None
    fault: Fault | None
    requested_at: dt.datetime
    completed_at: dt.datetime | None


@dataclass(frozen=True)
class _Debit:
    farmer_id: UUID
    amount: int


PAYOUT_COLUMNS = (
    "id, farmer_id, destination, amount, request_key, wallet_key, status::text, tx_hash,"
    " ledger, error_code, error_message, fault::text, requested_at, completed_at"
)
_PAYOUT_BY_ID = f"SELECT {PAYOUT_COLUMNS} FROM payouts WHERE id = %s"


class PayoutStore:
    """Queries of payouts and their ledger entries."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def payout(self, payout_id: UUID) -> PayoutRow | None:
        return await fetch_one(self.pool, PayoutRow, _PAYOUT_BY_ID, (payout_id,))

    async def create(
        self,
        payout_id: UUID,
        farmer_id: UUID,
        destination: str,
        amount: int,
        request_key: str | None,
    ) -> PayoutRow:
        """Record the payout and debit it, in one transaction under the farmer's lock.
        `amount` 0 pays the whole balance. FAILED_PRECONDITION when it is more than the
        balance or nothing is left to pay."""
        async with self.pool.connection() as conn, conn.transaction():
            balance = await fetch_value(
                conn,
                int,
                "SELECT current_balance FROM farmers WHERE id = %s FOR UPDATE",
                (farmer_id,),
            )
            assert balance is not None
            existing = await fetch_one(conn, PayoutRow, _PAYOUT_BY_ID, (payout_id,))
            if existing is not None:  # the same key won a race: that one is the payout
                return existing
            amount = amount or balance
            if amount <= 0:
                raise FailedPrecondition(f"farmer {farmer_id} has no balance to pay out")
            if amount > balance:
                raise FailedPrecondition(
                    f"farmer {farmer_id} has {balance} stroops available;"
                    f" a payout of {amount} would overdraw it"
                )
            row = await fetch_one(
                conn,
                PayoutRow,
                "INSERT INTO payouts (id, farmer_id, destination, amount, request_key,"
                f" wallet_key) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {PAYOUT_COLUMNS}",
                (payout_id, farmer_id, destination, amount, request_key, f"payout:{payout_id}"),
            )
            assert row is not None
            await conn.execute(
                "INSERT INTO balance_ledger (farmer_id, amount, kind, payout_id)"
                " VALUES (%s, %s, 'payout', %s)",
                (farmer_id, -amount, payout_id),
            )
            return row

    async def succeeded(self, payout_id: UUID, tx_hash: str, ledger: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE payouts SET status = 'success', tx_hash = %s, ledger = %s,"
                " completed_at = now() WHERE id = %s AND status = 'pending'",
                (tx_hash, ledger, payout_id),
            )

    async def still_pending(self, payout_id: UUID, tx_hash: str | None) -> None:
        if tx_hash:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE payouts SET tx_hash = %s WHERE id = %s AND status = 'pending'",
                    (tx_hash, payout_id),
                )

    async def failed(
        self, payout_id: UUID, tx_hash: str | None, code: str, message: str, fault: Fault
    ) -> None:
        """Settle as failed and give the debit back, together (once)."""
        async with self.pool.connection() as conn, conn.transaction():
            debit = await fetch_one(
                conn,
                _Debit,
                "UPDATE payouts SET status = 'failed', tx_hash = coalesce(%s, tx_hash),"
                " error_code = %s, error_message = %s, fault = %s::fault_party,"
                " completed_at = now() WHERE id = %s AND status = 'pending'"
                " RETURNING farmer_id, amount",
                (tx_hash, code, message, fault, payout_id),
            )
            if debit is not None:
                await conn.execute(
                    "INSERT INTO balance_ledger (farmer_id, amount, kind, payout_id)"
                    " VALUES (%s, %s, 'payout_reversal', %s)",
                    (debit.farmer_id, debit.amount, payout_id),
                )

    async def pending(self, farmer_id: UUID | None = None) -> list[PayoutRow]:
        return await fetch_all(
            self.pool,
            PayoutRow,
            f"SELECT {PAYOUT_COLUMNS} FROM payouts WHERE status = 'pending'"
            " AND (%s::uuid IS NULL OR farmer_id = %s::uuid) ORDER BY requested_at",
            (farmer_id, farmer_id),
        )

    async def list(
        self, farmer_id: UUID, before: tuple[str, str] | None, limit: int
    ) -> list[PayoutRow]:
        return await fetch_all(
            self.pool,
            PayoutRow,
            f"SELECT {PAYOUT_COLUMNS} FROM payouts WHERE farmer_id = %s"
            " AND (%s::timestamptz IS NULL OR (requested_at, id) < (%s::timestamptz, %s::uuid))"
            " ORDER BY requested_at DESC, id DESC LIMIT %s",
            (
                farmer_id,
                before[0] if before else None,
                before[0] if before else None,
                before[1] if before else None,
                limit,
            ),
        )

    async def open_pails(self, farmer_id: UUID, current_block: int) -> int:
        """Pails a leaving farmer waits for, as they may still be harvested: planted in the
        current block (still workable), or worked, without a successful harvest and not
        gone."""
        count = await fetch_value(
            self.pool,
            int,
            "SELECT count(*) FROM plantings p WHERE p.farmer_id = %(f)s"
            " AND p.status = 'success'"
            " AND (p.block_index >= %(c)s OR EXISTS (SELECT 1 FROM works w"
            "   WHERE w.farmer_id = p.farmer_id AND w.block_index = p.block_index"
            "   AND w.status = 'success'))"
            " AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id"
            "   AND h.block_index = p.block_index"
            "   AND (h.status = 'success' OR h.error_code = 'PAIL_MISSING'))",
            {"f": farmer_id, "c": current_block},
        )
        assert count is not None
        return count
