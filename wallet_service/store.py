"""The wallet service's rows: `custodial_wallets` and its `transactions`.

Plain SQL over a psycopg async pool (autocommit: each statement stands alone, and the
`transactions` row is written before its envelope is sent). Status changes append to
`transaction_events` by the database's own trigger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from kalepool.chain import SignedTx, TxKind
from kalepool.db.reads import Pool, fetch_all, fetch_one
from wallet_service.keystore import Sealed

UNSETTLED = ("prepared", "submitted", "pending")

# The database's `transaction_kind` (0002) names two kinds by older words: a transfer is
# 'payout' and a close is 'merge'. Renaming an enum value would mean recreating every
# function that compares with the old word, so the labels stay, and this is the one
# place that maps them (the wallet service alone writes the table).
_DB_LABEL = {TxKind.TRANSFER: "payout", TxKind.CLOSE: "merge"}
_OF_DB_LABEL = {label: kind for kind, label in _DB_LABEL.items()}


def kind_label(kind: TxKind) -> str:
    """The database's `transaction_kind` label of a transaction kind."""
    return _DB_LABEL.get(kind, kind.value)


def kind_of_label(label: str) -> TxKind:
    """The transaction kind a `transaction_kind` label stands for."""
    return _OF_DB_LABEL.get(label) or TxKind(label)


class Taken(Exception):
    """Another process stored a live transaction for this key or sequence number first."""


@dataclass
class WalletRow:
    """A custodial wallet as stored."""

    id: UUID
    owner_id: UUID
    public_key: str
    ciphertext: bytes
    nonce: bytes
    key_id: str
    key_version: int
    created_at: dt.datetime
    closed_at: dt.datetime | None

    @property
    def sealed(self) -> Sealed:
        return Sealed(self.ciphertext, self.nonce, self.key_id, self.key_version)

    def __repr__(self) -> str:  # the ciphertext is not a secret, but has no place in logs
        return f"WalletRow({self.public_key}, owner={self.owner_id})"


@dataclass
class TxRow:
    """A transaction the wallet service signed, as stored."""

    id: UUID
    idempotency_key: str
    kind: TxKind  # read as the database's label, kept as the kind it stands for
    source_account: str
    sequence_number: int
    min_time: int
    max_time: int
    block_index: int | None
    amount: int | None
    envelope_xdr: str
    tx_hash: str
    status: str
    ledger: int | None
    error_code: str | None
    error_message: str | None
    result_xdr: str | None
    request_digest: bytes | None
    rejected: bool
    fee_charged: int | None
    return_value: Any
    contract_error: int | None
    fault: str | None
    created_at: dt.datetime
    settled_at: dt.datetime | None

    def __post_init__(self) -> None:
        self.kind = kind_of_label(self.kind)

    @property
    def settled(self) -> bool:
        return self.status not in UNSETTLED


_WALLET_COLUMNS = (
    "id, owner_id, public_key, ciphertext, nonce, key_id, key_version, created_at, closed_at"
)
_TX_COLUMNS = (
    "id, idempotency_key, kind::text, source_account, sequence_number, min_time, max_time,"
    " block_index, amount, envelope_xdr, tx_hash, status::text, ledger, error_code,"
    " error_message, result_xdr, request_digest, rejected, fee_charged, return_value,"
    " contract_error, fault::text, created_at, settled_at"
)


@dataclass
class Settlement:
    """The final (or still unknown) outcome to write on a row."""

    status: str
    ledger: int | None
    error_code: str | None
    error_message: str | None
    result_xdr: str | None
    fee_charged: int | None
    return_value: int | None
    contract_error: int | None
    fault: str | None
    rejected: bool


