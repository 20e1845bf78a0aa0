"""The wallet service's rows: `custodial_wallets`, its `transactions`, and the payout
policy's challenges, address changes and refusals.

Plain SQL over a psycopg async pool (autocommit: each statement stands alone, and the
`transactions` row is written before its envelope is sent). Status changes append to
`transaction_events` by the database's own trigger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
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


class WalletPurpose(StrEnum):
    """What a custodial wallet is for (`wallet.wallet_purpose`)."""

    FARMER = "farmer"
    POOL_FEE = "pool_fee"
    POOLER_SHARE = "pooler_share"


class FeeWalletExists(Exception):
    """The pool's fee wallet exists already (under another owner)."""


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
    # the one address payouts may go to; None for a wallet that has none (pays nothing)
    payout_address: str | None
    purpose: WalletPurpose  # read as the database's label

    def __post_init__(self) -> None:
        self.purpose = WalletPurpose(self.purpose)

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
    "id, owner_id, public_key, ciphertext, nonce, key_id, key_version, created_at, closed_at,"
    " payout_address, purpose::text"
)
_TX_COLUMNS = (
    "id, idempotency_key, kind::text, source_account, sequence_number, min_time, max_time,"
    " block_index, amount, envelope_xdr, tx_hash, status::text, ledger, error_code,"
    " error_message, result_xdr, request_digest, rejected, fee_charged, return_value,"
    " contract_error, fault::text, created_at, settled_at"
)


