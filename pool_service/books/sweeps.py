"""The pool fee and the pooler's share of each harvest: the accounts they accrue to
(`accounts`, `account_ledger`), the sweeps that move them on chain (`sweeps`) and the
farmer's entries (`pool_fee`, `pooler_share`, `sweep_reversal` in `balance_ledger`).

As a payout's, a sweep and the farmer's debit are written in one database transaction,
under the farmer's row lock, before the wallet is asked; a failed sweep's status and its
reversal commit together; a successful one's status and its account's credit too
(docs/pool.md, "Shares").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection

from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value, fetch_values
from kalepool.grpc_server import FailedPrecondition
from pool_service.books.enums import AccountKind, PayoutStatus, SweepPart


@dataclass(frozen=True)
class AccountRow:
    id: UUID
    kind: AccountKind
    pooler_id: UUID | None
    custodial_public_key: str
    payout_address: str
    current_balance: int
    created_at: dt.datetime


@dataclass(frozen=True)
class SweepRow:
    id: UUID
    harvest_id: int
    part: SweepPart
    farmer_id: UUID
    account_id: UUID
    amount: int
    wallet_key: str
    status: PayoutStatus
    tx_hash: str | None
    ledger: int | None
    error_message: str | None


@dataclass(frozen=True)
class DueSweep:
    """A pending sweep with what the wallet is asked: the farmer's and the account's
    wallets, and the harvest transaction."""

    id: UUID
    part: SweepPart
    farmer_id: UUID
    amount: int
    wallet_key: str
    source: str
    destination: str
    harvest_tx_hash: str


@dataclass(frozen=True)
class Unswept:
    """A part of a harvest of the pool's own not swept yet."""

    harvest_id: int
    farmer_id: UUID
    pooler_id: UUID
    pooler_key: str  # the pooler's registered key: its share wallet pays it
    reward_amount: int
    tx_hash: str
    part: SweepPart


@dataclass(frozen=True)
class Receiver:
    """Who a part not swept yet goes to: the fee account, or the share account of the
    harvest's pooler."""

    part: SweepPart
    pooler_id: UUID
    pooler_key: str


ACCOUNT_COLUMNS = (
    "id, kind::text, pooler_id, custodial_public_key, payout_address, current_balance, created_at"
)
SWEEP_COLUMNS = (
    "id, harvest_id, part::text, farmer_id, account_id, amount, wallet_key, status::text,"
    " tx_hash, ledger, error_message"
)
# A part not swept within this many days of its harvest (its wallet unfunded so long) is
# forgone: each pass reads only this window of harvests.
SWEEP_WINDOW_DAYS = 7

_DUE = (
    "FROM harvests h JOIN poolers o ON o.id = h.pooler_id"
    " CROSS JOIN unnest(%(parts)s::text[]) AS p (part)"
    " WHERE h.status = 'success' AND NOT h.observed_on_chain AND h.reward_amount > 0"
    " AND h.tx_hash IS NOT NULL"
    f" AND h.created_at >= greatest(shares_since(), now() - interval '{SWEEP_WINDOW_DAYS} days')"
    " AND NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.harvest_id = h.id AND s.part::text = p.part)"
)
_DEBIT_KIND = {SweepPart.FEE: "pool_fee", SweepPart.SHARE: "pooler_share"}


