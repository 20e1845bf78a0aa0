"""Each service's database role owns nothing and may do only what its service does.

The append-only triggers are the last line; these prove the line before it: as the
wallet's or the pool's role, an event row cannot be changed or removed, a trigger cannot
be disabled, replication mode (which skips triggers) cannot be entered, and the pool
cannot read a single byte of the wallet's tables, a ciphertext least of all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from kalepool.db.roles import AUDITOR, POOL, ROLES, WALLET, DbRole
from tests.dbkit import service_conninfo

from .rows import Conn, Rows, account, ciphertext

POOL_EVENTS = [
    "plantings",
    "works",
    "harvests",
    "pooler_compensations",
    "balance_ledger",
    "deposits",
]
WALLET_EVENTS = ["transaction_events"]
WALLET_TABLES = [
    "custodial_wallets",
    "transactions",
    "transaction_events",
    "payout_challenges",
    "payout_address_changes",
    "payout_refusals",
]


@pytest.fixture
def books(rows: Rows) -> dict[str, Any]:
    """One row in every event table of both services (written as the owner)."""
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    rows.ledger(farmer, 100)
    transfer = rows.transaction("trustline")
    event = rows.conn.execute(
        "SELECT id FROM transaction_events WHERE transaction_id = %s", (transfer,)
    ).fetchone()
    assert event is not None
    deposit = rows.conn.execute(
        "INSERT INTO deposits (event_id, farmer_id, amount, tx_hash, ledger)"
        " VALUES ('0000000000000000042-0000000001', %s, 5, repeat('b', 64), 42) RETURNING id",
        (farmer,),
    ).fetchone()
    assert deposit is not None
    ledger = rows.conn.execute(
        "SELECT id FROM balance_ledger WHERE farmer_id = %s ORDER BY id LIMIT 1", (farmer,)
    ).fetchone()
    assert ledger is not None
    return {
        "plantings": rows.planting(farmer, pooler, 7, stake_amount=3),
        "works": rows.work(farmer, pooler, 7),
        "harvests": rows.harvest(farmer, pooler, 7, reward_amount=10, stake_amount=3),
        "pooler_compensations": rows.compensation(farmer, pooler, 7),
        "balance_ledger": ledger[0],
        "deposits": deposit[0],
        "transaction_events": event[0],
        "transactions": transfer,
        "custodial_wallets": rows.wallet(),
        "farmer": farmer,
    }


@pytest.fixture
def as_role(db_conninfo: str) -> Iterator[Any]:
    """Connections as a role (autocommit), closed at the end."""
    opened: list[Conn] = []

    def connect(role: DbRole) -> Conn:
        conn = psycopg.connect(service_conninfo(db_conninfo, role), autocommit=True)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def _snapshot(db: Conn, table: str) -> list[tuple[Any, ...]]:
    return db.execute(
        sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier(table))
    ).fetchall()


@pytest.mark.parametrize(
    ("role", "table"),
    [(POOL, t) for t in POOL_EVENTS] + [(WALLET, t) for t in WALLET_EVENTS],
    ids=lambda v: v.name if isinstance(v, DbRole) else v,
)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET created_at = created_at - interval '1 day' WHERE id = %(id)s",
        "DELETE FROM {table} WHERE id = %(id)s",
        "TRUNCATE {table} CASCADE",
    ],
    ids=["update", "delete", "truncate"],
)
def test_a_service_cannot_change_its_event_tables(
    db: Conn, books: dict[str, Any], as_role: Any, role: DbRole, table: str, statement: str
) -> None:
    before = _snapshot(db, table)
    conn = as_role(role)
    query = sql.SQL(statement).format(table=sql.Identifier(table))
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        conn.execute(query, {"id": books[table]})
    assert _snapshot(db, table) == before


@pytest.mark.parametrize(
    ("role", "table", "trigger"),
    [
        (POOL, "plantings", "plantings_append_only"),
        (POOL, "balance_ledger", "balance_ledger_append_only"),
        (POOL, "farmers", "farmers_derived"),
        (WALLET, "transaction_events", "transaction_events_append_only"),
        (WALLET, "transactions", "transactions_immutable"),
        (WALLET, "custodial_wallets", "custodial_wallets_no_delete"),
    ],
    ids=lambda v: v.name if isinstance(v, DbRole) else v,
)
def test_a_service_cannot_disable_a_trigger(
    db: Conn, as_role: Any, role: DbRole, table: str, trigger: str
) -> None:
    conn = as_role(role)
    for statement in (
        "ALTER TABLE {table} DISABLE TRIGGER {trigger}",
        "ALTER TABLE {table} DISABLE TRIGGER ALL",
    ):
        query = sql.SQL(statement).format(
            table=sql.Identifier(table), trigger=sql.Identifier(trigger)
        )
        with pytest.raises(errors.InsufficientPrivilege, match="must be owner"):
            conn.execute(query)
    enabled = db.execute(
        "SELECT tgenabled FROM pg_trigger WHERE tgname = %s", (trigger,)
    ).fetchone()
    assert enabled == ("O",)  # fires in every session


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_no_service_can_enter_replication_mode(as_role: Any, role: DbRole) -> None:
    """`session_replication_role = replica` would skip every ordinary trigger."""
    conn = as_role(role)
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SET session_replication_role = replica")
    assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)


@pytest.mark.parametrize("table", WALLET_TABLES)
def test_the_pool_cannot_read_the_wallets_tables(
    books: dict[str, Any], as_role: Any, table: str
) -> None:
    conn = as_role(POOL)
    qualified = sql.SQL("SELECT * FROM wallet.{}").format(sql.Identifier(table))
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema wallet"):
        conn.execute(qualified)
    # Nor does the name reach it from the pool's own search path.
    with pytest.raises(errors.UndefinedTable):
        conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))


def test_no_one_but_the_wallet_reads_a_ciphertext(db: Conn, as_role: Any) -> None:
    sealed = ciphertext()
    key = account()
    Rows(db).wallet(public_key=key, ciphertext=sealed)
    for role in (POOL, AUDITOR):
        conn = as_role(role)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT ciphertext FROM wallet.custodial_wallets")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT nonce FROM wallet.custodial_wallets")
    # The auditor sees that the wallet exists (the check needs no more).
    auditor = as_role(AUDITOR)
    found = auditor.execute(
        "SELECT public_key FROM custodial_wallets WHERE public_key = %s", (key,)
    ).fetchone()
    assert found == (key,)
    wallet = as_role(WALLET)
    mine = wallet.execute(
        "SELECT ciphertext FROM custodial_wallets WHERE public_key = %s", (key,)
    ).fetchone()
    assert mine == (sealed,)


def test_the_wallet_cannot_read_the_pools_tables(books: dict[str, Any], as_role: Any) -> None:
    conn = as_role(WALLET)
    for table in ("farmers", "balance_ledger", "payouts"):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for schema pool"):
            conn.execute(sql.SQL("SELECT * FROM pool.{}").format(sql.Identifier(table)))


def test_the_wallet_changes_a_transactions_outcome_only(
    db: Conn, books: dict[str, Any], as_role: Any
) -> None:
    """What was signed cannot even be named in an UPDATE (column grants); the outcome can."""
    conn = as_role(WALLET)
    tx = books["transactions"]
    for column, value in [("envelope_xdr", "AAAA"), ("tx_hash", "a" * 64), ("sequence_number", 9)]:
        query = sql.SQL("UPDATE transactions SET {} = %s WHERE id = %s").format(
            sql.Identifier(column)
        )
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(query, (value, tx))
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("DELETE FROM transactions WHERE id = %s", (tx,))
    conn.execute("UPDATE transactions SET status = 'submitted' WHERE id = %s", (tx,))
    trail = db.execute(
        "SELECT to_status::text FROM transaction_events WHERE transaction_id = %s ORDER BY id",
        (tx,),
    ).fetchall()
    assert trail == [("prepared",), ("submitted",)]  # the trigger wrote it, as the wallet


def test_the_auditor_writes_nothing(books: dict[str, Any], as_role: Any) -> None:
    conn = as_role(AUDITOR)
    farmer = books["farmer"]
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO balance_ledger (farmer_id, amount, kind, note)"
            " VALUES (%s, 1, 'adjustment', 'no')",
            (farmer,),
        )
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("UPDATE farmers SET stake_bps = 1 WHERE id = %s", (farmer,))
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT pool.rebuild_derived_state()")
    # ... and reads what the check reads.
    problems = conn.execute(
        "SELECT * FROM pool.consistency_problems() UNION ALL"
        " SELECT * FROM wallet.transaction_problems() UNION ALL"
        " SELECT * FROM pool.payout_problems()"
    ).fetchall()
    assert problems == []


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_the_roles_own_nothing_and_create_nothing(db: Conn, as_role: Any, role: DbRole) -> None:
    owned = db.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
        " WHERE r.rolname = %s",
        (role.name,),
    ).fetchone()
    assert owned == (0,)
    attributes = db.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
        " WHERE rolname = %s",
        (role.name,),
    ).fetchone()
    assert attributes == (False, False, False, False)
    conn = as_role(role)
    for schema in ("pool", "wallet", "shared", "public"):
        query = sql.SQL("CREATE TABLE {}.intruder (id int)").format(sql.Identifier(schema))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(query)


def test_a_grant_added_as_a_row_is_granted_to_its_role_alone(db: Conn, as_role: Any) -> None:
    """A migration grants what its new table needs by adding a row (0014)."""
    db.execute("CREATE TABLE wallet.newcomer (id int)")
    db.execute("INSERT INTO wallet.newcomer VALUES (1)")
    db.execute(
        "INSERT INTO shared.role_grants (role, statement, added_by) VALUES"
        " ('kalepool_wallet', 'GRANT SELECT ON wallet.newcomer TO kalepool_wallet', 'test')"
    )
    db.execute("SELECT shared.grant_roles()")
    assert as_role(WALLET).execute("SELECT id FROM wallet.newcomer").fetchall() == [(1,)]
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(AUDITOR).execute("SELECT id FROM wallet.newcomer")


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE pool.farmers",
        "GRANT SELECT ON pool.farmers TO kalepool_pool; DROP TABLE pool.farmers",
        "REVOKE ALL ON pool.farmers FROM kalepool_pool",
    ],
    ids=["not-a-grant", "two-statements", "revoke"],
)
def test_a_grant_row_holds_one_grant_and_nothing_else(db: Conn, statement: str) -> None:
    with pytest.raises(errors.CheckViolation):
        db.execute(
            "INSERT INTO shared.role_grants (role, statement, added_by)"
            " VALUES ('kalepool_pool', %s, 'test')",
            (statement,),
        )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_no_service_reads_or_writes_the_grants(as_role: Any, role: DbRole) -> None:
    conn = as_role(role)
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM shared.role_grants")
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT shared.grant_roles()")


@pytest.mark.parametrize("role", [POOL, WALLET], ids=lambda r: r.name)
def test_a_service_cannot_pose_as_the_rebuild_to_write_derived_state(
    db: Conn, books: dict[str, Any], as_role: Any, role: DbRole
) -> None:
    """The rebuild's flag is a custom setting any session can set; it counts only for the
    owner (0019), so a service's role still cannot write a balance by hand."""
    farmer = books["farmer"]
    before = db.execute("SELECT current_balance FROM farmers WHERE id = %s", (farmer,)).fetchone()
    conn = as_role(role)
    with conn.transaction():
        conn.execute("SET LOCAL kalepool.rebuilding_derived = 'on'")
        if role is POOL:
            with pytest.raises(errors.GeneratedAlways):
                conn.execute(
                    "UPDATE farmers SET current_balance = current_balance + 1000000 WHERE id = %s",
                    (farmer,),
                )
        else:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(
                    "UPDATE pool.farmers SET current_balance = 1000000 WHERE id = %s", (farmer,)
                )
    after = db.execute("SELECT current_balance FROM farmers WHERE id = %s", (farmer,)).fetchone()
    assert after == before


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE pool.compensation_totals SET unpaid = 0",
        "INSERT INTO pool.compensation_totals SELECT id, 'pool', 0, 1 FROM pool.poolers",
        "DELETE FROM pool.unpaid_compensations",
        "INSERT INTO pool.settled_block_counts SELECT pooler_id, block_index, 0, 9, 9, 9, 9, 9,"
        " 9, 9, 9, 9 FROM pool.block_operations",
        "SELECT pool.remember_block_counts(7)",
    ],
)
def test_the_pool_cannot_pose_as_the_rebuild_to_write_derived_totals(
    db: Conn, books: dict[str, Any], as_role: Any, statement: str
) -> None:
    """The totals of 0025 are written by the triggers alone: the pool's role, which the
    triggers write them as, is refused a write of its own, the rebuild's flag set."""
    tables = ("compensation_totals", "unpaid_compensations", "settled_block_counts")
    with db.transaction():  # a remembered row that differs, so a remember would write
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "INSERT INTO settled_block_counts SELECT pooler_id, block_index, 0, 1, 1, 1, 1, 1,"
            " 1, 1, 1, 1 FROM block_operations"
        )
    before = [db.execute(f"SELECT * FROM pool.{t} ORDER BY 1").fetchall() for t in tables]
    assert before[0] and before[1]  # books holds an unpaid compensation
    conn = as_role(POOL)
    with conn.transaction():
        conn.execute("SET LOCAL kalepool.rebuilding_derived = 'on'")
        with pytest.raises(errors.GeneratedAlways):
            conn.execute(statement)
    after = [db.execute(f"SELECT * FROM pool.{t} ORDER BY 1").fetchall() for t in tables]
    assert after == before