@dataclass(frozen=True)
class NewTx:
    """A signed transaction to store before it is sent, and what it was asked for."""

    key: str
    signed: SignedTx
    digest: bytes
    block_index: int | None
    amount: int | None
    sweep_of: UUID | None = None


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
        self,
        owner_id: UUID,
        public_key: str,
        sealed: Sealed,
        payout_address: str,
        purpose: WalletPurpose = WalletPurpose.FARMER,
    ) -> tuple[WalletRow, bool]:
        """Insert the wallet unless the owner has one; (the owner's wallet, whether new).
        An existing wallet is returned as it is (its payout address included).
        :class:`FeeWalletExists` when another owner holds the one fee wallet."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(WalletRow))
            try:
                await cur.execute(
                    "INSERT INTO custodial_wallets (owner_id, public_key, ciphertext, nonce,"
                    " key_id, key_version, payout_address, purpose)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::wallet_purpose)"
                    f" ON CONFLICT (owner_id) DO NOTHING RETURNING {_WALLET_COLUMNS}",
                    (
                        owner_id,
                        public_key,
                        sealed.ciphertext,
                        sealed.nonce,
                        sealed.key_id,
                        sealed.key_version,
                        payout_address,
                        purpose.value,
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "custodial_wallets_one_fee_wallet":
                    raise FeeWalletExists() from None
                raise
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

    async def wallets(self, public_keys: Sequence[str]) -> dict[str, WalletRow]:
        """The wallets of these public keys (one statement), by key; absent ones left out."""
        rows = await fetch_all(
            self.pool,
            WalletRow,
            f"SELECT {_WALLET_COLUMNS} FROM custodial_wallets WHERE public_key = ANY(%s)",
            (list(public_keys),),
        )
        return {row.public_key: row for row in rows}

    async def wallet_by_id(self, wallet_id: UUID) -> WalletRow | None:
        return await fetch_one(
            self.pool,
            WalletRow,
            f"SELECT {_WALLET_COLUMNS} FROM custodial_wallets WHERE id = %s",
            (wallet_id,),
        )

    async def close_wallet(self, public_key: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE custodial_wallets SET closed_at = now()"
                " WHERE public_key = %s AND closed_at IS NULL",
                (public_key,),
            )

    # --- transactions -----------------------------------------------------------------------

    async def _txs(
        self, query: str, params: tuple[Any, ...] = (), *, distinct: str = ""
    ) -> list[TxRow]:
        """Rows of `transactions` (`query` follows the SELECT of their columns). Read by
        psycopg's `class_row`, whose `TxRow.__post_init__` maps the kind's database
        label (`fetch_all` would read 'payout' as a TxKind, and fail)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TxRow))
            await cur.execute(f"SELECT {distinct} {_TX_COLUMNS} FROM transactions {query}", params)
            return await cur.fetchall()

    async def _one_tx(self, where: str, params: tuple[Any, ...]) -> TxRow | None:
        rows = await self._txs(f"WHERE {where}", params)
        return rows[0] if rows else None

    async def tx_by_key(self, key: str) -> TxRow | None:
        """The transaction holding `key` (the live one; else the latest rejected attempt)."""
        return (await self.txs_by_keys([key])).get(key)

    async def txs_by_keys(self, keys: Sequence[str]) -> dict[str, TxRow]:
        """The transaction holding each key (as `tx_by_key`), in one statement; keys
        never used are left out."""
        rows = await self._txs(
            # the live row first, as `tx_by_key`
            "WHERE idempotency_key = ANY(%s) ORDER BY idempotency_key, rejected, created_at DESC",
            (list(keys),),
            distinct="DISTINCT ON (idempotency_key)",
        )
        return {row.idempotency_key: row for row in rows}

    async def tx_by_hash(self, tx_hash: str) -> TxRow | None:
        return await self._one_tx("tx_hash = %s", (tx_hash,))

    async def tx(self, tx_id: UUID) -> TxRow:
        row = await self._one_tx("id = %s", (tx_id,))
        assert row is not None
        return row

    async def insert_txs(self, txs: Sequence[NewTx]) -> dict[str, UUID]:
        """Store signed envelopes before they are sent, in one statement; links the owner
        of each signing wallet (a farmer id) when the source is one of the wallet's
        accounts. The ids of the rows stored, by key: a key left out was taken, another
        live transaction holding the key (or the account's sequence number) already
        (another process, or a call racing on it), and its envelope must not be sent."""
        if not txs:
            return {}
        columns: list[list[Any]] = [[] for _ in range(12)]
        for tx in txs:
            signed = tx.signed
            values = (
                tx.key,
                kind_label(signed.kind),
                tx.block_index,
                signed.source,
                signed.sequence,
                signed.min_time,
                signed.max_time,
                tx.amount,
                signed.envelope_xdr,
                signed.hash,
                tx.digest,
                tx.sweep_of,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self.pool.connection() as conn:
            # ON CONFLICT DO NOTHING covers every unique index (the live key, the live
            # sequence number of an account, the hash): a conflicting row is skipped,
            # the others are stored.
            cur = await conn.execute(
                "INSERT INTO transactions (idempotency_key, kind, farmer_id, block_index,"
                " source_account, sequence_number, min_time, max_time, amount, envelope_xdr,"
                " tx_hash, request_digest, sweep_of)"
                " SELECT n.key, n.kind::transaction_kind, w.owner_id, n.block_index, n.source,"
                " n.sequence, n.min_time, n.max_time, n.amount, n.envelope, n.hash, n.digest,"
                " n.sweep_of"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[],"
                " %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::text[],"
                " %s::bytea[], %s::uuid[])"
                " AS n(key, kind, block_index, source, sequence, min_time, max_time, amount,"
                " envelope, hash, digest, sweep_of)"
                " LEFT JOIN custodial_wallets w ON w.public_key = n.source"
                " ON CONFLICT DO NOTHING RETURNING idempotency_key, id",
                columns,
            )
            return {str(key): UUID(str(tx_id)) for key, tx_id in await cur.fetchall()}

    async def mark(self, tx_id: UUID, status: str) -> None:
        """Move an unsettled row along (prepared -> submitted / pending)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE transactions SET status = %s::transaction_status"
                " WHERE id = %s AND status IN ('prepared', 'submitted', 'pending')"
                " AND status <> %s::transaction_status",
                (status, tx_id, status),
            )

    async def settle(self, tx_id: UUID, s: Settlement) -> TxRow:
        """Write a final outcome (once: a settled row is left as it is); the row as it
        stands after, read in the same statement when this one settled it."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(TxRow))
            await cur.execute(
                "UPDATE transactions SET status = %s::transaction_status, ledger = %s,"
                " error_code = %s, error_message = %s, result_xdr = %s, fee_charged = %s,"
                " return_value = %s, contract_error = %s, fault = %s::fault_party,"
                " rejected = %s, settled_at = now()"
                " WHERE id = %s AND status IN ('prepared', 'submitted', 'pending')"
                f" RETURNING {_TX_COLUMNS}",
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
            row = await cur.fetchone()
        return row if row is not None else await self.tx(tx_id)

    async def unsettled(self) -> list[TxRow]:
        return await self._txs(
            "WHERE status IN ('prepared', 'submitted', 'pending')"
            " AND source_account IN (SELECT public_key FROM custodial_wallets)"
            " ORDER BY created_at"
        )

    # --- the payout policy ------------------------------------------------------------------

    async def recent_payouts(self, source: str) -> RecentPayouts:
        """What `source` paid out lately: every payout transaction stored (signed) that
        did or may still move KALE; failed, expired and rejected ones moved nothing. A
        sweep (a fee or share into a custodial wallet) is no payout: not counted."""
        row = await fetch_one(
            self.pool,
            RecentPayouts,
            "SELECT count(*) FILTER (WHERE created_at > now() - interval '1 hour')"
            " AS transfers_last_hour,"
            " coalesce(sum(amount), 0)::bigint AS stroops_last_day"
            " FROM transactions WHERE source_account = %s AND kind = 'payout'"
            " AND sweep_of IS NULL AND NOT rejected AND status NOT IN ('failed', 'expired')"
            " AND created_at > now() - interval '1 day'",
            (source,),
        )
        assert row is not None  # an aggregate always answers one row
        return row

    async def insert_challenge(
        self,
        wallet_id: UUID,
        signer: str,
        new_address: str,
        nonce: str,
        message: str,
        expires_at: dt.datetime,
    ) -> ChallengeRow:
        row = await fetch_one(
            self.pool,
            ChallengeRow,
            "INSERT INTO payout_challenges (wallet_id, signer_address, new_address, nonce,"
            f" message, expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_CHALLENGE_COLUMNS}",
            (wallet_id, signer, new_address, nonce, message, expires_at),
        )
        assert row is not None
        return row

    async def challenge(self, challenge_id: UUID) -> ChallengeRow | None:
        return await fetch_one(
            self.pool,
            ChallengeRow,
            f"SELECT {_CHALLENGE_COLUMNS} FROM payout_challenges WHERE id = %s",
            (challenge_id,),
        )

    async def change_of(self, challenge_id: UUID) -> AddressChange | None:
        """The address change a challenge was used for, if any."""
        return await fetch_one(
            self.pool,
            AddressChange,
            f"SELECT {_CHANGE_COLUMNS} FROM payout_address_changes WHERE challenge_id = %s",
            (challenge_id,),
        )

    async def change_payout_address(
        self, challenge: ChallengeRow, signature: bytes
    ) -> WalletRow | None:
        """Spend the challenge, record the change and change the address, all or nothing.
        None when the challenge was spent or expired meanwhile, or the wallet's address is
        no longer the one the challenge was signed by (another call won)."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "UPDATE payout_challenges SET used_at = now()"
                    " WHERE id = %s AND used_at IS NULL AND expires_at > now()",
                    (challenge.id,),
                )
                if cur.rowcount != 1:
                    return None
                await conn.execute(
                    "INSERT INTO payout_address_changes (wallet_id, old_address, new_address,"
                    " source, challenge_id, signature) VALUES (%s, %s, %s, 'signed', %s, %s)",
                    (
                        challenge.wallet_id,
                        challenge.signer_address,
                        challenge.new_address,
                        challenge.id,
                        signature,
                    ),
                )
                wallets = conn.cursor(row_factory=class_row(WalletRow))
                await wallets.execute(
                    "UPDATE custodial_wallets SET payout_address = %s"
                    f" WHERE id = %s AND payout_address = %s RETURNING {_WALLET_COLUMNS}",
                    (challenge.new_address, challenge.wallet_id, challenge.signer_address),
                )
                row = await wallets.fetchone()
                if row is None:
                    # Changed by another challenge meanwhile: leave nothing of this one.
                    raise _Superseded
                return row
        except _Superseded:
            return None

    async def record_refusal(self, refusal: Refusal) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO payout_refusals (wallet_id, action, reason, destination, amount,"
                " idempotency_key, challenge_id, caller, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    refusal.wallet_id,
                    refusal.action,
                    refusal.reason,
                    refusal.destination,
                    refusal.amount,
                    refusal.idempotency_key,
                    refusal.challenge_id,
                    refusal.caller,
                    refusal.detail,
                ),
            )


class _Superseded(Exception):
    """Rolls a payout-address change back: the wallet's address moved meanwhile."""


@dataclass
class RecentPayouts:
    """A wallet's payouts in the last hour (count) and the last day (stroops)."""

    transfers_last_hour: int
    stroops_last_day: int


@dataclass
class ChallengeRow:
    """A payout-address challenge as stored."""

    id: UUID
    wallet_id: UUID
    signer_address: str
    new_address: str
    nonce: str
    message: str
    expires_at: dt.datetime
    used_at: dt.datetime | None
    created_at: dt.datetime


_CHALLENGE_COLUMNS = (
    "id, wallet_id, signer_address, new_address, nonce, message, expires_at, used_at, created_at"
)


@dataclass
class AddressChange:
    """One recorded payout-address change."""

    id: int
    wallet_id: UUID
    old_address: str | None
    new_address: str
    challenge_id: UUID | None
    signature: bytes | None
    created_at: dt.datetime


_CHANGE_COLUMNS = "id, wallet_id, old_address, new_address, challenge_id, signature, created_at"


@dataclass
class Refusal:
    """A payout or address change the policy refused, as recorded."""

    wallet_id: UUID | None
    action: str
    reason: str
    detail: str
    destination: str | None = None
    amount: int | None = None
    idempotency_key: str | None = None
    challenge_id: UUID | None = None
    caller: str | None = None
