"""Row builders for the schema tests: valid rows with realistic values, one call each."""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any
from uuid import UUID, uuid4

import psycopg
from stellar_sdk import StrKey

from kalepool.db.consistency import check_consistency

Conn = psycopg.Connection[tuple[Any, ...]]


def account() -> str:
    """A fresh, valid Stellar account id (G...)."""
    return StrKey.encode_ed25519_public_key(os.urandom(32))


def seed() -> str:
    """A fresh, valid Stellar secret seed (S...): what must never be stored."""
    return StrKey.encode_ed25519_secret_seed(os.urandom(32))


def tx_hash() -> str:
    return os.urandom(32).hex()


def ciphertext() -> bytes:
    """Stand-in for AEAD output: a 32-byte seed plus a 16-byte tag of random bytes."""
    return os.urandom(48)


class Rows:
    """Inserts valid rows; keyword arguments override single columns."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._sequence = itertools.count(1)

    def _insert(self, table: str, values: dict[str, Any]) -> Any:
        columns = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        query = f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"
        row = self.conn.execute(query.encode(), list(values.values())).fetchone()
        assert row is not None
        return row[0]

    def pooler(self, **overrides: Any) -> UUID:
        values = {"name": "pooler", "public_key": account(), "max_farmers": 10}
        return UUID(str(self._insert("poolers", values | overrides)))

    def farmer(self, pooler_id: UUID, **overrides: Any) -> UUID:
        values = {
            "pooler_id": pooler_id,
            "custodial_public_key": account(),
            "payout_address": account(),
            "stake_bps": 5000,
        }
        return UUID(str(self._insert("farmers", values | overrides)))

    def wallet(self, **overrides: Any) -> UUID:
        """A custodial wallet row (the wallet service's encrypted key)."""
        values = {
            "owner_id": uuid4(),
            "public_key": account(),
            "ciphertext": ciphertext(),
            "nonce": os.urandom(12),
            "key_id": "master",
            "key_version": 1,
        }
        return UUID(str(self._insert("custodial_wallets", values | overrides)))

    def _outcome(self, status: str, **success: Any) -> dict[str, Any]:
        if status == "success":
            return {"status": "success", "tx_hash": tx_hash(), "ledger": 100} | success
        return {"status": "failed", "fault": "chain", "error_message": "rpc timed out"}

    def planting(
        self, farmer_id: UUID, pooler_id: UUID, block: int, status: str = "success", **kw: Any
    ) -> int:
        values = {"block_index": block, "farmer_id": farmer_id, "pooler_id": pooler_id}
        return int(self._insert("plantings", values | self._outcome(status) | kw))

    def work(
        self, farmer_id: UUID, pooler_id: UUID, block: int, status: str = "success", **kw: Any
    ) -> int:
        values = {"block_index": block, "farmer_id": farmer_id, "pooler_id": pooler_id}
        found = {"nonce": 20495217910, "hash": os.urandom(32), "zeros": 8, "gap": 12}
        outcome = self._outcome(status, **found)
        return int(self._insert("works", values | outcome | kw))

    def harvest(
        self,
        farmer_id: UUID,
        pooler_id: UUID,
        block: int,
        status: str = "success",
        **kw: Any,
    ) -> int:
        values = {"block_index": block, "farmer_id": farmer_id, "pooler_id": pooler_id}
        outcome = self._outcome(status, reward_amount=0, stake_amount=0)
        return int(self._insert("harvests", values | outcome | kw))

    def transaction(self, kind: str = "payout", **overrides: Any) -> UUID:
        values: dict[str, Any] = {
            "idempotency_key": f"test:{os.urandom(8).hex()}",
            "kind": kind,
            "source_account": account(),
            "sequence_number": next(self._sequence),
            "max_time": 1_900_000_000,
            "envelope_xdr": base64.b64encode(os.urandom(120)).decode(),
            "tx_hash": tx_hash(),
        }
        return UUID(str(self._insert("transactions", values | overrides)))

    def payout(self, farmer_id: UUID, amount: int, **overrides: Any) -> UUID:
        """A pending payout the pool decided (debit it with a `payout` ledger entry)."""
        payout_id = uuid4()
        values: dict[str, Any] = {
            "id": payout_id,
            "farmer_id": farmer_id,
            "destination": account(),
            "amount": amount,
            "wallet_key": f"payout:{payout_id}",
        }
        return UUID(str(self._insert("payouts", values | overrides)))

    def fail_payout(self, payout_id: UUID) -> None:
        """Settle a payout as failed (its debit is then to be reversed)."""
        self.conn.execute(
            "UPDATE payouts SET status = 'failed', error_message = 'transfer failed',"
            " completed_at = now() WHERE id = %s",
            (payout_id,),
        )

    def compensation(self, farmer_id: UUID, pooler_id: UUID, block: int, **kw: Any) -> int:
        values = {
            "pooler_id": pooler_id,
            "farmer_id": farmer_id,
            "block_index": block,
            "compensation_type": "work_failure",
            "owed_by": "pooler",
            "amount": 1_000_000,
            "reason": "work missing at the deadline",
        }
        return int(self._insert("pooler_compensations", values | kw))

    def ledger(self, farmer_id: UUID, amount: int, kind: str = "adjustment", **kw: Any) -> int:
        values: dict[str, Any] = {"farmer_id": farmer_id, "amount": amount, "kind": kind}
        if kind == "adjustment":
            values["note"] = "reconciled with the chain"
        return int(self._insert("balance_ledger", values | kw))

    def balance(self, farmer_id: UUID) -> int:
        row = self.conn.execute(
            "SELECT current_balance FROM farmers WHERE id = %s", (farmer_id,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def ledger_sum(self, farmer_id: UUID) -> int:
        row = self.conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM balance_ledger WHERE farmer_id = %s",
            (farmer_id,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def fill_books(conn: Conn) -> None:
    """A pool with history: poolers, farmers, a custodial wallet, a block planted, worked
    and harvested, credits and a payout debited; consistent."""
    rows = Rows(conn)
    pooler = rows.pooler()
    farmers = [rows.farmer(pooler) for _ in range(3)]
    rows.wallet()
    for farmer in farmers:
        rows.planting(farmer, pooler, 7)
        rows.work(farmer, pooler, 7)
        rows.harvest(farmer, pooler, 7)
        rows.ledger(farmer, 5_000_000)
    rows.planting(farmers[0], pooler, 8, status="failed")
    payout = rows.payout(farmers[1], 1_000)
    rows.ledger(farmers[1], -1_000, kind="payout", payout_id=payout)
    assert check_consistency(conn) == []
