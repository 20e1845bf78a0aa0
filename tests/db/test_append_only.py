"""The audit trail is append-only in the database itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import errors, sql

from .rows import Conn, Rows, account, ciphertext


def _one_row_each(rows: Rows) -> dict[str, Any]:
    """One row in every event table; returns table -> id."""
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    payout = rows.payout(farmer, 5)
    transfer = rows.transaction("payout", farmer_id=farmer, amount=5)
    compensation = rows.compensation(farmer, pooler, 7)
    rows.ledger(farmer, 100)
    ledger_id = rows.ledger(farmer, -5, kind="payout", payout_id=payout)
    row = rows.conn.execute(
        "SELECT id FROM transaction_events WHERE transaction_id = %s", (transfer,)
    ).fetchone()
    assert row is not None
    return {
        "plantings": rows.planting(farmer, pooler, 7, stake_amount=3),
        "works": rows.work(farmer, pooler, 7),
        "harvests": rows.harvest(farmer, pooler, 7, reward_amount=10, stake_amount=3),
        "pooler_compensations": compensation,
        "balance_ledger": ledger_id,
        "transaction_events": row[0],
    }


EVENT_TABLES = [
    "plantings",
    "works",
    "harvests",
    "pooler_compensations",
    "balance_ledger",
    "transaction_events",
]


def _snapshot(conn: Conn, table: str) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
    return conn.execute(query).fetchall()


@pytest.mark.parametrize("table", EVENT_TABLES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET created_at = created_at - interval '1 day' WHERE id = %(id)s",
        "DELETE FROM {table} WHERE id = %(id)s",
        "TRUNCATE {table} CASCADE",
    ],
    ids=["update", "delete", "truncate"],
)
def test_event_tables_refuse_change(db: Conn, rows: Rows, table: str, statement: str) -> None:
    ids = _one_row_each(rows)
    before = {t: _snapshot(db, t) for t in EVENT_TABLES}

    query = sql.SQL(statement).format(table=sql.Identifier(table))
    with pytest.raises(errors.RestrictViolation, match="is refused"):
        db.execute(query, {"id": ids[table]})

    assert {t: _snapshot(db, t) for t in EVENT_TABLES} == before


def test_a_bulk_update_is_refused_too(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    for block in range(3):
        rows.planting(farmer, pooler, block, status="failed")
    with pytest.raises(errors.RestrictViolation):
        db.execute("UPDATE plantings SET error_message = 'rewritten'")
    texts = db.execute("SELECT DISTINCT error_message FROM plantings").fetchall()
    assert texts == [("rpc timed out",)]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c, t: c.execute("DELETE FROM transactions WHERE id = %s", (t,)),
        lambda c, t: c.execute("TRUNCATE transactions CASCADE"),
        lambda c, t: c.execute("UPDATE transactions SET envelope_xdr = 'AAAA' WHERE id = %s", (t,)),
        lambda c, t: c.execute("UPDATE transactions SET sequence_number = 99 WHERE id = %s", (t,)),
        lambda c, t: c.execute(
            "UPDATE transactions SET tx_hash = repeat('a', 64) WHERE id = %s", (t,)
        ),
    ],
    ids=["delete", "truncate", "envelope", "sequence", "hash"],
)
def test_transactions_keep_what_was_signed(
    db: Conn, rows: Rows, mutate: Callable[[Conn, Any], object]
) -> None:
    tx = rows.transaction("trustline")
    before = _snapshot(db, "transactions")
    with pytest.raises(errors.RestrictViolation):
        mutate(db, tx)
    assert _snapshot(db, "transactions") == before


def test_transaction_status_changes_are_recorded_as_events(db: Conn, rows: Rows) -> None:
    tx = rows.transaction("trustline")
    for status in ("submitted", "pending", "submitted"):
        db.execute("UPDATE transactions SET status = %s WHERE id = %s", (status, tx))
    # Updating other columns without a status change records nothing new.
    db.execute("UPDATE transactions SET error_message = 'try again later' WHERE id = %s", (tx,))
    db.execute(
        "UPDATE transactions SET status = 'success', ledger = 812, result_xdr = 'AAAA'"
        " WHERE id = %s",
        (tx,),
    )
    trail = db.execute(
        "SELECT from_status::text, to_status::text, ledger FROM transaction_events"
        " WHERE transaction_id = %s ORDER BY id",
        (tx,),
    ).fetchall()
    assert trail == [
        (None, "prepared", None),
        ("prepared", "submitted", None),
        ("submitted", "pending", None),
        ("pending", "submitted", None),
        ("submitted", "success", 812),
    ]


@pytest.mark.parametrize("final", ["success", "failed", "expired"])
def test_settled_transactions_are_final(db: Conn, rows: Rows, final: str) -> None:
    tx = rows.transaction("trustline")
    db.execute("UPDATE transactions SET status = %s, ledger = 5 WHERE id = %s", (final, tx))
    for change in (
        "status = 'pending'",
        "status = 'prepared'",
        "ledger = 6",
        "error_message = 'rewritten'",
    ):
        query = f"UPDATE transactions SET {change} WHERE id = %s"
        with pytest.raises(errors.CheckViolation) as caught:
            db.execute(query.encode(), (tx,))
        assert caught.value.diag.constraint_name == "transactions_status_transition"


def test_a_sent_transaction_cannot_go_back_to_prepared(db: Conn, rows: Rows) -> None:
    tx = rows.transaction("trustline")
    db.execute("UPDATE transactions SET status = 'submitted' WHERE id = %s", (tx,))
    with pytest.raises(errors.CheckViolation, match="cannot go back to prepared"):
        db.execute("UPDATE transactions SET status = 'prepared' WHERE id = %s", (tx,))


def test_a_prepared_transaction_found_on_chain_settles_directly(db: Conn, rows: Rows) -> None:
    # After a crash between send and record, reconciliation by hash finds it applied.
    tx = rows.transaction("trustline")
    db.execute("UPDATE transactions SET status = 'success', ledger = 9 WHERE id = %s", (tx,))
    row = db.execute("SELECT status::text FROM transactions WHERE id = %s", (tx,)).fetchone()
    assert row == ("success",)


def test_immutable_identity_columns(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    with pytest.raises(errors.RestrictViolation, match="custodial_public_key cannot change"):
        db.execute(
            "UPDATE farmers SET custodial_public_key = %s WHERE id = %s", (account(), farmer)
        )
    # A wallet's secret may be re-encrypted (key rotation); its public key and owner stay.
    wallet = rows.wallet()
    db.execute(
        "UPDATE custodial_wallets SET ciphertext = %s, nonce = %s, key_version = 2 WHERE id = %s",
        (ciphertext(), b"\x01" * 12, wallet),
    )
    for column, value in (("public_key", account()), ("owner_id", uuid4())):
        with pytest.raises(errors.RestrictViolation, match=f"{column} cannot change"):
            db.execute(
                f"UPDATE custodial_wallets SET {column} = %s WHERE id = %s".encode(),
                (value, wallet),
            )
    with pytest.raises(errors.RestrictViolation):
        db.execute("DELETE FROM custodial_wallets WHERE id = %s", (wallet,))


def test_departed_is_final(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler, status="departed")
    with pytest.raises(errors.CheckViolation, match="departed"):
        db.execute("UPDATE farmers SET status = 'active' WHERE id = %s", (farmer,))


def test_refusals_leave_the_connection_usable(db_conninfo: str) -> None:
    # A refused statement aborts only its own transaction.
    with psycopg.connect(db_conninfo) as conn:
        rows = Rows(conn)
        pooler = rows.pooler()
        farmer = rows.farmer(pooler)
        conn.commit()
        planting = rows.planting(farmer, pooler, 1)
        conn.commit()
        with pytest.raises(errors.RestrictViolation):
            conn.execute("DELETE FROM plantings WHERE id = %s", (planting,))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM plantings").fetchone() == (1,)