class SweepStore:
    """Queries of accounts, sweeps and their ledger entries."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- accounts -----------------------------------------------------------------------

    async def fee_account(self) -> AccountRow | None:
        return await fetch_one(
            self.pool,
            AccountRow,
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE kind = 'pool_fee'",
        )

    async def account(self, account_id: UUID) -> AccountRow | None:
        return await fetch_one(
            self.pool,
            AccountRow,
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = %s",
            (account_id,),
        )

    @staticmethod
    async def account_addresses(conn: AsyncConnection[Any], addresses: list[str]) -> set[str]:
        """The pool's account wallets among these addresses (inside the caller's
        transaction)."""
        found = await fetch_values(
            conn,
            str,
            "SELECT custodial_public_key FROM accounts WHERE custodial_public_key = ANY(%s)",
            (addresses,),
        )
        return set(found)

    async def pooler_exists(self, pooler_id: UUID) -> bool:
        found = await fetch_value(
            self.pool, int, "SELECT 1 FROM poolers WHERE id = %s", (pooler_id,)
        )
        return found is not None

    async def share_account(self, pooler_id: UUID) -> AccountRow | None:
        return await fetch_one(
            self.pool,
            AccountRow,
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pooler_id = %s",
            (pooler_id,),
        )

    async def add_account(
        self, account_id: UUID, kind: AccountKind, public_key: str, payout_address: str
    ) -> AccountRow:
        """Record the account of a wallet just made (a second call finds the first's)."""
        pooler = account_id if kind is AccountKind.POOLER_SHARE else None
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO accounts (id, kind, pooler_id, custodial_public_key, payout_address)"
                " VALUES (%s, %s::account_kind, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (account_id, kind.value, pooler, public_key, payout_address),
            )
        row = await fetch_one(
            self.pool,
            AccountRow,
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = %s",
            (account_id,),
        )
        assert row is not None
        return row

    # --- sweeps -------------------------------------------------------------------------

    async def receivers(self, parts: list[SweepPart]) -> list[Receiver]:
        """Who is owed a part not swept yet: (part, the harvest's pooler and its key)."""
        return await fetch_all(
            self.pool,
            Receiver,
            f"SELECT DISTINCT p.part, h.pooler_id, o.public_key AS pooler_key {_DUE} ORDER BY 1, 2",
            {"parts": [p.value for p in parts]},
        )

    async def unswept(self, fee: bool, poolers: list[UUID], limit: int = 200) -> list[Unswept]:
        """Parts not swept yet of the pool's own successful harvests recorded since shares
        began (`shares_since()`) and within SWEEP_WINDOW_DAYS, oldest first: the fee
        (when `fee`) and the shares of these `poolers`. A harvest someone else made
        (observed on chain) is not the wallet's to sweep."""
        return await fetch_all(
            self.pool,
            Unswept,
            "SELECT h.id AS harvest_id, h.farmer_id, h.pooler_id, o.public_key AS pooler_key,"
            f" h.reward_amount, h.tx_hash, p.part {_DUE}"
            " AND ((p.part = 'fee' AND %(fee)s) OR (p.part = 'share'"
            "      AND h.pooler_id = ANY(%(poolers)s::uuid[])))"
            " ORDER BY h.id, p.part LIMIT %(limit)s",
            {
                "parts": [SweepPart.FEE.value, SweepPart.SHARE.value],
                "fee": fee,
                "poolers": poolers,
                "limit": limit,
            },
        )

    async def create(self, due: Unswept, account_id: UUID, amount: int) -> SweepRow | None:
        """Record the sweep and debit the farmer, together, under the farmer's lock. None
        when the farmer's balance cannot cover it now (tried again on a later pass)."""
        key = f"{due.part}:{due.tx_hash}"
        try:
            async with self.pool.connection() as conn, conn.transaction():
                row = await fetch_one(
                    conn,
                    SweepRow,
                    "INSERT INTO sweeps (harvest_id, part, farmer_id, account_id, amount,"
                    " wallet_key) VALUES (%s, %s::sweep_part, %s, %s, %s, %s)"
                    f" ON CONFLICT (harvest_id, part) DO NOTHING RETURNING {SWEEP_COLUMNS}",
                    (due.harvest_id, due.part.value, due.farmer_id, account_id, amount, key),
                )
                if row is None:  # another replica recorded it first
                    return None
                await conn.execute(
                    "INSERT INTO balance_ledger (farmer_id, amount, kind, sweep_id)"
                    " VALUES (%s, %s, %s::ledger_kind, %s)",
                    (due.farmer_id, -amount, _DEBIT_KIND[due.part], row.id),
                )
                return row
        except psycopg.errors.CheckViolation as exc:
            if exc.diag.constraint_name == "balance_ledger_no_overdraft":
                return None
            raise

    async def pending(self) -> list[DueSweep]:
        return await fetch_all(
            self.pool,
            DueSweep,
            "SELECT s.id, s.part::text, s.farmer_id, s.amount, s.wallet_key,"
            " h.custodial_public_key AS source, a.custodial_public_key AS destination,"
            " h.tx_hash AS harvest_tx_hash"
            " FROM sweeps s JOIN harvests h ON h.id = s.harvest_id"
            " JOIN accounts a ON a.id = s.account_id"
            " WHERE s.status = 'pending' ORDER BY s.requested_at",
        )

    async def succeeded(self, sweep_id: UUID, tx_hash: str, ledger: int) -> None:
        """Settle as a success and credit the account, together (once)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                SweepRow,
                "UPDATE sweeps SET status = 'success', tx_hash = %s, ledger = %s,"
                " completed_at = now() WHERE id = %s AND status = 'pending'"
                f" RETURNING {SWEEP_COLUMNS}",
                (tx_hash, ledger, sweep_id),
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO account_ledger (account_id, amount, kind, sweep_id)"
                    " VALUES (%s, %s, %s::account_entry_kind, %s)",
                    (row.account_id, row.amount, _DEBIT_KIND[row.part], sweep_id),
                )

    async def failed(self, sweep_id: UUID, tx_hash: str | None, code: str, message: str) -> None:
        """Settle as failed and give the farmer's debit back, together (once)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                SweepRow,
                "UPDATE sweeps SET status = 'failed', tx_hash = coalesce(%s, tx_hash),"
                " error_code = %s, error_message = %s, completed_at = now()"
                f" WHERE id = %s AND status = 'pending' RETURNING {SWEEP_COLUMNS}",
                (tx_hash, code, message, sweep_id),
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO balance_ledger (farmer_id, amount, kind, sweep_id)"
                    " VALUES (%s, %s, 'sweep_reversal', %s)",
                    (row.farmer_id, row.amount, sweep_id),
                )

    async def still_pending(self, sweep_id: UUID, tx_hash: str | None) -> None:
        if tx_hash:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE sweeps SET tx_hash = %s WHERE id = %s AND status = 'pending'",
                    (tx_hash, sweep_id),
                )