class Store:
    """Queries of the wallet service; one short statement each."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    # --- wallets --------------------------------------------------------------------------

    async def create_wallet(
        self, owner_id: UUID, public_key: str, sealed: Sealed
    ) -> tuple[WalletRow, bool]:
        """Insert the wallet unless the owner has one; (the owner's wallet, whether new)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(WalletRow))
            await cur.execute(
                f"INSERT INTO custodial_wallets (owner_id, public_key, ciphertext, nonce, key_id,"
                f" key_version) VALUES (%s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (owner_id) DO NOTHING RETURNING {_WALLET_COLUMNS}",
                (
                    owner_id,
                    public_key,
                    sealed.ciphertext,
                    sealed.nonce,
                    sealed.key_id,
                    sealed.key_version,
                ),
            )
            row = await cur.fetchone()
            if row is not None:
                return row, True
            await cur.execute(
                f"SELECT {_WALLET_COLUMNS} FROM custodial_wallets WHERE owner_id = %s",
                (owner_id,),
            )
            existing = await cur.fetchone()
            assert existing is not None  # a conflict on owner_id means the row exists
            return existing, False

    async def wallet(self, public_key: str) -> WalletRow | None:
        return await fetch_one(
            self.pool,
            WalletRow,
            f"SELECT {_WALLET_COLUMNS} FROM custodial_wallets WHERE public_key = %s",
            (public_key,),
        )

    async def close_wallet(self, public_key: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE custodial_wallets SET closed_at = now()"
                " WHERE public_key = %s AND closed_at IS NULL",
                (public_key,),
            )

    # --- transactions -----------------------------------------------------------------------

    async def _one_tx(self, where: str, params: tuple[Any, ...]) -> TxRow | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TxRow))
            await cur.execute(f"SELECT {_TX_COLUMNS} FROM transactions WHERE {where}", params)
            return await cur.fetchone()

    async def tx_by_key(self, key: str) -> TxRow | None:
        """The transaction holding `key` (the live one; else the latest rejected attempt)."""
        return await self._one_tx(
            "idempotency_key = %s ORDER BY rejected, created_at DESC LIMIT 1", (key,)
        )

    async def tx_by_hash(self, tx_hash: str) -> TxRow | None:
        return await self._one_tx("tx_hash = %s", (tx_hash,))

    async def tx(self, tx_id: UUID) -> TxRow:
        row = await self._one_tx("id = %s", (tx_id,))
        assert row is not None
        return row

    async def insert_tx(
        self,
        key: str,
        signed: SignedTx,
        digest: bytes,
        *,
        block_index: int | None,
        amount: int | None,
    ) -> UUID:
        """Store a signed envelope before it is sent; links the owner of the signing
        wallet (a farmer id) when the source is one of the wallet's accounts.

        Raises :class:`Taken` when another process stored a live transaction for the key
        (or the account's sequence number) first: the caller then sends nothing.
        """
        async with self.pool.connection() as conn:
            try:
                cur = await conn.execute(
                    "INSERT INTO transactions (idempotency_key, kind, farmer_id, block_index,"
                    " source_account, sequence_number, min_time, max_time, amount, envelope_xdr,"
                    " tx_hash, request_digest)"
                    " VALUES (%s, %s,"
                    " (SELECT owner_id FROM custodial_wallets WHERE public_key = %s),"
                    " %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (
                        key,
                        kind_label(signed.kind),
                        signed.source,
                        block_index,
                        signed.source,
                        signed.sequence,
                        signed.min_time,
                        signed.max_time,
                        amount,
                        signed.envelope_xdr,
                        signed.hash,
                        digest,
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise Taken(str(exc.diag.constraint_name)) from None
            row = await cur.fetchone()
            assert row is not None
            return UUID(str(row[0]))

    async def mark(self, tx_id: UUID, status: str) -> None:
        """Move an unsettled row along (prepared -> submitted / pending)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE transactions SET status = %s::transaction_status"
                " WHERE id = %s AND status IN ('prepared', 'submitted', 'pending')"
                " AND status <> %s::transaction_status",
                (status, tx_id, status),
            )

    async def settle(self, tx_id: UUID, s: Settlement) -> None:
        """Write a final outcome (once: a settled row is left as it is)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE transactions SET status = %s::transaction_status, ledger = %s,"
                " error_code = %s, error_message = %s, result_xdr = %s, fee_charged = %s,"
                " return_value = %s, contract_error = %s, fault = %s::fault_party,"
                " rejected = %s, settled_at = now()"
                " WHERE id = %s AND status IN ('prepared', 'submitted', 'pending')",
                (
                    s.status,
                    s.ledger,
                    s.error_code,
                    s.error_message,
                    s.result_xdr,
                    s.fee_charged,
                    s.return_value,
                    s.contract_error,
                    s.fault,
                    s.rejected,
                    tx_id,
                ),
            )

    async def unsettled(self) -> list[TxRow]:
        return await fetch_all(
            self.pool,
            TxRow,
            f"SELECT {_TX_COLUMNS} FROM transactions"
            " WHERE status IN ('prepared', 'submitted', 'pending')"
            " AND source_account IN (SELECT public_key FROM custodial_wallets)"
            " ORDER BY created_at",
        )
