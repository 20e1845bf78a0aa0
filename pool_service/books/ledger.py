"""The balance ledger as read: a farmer's entries and its totals (`balance_ledger`).

Entries are written elsewhere, each with what it references: stakes and harvests by the
database's triggers, deposits with their `deposits` row (`pool_service.books.deposits`),
payouts and their reversals with their `payouts` row (`pool_service.books.payouts`), the
pool fee, pooler share and their reversals with their `sweeps` row
(`pool_service.books.sweeps`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from pool_service.books.enums import LedgerKind


@dataclass(frozen=True)
class LedgerRow:
    id: int
    farmer_id: UUID
    kind: LedgerKind
    amount: int
    balance_after: int
    block_index: int | None
    tx_hash: str | None
    source_id: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class BalanceTotals:
    staked: int
    rewards: int
    paid_out: int


class LedgerStore:
    """Queries of the balance ledger."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def balance_totals(self, farmer_id: UUID) -> BalanceTotals:
        """What the farmer has staked in open pails, earned and been paid out."""
        totals = await fetch_one(
            self.pool,
            BalanceTotals,
            "SELECT"
            " (SELECT coalesce(sum(p.stake_amount), 0) FROM plantings p"
            "   WHERE p.farmer_id = %(f)s AND p.status = 'success' AND NOT EXISTS ("
            "     SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id"
            "     AND h.block_index = p.block_index AND h.status = 'success'))::bigint"
            "  AS staked,"
            " (SELECT coalesce(sum(reward_amount), 0) FROM harvests"
            "   WHERE farmer_id = %(f)s AND status = 'success')::bigint AS rewards,"
            " (SELECT coalesce(-sum(amount), 0) FROM balance_ledger"
            "   WHERE farmer_id = %(f)s AND kind IN ('payout', 'payout_reversal'))::bigint"
            "  AS paid_out",
            {"f": farmer_id},
        )
        assert totals is not None
        return totals

    async def ledger(self, farmer_id: UUID, before_id: int | None, limit: int) -> list[LedgerRow]:
        """The farmer's ledger entries, newest first, with the balance after each."""
        # The running balance needs every entry of the farmer, but only its own table:
        # the page is chosen first and only its rows are joined to their sources.
        return await fetch_all(
            self.pool,
            LedgerRow,
            "SELECT e.id, e.farmer_id, e.kind::text AS kind, e.amount, e.balance_after,"
            "  coalesce(p.block_index, h.block_index, c.block_index, sh.block_index)"
            "   AS block_index,"
            "  coalesce(p.tx_hash, h.tx_hash, e.tx_hash, po.tx_hash, d.tx_hash, sw.tx_hash,"
            "           cp.tx_hash)"
            "   AS tx_hash,"
            "  coalesce(e.planting_id::text, e.harvest_id::text, e.compensation_id::text,"
            "           e.transaction_id::text, e.payout_id::text, e.deposit_id::text,"
            "           e.sweep_id::text) AS source_id,"
            "  e.created_at"
            " FROM (SELECT * FROM ("
            "   SELECT l.*, (sum(l.amount) OVER (ORDER BY l.id))::bigint AS balance_after"
            "   FROM balance_ledger l WHERE l.farmer_id = %s) entries"
            "  WHERE %s::bigint IS NULL OR id < %s::bigint ORDER BY id DESC LIMIT %s) e"
            " LEFT JOIN plantings p ON p.id = e.planting_id"
            " LEFT JOIN harvests h ON h.id = e.harvest_id"
            " LEFT JOIN pooler_compensations c ON c.id = e.compensation_id"
            " LEFT JOIN payouts po ON po.id = e.payout_id"
            " LEFT JOIN deposits d ON d.id = e.deposit_id"
            " LEFT JOIN sweeps sw ON sw.id = e.sweep_id"
            " LEFT JOIN harvests sh ON sh.id = sw.harvest_id"
            " LEFT JOIN compensation_payments cp ON cp.compensation_id = e.compensation_id"
            "  AND cp.status = 'success'"
            " ORDER BY e.id DESC",
            (farmer_id, before_id, before_id, limit),
        )

    @staticmethod
    async def holds_entries(conn: AsyncConnection[Any]) -> bool:
        """Whether any farmer has a ledger entry (inside the caller's transaction)."""
        found = await fetch_value(conn, bool, "SELECT EXISTS (SELECT 1 FROM balance_ledger)")
        return bool(found)