@dataclass(frozen=True)
class AccountPayoutRow:
    id: UUID
    account_id: UUID
    destination: str
    amount: int
    request_key: str | None
    wallet_key: str
    status: PayoutStatus
    tx_hash: str | None
    ledger: int | None
    error_code: str | None
    error_message: str | None
    requested_at: dt.datetime
    completed_at: dt.datetime | None


@dataclass(frozen=True)
class AccountTotals:
    """An account's figures: credited sweeps, pending sweeps, paid out (less reversals),
    and its balance."""

    earned: int
    pending: int
    paid: int
    balance: int


ACCOUNT_PAYOUT_COLUMNS = (
    "id, account_id, destination, amount, request_key, wallet_key, status::text, tx_hash,"
    " ledger, error_code, error_message, requested_at, completed_at"
)


class AccountPayoutStore:
    """Queries of an account's payouts and their entries (`account_payouts`,
    `account_ledger`)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def payout(self, payout_id: UUID) -> AccountPayoutRow | None:
        return await fetch_one(
            self.pool,
            AccountPayoutRow,
            f"SELECT {ACCOUNT_PAYOUT_COLUMNS} FROM account_payouts WHERE id = %s",
            (payout_id,),
        )

    async def create(
        self, payout_id: UUID, account: AccountRow, amount: int, request_key: str | None
    ) -> AccountPayoutRow:
        """Record the payout and debit the account, in one transaction under its lock.
        `amount` 0 pays the whole balance. FAILED_PRECONDITION past the balance."""
        async with self.pool.connection() as conn, conn.transaction():
            balance = await fetch_value(
                conn,
                int,
                "SELECT current_balance FROM accounts WHERE id = %s FOR UPDATE",
                (account.id,),
            )
            assert balance is not None
            existing = await fetch_one(
                conn,
                AccountPayoutRow,
                f"SELECT {ACCOUNT_PAYOUT_COLUMNS} FROM account_payouts WHERE id = %s",
                (payout_id,),
            )
            if existing is not None:  # the same key won a race: that one is the payout
                return existing
            amount = amount or balance
            if amount <= 0:
                raise FailedPrecondition(f"account {account.id} has no balance to pay out")
            if amount > balance:
                raise FailedPrecondition(
                    f"account {account.id} has {balance} stroops; a payout of {amount}"
                    " would overdraw it"
                )
            row = await fetch_one(
                conn,
                AccountPayoutRow,
                "INSERT INTO account_payouts (id, account_id, destination, amount, request_key,"
                f" wallet_key) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {ACCOUNT_PAYOUT_COLUMNS}",
                (
                    payout_id,
                    account.id,
                    account.payout_address,
                    amount,
                    request_key,
                    f"account-payout:{payout_id}",
                ),
            )
            assert row is not None
            await conn.execute(
                "INSERT INTO account_ledger (account_id, amount, kind, account_payout_id)"
                " VALUES (%s, %s, 'payout', %s)",
                (account.id, -amount, payout_id),
            )
            return row

    async def pending(self) -> list[AccountPayoutRow]:
        return await fetch_all(
            self.pool,
            AccountPayoutRow,
            f"SELECT {ACCOUNT_PAYOUT_COLUMNS} FROM account_payouts WHERE status = 'pending'"
            " ORDER BY requested_at",
        )

    async def succeeded(self, payout_id: UUID, tx_hash: str, ledger: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE account_payouts SET status = 'success', tx_hash = %s, ledger = %s,"
                " completed_at = now() WHERE id = %s AND status = 'pending'",
                (tx_hash, ledger, payout_id),
            )

    async def failed(self, payout_id: UUID, tx_hash: str | None, code: str, message: str) -> None:
        """Settle as failed and give the debit back, together (once)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                AccountPayoutRow,
                "UPDATE account_payouts SET status = 'failed', tx_hash = coalesce(%s, tx_hash),"
                " error_code = %s, error_message = %s, completed_at = now()"
                f" WHERE id = %s AND status = 'pending' RETURNING {ACCOUNT_PAYOUT_COLUMNS}",
                (tx_hash, code, message, payout_id),
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO account_ledger (account_id, amount, kind, account_payout_id)"
                    " VALUES (%s, %s, 'payout_reversal', %s)",
                    (row.account_id, row.amount, payout_id),
                )

    async def still_pending(self, payout_id: UUID, tx_hash: str | None) -> None:
        if tx_hash:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE account_payouts SET tx_hash = %s WHERE id = %s AND status = 'pending'",
                    (tx_hash, payout_id),
                )

    async def totals(self, account_id: UUID) -> AccountTotals:
        row = await fetch_one(
            self.pool,
            AccountTotals,
            "SELECT"
            " (SELECT coalesce(sum(amount) FILTER (WHERE status = 'success'), 0) FROM sweeps"
            "   WHERE account_id = %(a)s)::bigint AS earned,"
            " (SELECT coalesce(sum(amount) FILTER (WHERE status = 'pending'), 0) FROM sweeps"
            "   WHERE account_id = %(a)s)::bigint AS pending,"
            " (SELECT coalesce(-sum(amount), 0) FROM account_ledger WHERE account_id = %(a)s"
            "   AND kind IN ('payout', 'payout_reversal'))::bigint AS paid,"
            " (SELECT current_balance FROM accounts WHERE id = %(a)s) AS balance",
            {"a": account_id},
        )
        assert row is not None
        return row


