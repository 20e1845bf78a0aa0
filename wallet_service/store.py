"""The wallet service's rows: `custodial_wallets`, its `transactions`, and the payout
policy's challenges, address changes and refusals.

Plain SQL over a psycopg async pool (autocommit: each statement stands alone, and the
`transactions` row is written before its envelope is sent). Status changes append to
`transaction_events` by the database's own trigger.
"""

from __future__ import annotations

import datetime as dt
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
        sweep_of: UUID | None = None,
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
                    " tx_hash, request_digest, sweep_of)"
                    " VALUES (%s, %s,"
                    " (SELECT owner_id FROM custodial_wallets WHERE public_key = %s),"
                    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
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
                        sweep_of,
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