def test_the_owner_still_rebuilds_derived_state(db: Conn, books: dict[str, Any]) -> None:
    farmer = books["farmer"]
    db.execute("SELECT set_config('kalepool.rebuilding_derived', 'on', false)")
    db.execute("UPDATE farmers SET current_balance = 12345 WHERE id = %s", (farmer,))
    assert db.execute(
        "SELECT current_balance FROM farmers WHERE id = %s", (farmer,)
    ).fetchone() == (12345,)
    db.execute("SELECT set_config('kalepool.rebuilding_derived', '', false)")
    db.execute("SELECT pool.rebuild_derived_state()")
    expected = db.execute(
        "SELECT coalesce(sum(amount), 0) FROM balance_ledger WHERE farmer_id = %s", (farmer,)
    ).fetchone()
    got = db.execute("SELECT current_balance FROM farmers WHERE id = %s", (farmer,)).fetchone()
    assert got == expected


def test_the_wallet_records_the_payout_policy_and_cannot_rewrite_it(db: Conn, as_role: Any) -> None:
    """The wallet writes challenges, address changes and refusals; it may spend a
    challenge (used_at) and change an address with its change recorded first, and no
    more: the record of who moved payouts where stays as written."""
    conn = as_role(WALLET)
    wallet, payout = db.execute(
        "INSERT INTO custodial_wallets (owner_id, public_key, ciphertext, nonce, key_id,"
        " key_version, payout_address) VALUES (gen_random_uuid(), %s, %s, %s, 'master', 1, %s)"
        " RETURNING id, payout_address",
        (account(), ciphertext(), os.urandom(12), account()),
    ).fetchone() or (None, None)
    new = account()
    row = conn.execute(
        "INSERT INTO payout_challenges (wallet_id, signer_address, new_address, nonce, message,"
        " expires_at) VALUES (%s, %s, %s, %s, 'text', now() + interval '1 minute') RETURNING id",
        (wallet, payout, new, "ab" * 16),
    ).fetchone()
    assert row is not None
    challenge = row[0]
    with pytest.raises(errors.InsufficientPrivilege):
        conn.execute(
            "UPDATE payout_challenges SET new_address = %s WHERE id = %s", (account(), challenge)
        )
    # Without its change recorded, the address does not move (the trigger).
    with pytest.raises(errors.CheckViolation, match="payout_address_changes"):
        conn.execute(
            "UPDATE custodial_wallets SET payout_address = %s WHERE id = %s", (new, wallet)
        )
    with conn.transaction():
        conn.execute("UPDATE payout_challenges SET used_at = now() WHERE id = %s", (challenge,))
        conn.execute(
            "INSERT INTO payout_address_changes (wallet_id, old_address, new_address, source,"
            " challenge_id, signature) VALUES (%s, %s, %s, 'signed', %s, %s)",
            (wallet, payout, new, challenge, b"s" * 64),
        )
        conn.execute(
            "UPDATE custodial_wallets SET payout_address = %s WHERE id = %s", (new, wallet)
        )
    conn.execute(
        "INSERT INTO payout_refusals (wallet_id, action, reason, detail)"
        " VALUES (%s, 'transfer', 'foreign_destination', 'no')",
        (wallet,),
    )
    for table in ("payout_address_changes", "payout_refusals"):
        for statement in (
            "UPDATE {} SET created_at = now() - interval '1 day'",
            "DELETE FROM {}",
            "TRUNCATE {}",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql.SQL(statement).format(sql.Identifier(table)))
    assert db.execute(
        "SELECT payout_address FROM custodial_wallets WHERE id = %s", (wallet,)
    ).fetchone() == (new,)