@dataclass(frozen=True)
class CompensationDue:
    """An unpaid compensation of a farmer that can receive, and who owes it."""

    compensation_id: int
    farmer_id: UUID
    farmer_key: str
    pooler_id: UUID
    owed_by: str  # 'pool' or 'pooler'
    amount: int


@dataclass(frozen=True)
class CompensationPaymentRow:
    id: UUID
    compensation_id: int
    account_id: UUID
    farmer_id: UUID
    amount: int
    wallet_key: str
    status: PayoutStatus
    source: str  # the paying account's wallet
    destination: str  # the farmer's custodial account


_PAYMENT_COLUMNS = (
    "p.id, p.compensation_id, p.account_id, p.farmer_id, p.amount, p.wallet_key,"
    " p.status::text, a.custodial_public_key AS source, f.custodial_public_key AS destination"
)
_PAYMENT_FROM = (
    " FROM compensation_payments p JOIN accounts a ON a.id = p.account_id"
    " JOIN farmers f ON f.id = p.farmer_id"
)


class CompensationPaymentStore:
    """Compensations paid from the accounts (`compensation_payments`, the account's
    `compensation` / `compensation_reversal` entries, the farmer's `compensation` entry)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def unpaid(self, limit: int = 100) -> list[CompensationDue]:
        """Unpaid compensations with no payment under way, of farmers whose account can
        receive (funded, not departed), oldest first."""
        return await fetch_all(
            self.pool,
            CompensationDue,
            # `unpaid_compensations` (kept by the database as compensations are written
            # and paid) holds the unpaid ones alone, with their farmer: for each farmer
            # who can receive, its oldest `limit` with no payment under way (by the
            # farmer's index), then the oldest of all those: the same rows as the oldest
            # `limit` overall; no paid one is read, nor one of a farmer who cannot
            # receive. Each is
            # looked up by its id (OFFSET 0: not a join over every compensation).
            "SELECT c.id AS compensation_id, c.farmer_id, f.custodial_public_key AS farmer_key,"
            " c.pooler_id, c.owed_by::text AS owed_by, c.amount"
            " FROM farmers f CROSS JOIN LATERAL (SELECT u.compensation_id"
            "  FROM unpaid_compensations u WHERE u.farmer_id = f.id"
            "  AND NOT EXISTS (SELECT 1 FROM compensation_payments p"
            "   WHERE p.compensation_id = u.compensation_id AND p.status <> 'failed')"
            "  ORDER BY u.compensation_id LIMIT %(n)s) u"
            " CROSS JOIN LATERAL (SELECT * FROM pooler_compensations c"
            "  WHERE c.id = u.compensation_id OFFSET 0) c"
            " WHERE f.is_funded AND f.status <> 'departed'"
            " ORDER BY u.compensation_id LIMIT %(n)s",
            {"n": limit},
        )

    async def create(self, due: CompensationDue, account_id: UUID) -> UUID | None:
        """Record the payment and debit the paying account, together. None when the
        account cannot cover it now (the compensation stays owed) or another replica
        started one."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                payment_id = await fetch_value(
                    conn,
                    UUID,
                    "INSERT INTO compensation_payments (id, compensation_id, account_id,"
                    " farmer_id, amount, wallet_key) SELECT i, %s, %s, %s, %s,"
                    " 'compensation:' || i FROM gen_random_uuid() AS i RETURNING id",
                    (due.compensation_id, account_id, due.farmer_id, due.amount),
                )
                await conn.execute(
                    "INSERT INTO account_ledger (account_id, amount, kind,"
                    " compensation_payment_id) VALUES (%s, %s, 'compensation', %s)",
                    (account_id, -due.amount, payment_id),
                )
                return payment_id
        except psycopg.errors.UniqueViolation:
            return None  # a live payment exists already
        except psycopg.errors.CheckViolation as exc:
            if exc.diag.constraint_name == "accounts_balance_nonnegative":
                return None
            raise

    async def payment(self, payment_id: UUID) -> CompensationPaymentRow | None:
        return await fetch_one(
            self.pool,
            CompensationPaymentRow,
            f"SELECT {_PAYMENT_COLUMNS}{_PAYMENT_FROM} WHERE p.id = %s",
            (payment_id,),
        )

    async def pending(self) -> list[CompensationPaymentRow]:
        return await fetch_all(
            self.pool,
            CompensationPaymentRow,
            f"SELECT {_PAYMENT_COLUMNS}{_PAYMENT_FROM} WHERE p.status = 'pending'"
            " ORDER BY p.requested_at",
        )

    async def succeeded(self, payment_id: UUID, tx_hash: str, ledger: int) -> None:
        """Settle as a success and credit the farmer the compensation, together (once):
        from then on it is paid (`compensation_status.is_paid`)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                _Settled,
                "UPDATE compensation_payments SET status = 'success', tx_hash = %s,"
                " ledger = %s, completed_at = now() WHERE id = %s AND status = 'pending'"
                " RETURNING compensation_id, farmer_id, account_id, amount",
                (tx_hash, ledger, payment_id),
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO balance_ledger (farmer_id, amount, kind, compensation_id)"
                    " VALUES (%s, %s, 'compensation', %s)",
                    (row.farmer_id, row.amount, row.compensation_id),
                )

    async def failed(self, payment_id: UUID, tx_hash: str | None, code: str, message: str) -> None:
        """Settle as failed and give the account its debit back, together (once)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_one(
                conn,
                _Settled,
                "UPDATE compensation_payments SET status = 'failed',"
                " tx_hash = coalesce(%s, tx_hash), error_code = %s, error_message = %s,"
                " completed_at = now() WHERE id = %s AND status = 'pending'"
                " RETURNING compensation_id, farmer_id, account_id, amount",
                (tx_hash, code, message, payment_id),
            )
            if row is not None:
                await conn.execute(
                    "INSERT INTO account_ledger (account_id, amount, kind,"
                    " compensation_payment_id) VALUES (%s, %s, 'compensation_reversal', %s)",
                    (row.account_id, row.amount, payment_id),
                )

    async def still_pending(self, payment_id: UUID, tx_hash: str | None) -> None:
        if tx_hash:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE compensation_payments SET tx_hash = %s"
                    " WHERE id = %s AND status = 'pending'",
                    (tx_hash, payment_id),
                )


@dataclass(frozen=True)
class _Settled:
    compensation_id: int
    farmer_id: UUID
    account_id: UUID
    amount: int
