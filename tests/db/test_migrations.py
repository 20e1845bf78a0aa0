"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from kalepool.db.consistency import check_consistency
from kalepool.db.migrate import (
    MIGRATION_LOCK_KEY,
    Migration,
    MigrationChecksumError,
    MigrationError,
    MigrationFileError,
    MigrationState,
    UnknownMigrationError,
    apply_migrations,
    load_migrations,
    migration_status,
)
from kalepool.db.roles import POOL
from tests.dbkit import owner_view, service_conninfo

from .rows import Rows, account

# Each service's tables in its own schema (0012); the runner's own in public.
SCHEMA_TABLES = {
    "schema_migrations",
    "pool.poolers",
    "pool.alerts",
    "pool.pooler_api_keys",
    "pool.farmers",
    "wallet.custodial_wallets",
    "wallet.transactions",
    "wallet.transaction_events",
    "pool.plantings",
    "pool.works",
    "pool.harvests",
    "pool.pooler_compensations",
    "pool.block_operations",
    "pool.balance_ledger",
    "pool.payouts",
    "pool.plant_requests",
    "pool.deposits",
    "pool.chain_cursors",
    "shared.role_grants",
    "wallet.payout_challenges",
    "wallet.payout_address_changes",
    "wallet.payout_refusals",
    "pool.pooler_certificates",
    "wallet.key_rotations",
    "pool.rate_buckets",
    "wallet.rate_buckets",
    "pool.accounts",
    "pool.sweeps",
    "pool.account_ledger",
    "pool.account_payouts",
    "pool.compensation_payments",
    "pool.contract_acks",
    "pool.action_nonces",
    "pool.settled_blocks",
    "pool.settled_block_counts",
    "pool.compensation_totals",
    "pool.unpaid_compensations",
}
OUR_SCHEMAS = ("public", "pool", "wallet", "shared")


def _tables(conninfo: str) -> set[str]:
    """Tables in our schemas: ``schema.name``, or ``name`` in public."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE'",
            (list(OUR_SCHEMAS),),
        ).fetchall()
    return {str(name) if schema == "public" else f"{schema}.{name}" for schema, name in rows}


def _schema_fingerprint(conninfo: str) -> list[tuple[object, ...]]:
    """Every relation, trigger and function, and the migration rows."""
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            """
            SELECT 'rel', relnamespace::regnamespace || '.' || relname, relkind::text
                FROM pg_class WHERE relnamespace::regnamespace::text = ANY(%(schemas)s)
            UNION ALL SELECT 'trigger', tgname::text, tgrelid::regclass::text FROM pg_trigger
                WHERE NOT tgisinternal
            UNION ALL SELECT 'function', pronamespace::regnamespace || '.' || proname,
                    md5(prosrc) || coalesce(array_to_string(proconfig, ','), '')
                FROM pg_proc WHERE pronamespace::regnamespace::text = ANY(%(schemas)s)
            UNION ALL SELECT 'grant', relnamespace::regnamespace || '.' || relname,
                    coalesce(relacl::text, '')
                FROM pg_class WHERE relnamespace::regnamespace::text = ANY(%(schemas)s)
            UNION ALL SELECT 'migration', version::text, checksum || applied_at::text
                FROM schema_migrations
            ORDER BY 1, 2, 3
            """,
            {"schemas": list(OUR_SCHEMAS)},
        ).fetchall()


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_migrations_apply_to_a_fresh_database(empty_db_conninfo: str) -> None:
    shipped = load_migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))

    applied = apply_migrations(empty_db_conninfo)

    assert [m.label for m in applied] == [m.label for m in shipped]
    assert _tables(empty_db_conninfo) == SCHEMA_TABLES
    status = migration_status(empty_db_conninfo)
    assert [(s.version, s.state) for s in status] == [
        (m.version, MigrationState.APPLIED) for m in shipped
    ]
    assert all(s.applied for s in status)


def test_status_of_a_fresh_database_is_all_pending(empty_db_conninfo: str) -> None:
    status = migration_status(empty_db_conninfo)
    assert status and all(s.state is MigrationState.PENDING and not s.applied for s in status)
    # Asking changed nothing.
    assert _tables(empty_db_conninfo) == set()


def test_applying_twice_is_a_noop(empty_db_conninfo: str) -> None:
    apply_migrations(empty_db_conninfo)
    before = _schema_fingerprint(empty_db_conninfo)

    assert apply_migrations(empty_db_conninfo) == []

    assert _schema_fingerprint(empty_db_conninfo) == before


def test_a_changed_applied_migration_is_refused(tmp_path: Path, empty_db_conninfo: str) -> None:
    folder = _write(tmp_path / "m", {"0001_first.sql": "CREATE TABLE first (id int);\n"})
    apply_migrations(empty_db_conninfo, load_migrations(folder))
    _write(
        folder,
        {
            "0001_first.sql": "CREATE TABLE first (id bigint);\n",
            "0002_second.sql": "CREATE TABLE second (id int);\n",
        },
    )

    with pytest.raises(MigrationChecksumError, match="0001_first was changed after it was applied"):
        apply_migrations(empty_db_conninfo, load_migrations(folder))

    # Nothing was applied: the history check runs before any migration.
    assert _tables(empty_db_conninfo) == {"schema_migrations", "first"}
    status = migration_status(empty_db_conninfo, load_migrations(folder))
    assert [(s.label, s.state) for s in status] == [
        ("0001_first", MigrationState.CHANGED),
        ("0002_second", MigrationState.PENDING),
    ]


def test_a_database_migrated_by_newer_code_is_refused(
    tmp_path: Path, empty_db_conninfo: str
) -> None:
    newer = _write(
        tmp_path / "newer",
        {
            "0001_first.sql": "CREATE TABLE first ();\n",
            "0002_second.sql": "CREATE TABLE second ();\n",
        },
    )
    apply_migrations(empty_db_conninfo, load_migrations(newer))
    older = _write(tmp_path / "older", {"0001_first.sql": "CREATE TABLE first ();\n"})

    with pytest.raises(UnknownMigrationError, match="0002_second"):
        apply_migrations(empty_db_conninfo, load_migrations(older))

    status = migration_status(empty_db_conninfo, load_migrations(older))
    assert [(s.label, s.state) for s in status] == [
        ("0001_first", MigrationState.APPLIED),
        ("0002_second", MigrationState.UNKNOWN),
    ]


def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path, empty_db_conninfo: str) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "0001_first.sql": "CREATE TABLE first (id int);\n",
            "0002_broken.sql": (
                "CREATE TABLE second (id int);\nINSERT INTO second VALUES (1 / 0);\n"
            ),
            "0003_third.sql": "CREATE TABLE third (id int);\n",
        },
    )

    with pytest.raises(MigrationError, match=r"0002_broken failed: division by zero"):
        apply_migrations(empty_db_conninfo, load_migrations(folder))

    assert _tables(empty_db_conninfo) == {"schema_migrations", "first"}
    assert [s.applied for s in migration_status(empty_db_conninfo, load_migrations(folder))] == [
        True,
        False,
        False,
    ]

    # Fixing the file (never applied, so it may change) lets the run finish.
    _write(folder, {"0002_broken.sql": "CREATE TABLE second (id int);\n"})
    applied = apply_migrations(empty_db_conninfo, load_migrations(folder))
    assert [m.label for m in applied] == ["0002_broken", "0003_third"]


def test_concurrent_appliers_apply_each_migration_once(empty_db_conninfo: str) -> None:
    results = _race(empty_db_conninfo, None, workers=4)

    applied = [m.label for result in results for m in result]
    assert sorted(applied) == [m.label for m in load_migrations()]
    assert _tables(empty_db_conninfo) == SCHEMA_TABLES


def test_concurrent_appliers_never_run_a_file_twice(tmp_path: Path, empty_db_conninfo: str) -> None:
    # The second file is slow and leaves a trace of every run, so overlapping
    # appliers would show up as two rows.
    folder = _write(
        tmp_path / "m",
        {
            "0001_log.sql": "CREATE TABLE runs (pid int NOT NULL);\n",
            "0002_slow.sql": "INSERT INTO runs VALUES (pg_backend_pid());\nSELECT pg_sleep(0.2);\n",
        },
    )
    results = _race(empty_db_conninfo, load_migrations(folder), workers=3)

    assert sorted(m.label for result in results for m in result) == ["0001_log", "0002_slow"]
    with psycopg.connect(empty_db_conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM runs").fetchone()
    assert row == (1,)


def _race(conninfo: str, migrations: list[Migration] | None, workers: int) -> list[list[Migration]]:
    """Start ``workers`` appliers at the same instant; return what each applied."""
    barrier = threading.Barrier(workers)
    results: list[list[Migration]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait()
            applied = apply_migrations(conninfo, migrations)
            with lock:
                results.append(applied)
        except BaseException as error:
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == workers
    return results


def test_a_held_lock_gives_a_clear_error_not_a_hang(empty_db_conninfo: str) -> None:
    with psycopg.connect(empty_db_conninfo) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        with pytest.raises(MigrationError, match="another process holds it"):
            apply_migrations(empty_db_conninfo, lock_timeout_s=0.2)
    assert migration_status(empty_db_conninfo)[0].state is MigrationState.PENDING


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_short.sql": "SELECT 1;"}, "not named NNNN_lowercase_name.sql"),
        ({"0001_Upper.sql": "SELECT 1;"}, "not named NNNN_lowercase_name.sql"),
        ({"0000_zero.sql": "SELECT 1;"}, "versions start at 0001"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"}, "0001 appears twice"),
        ({"0001_tx.sql": "BEGIN;\nCREATE TABLE t ();\nCOMMIT;\n"}, "controls its own transaction"),
    ],
)
def test_malformed_migration_files_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = _write(tmp_path / "m", files | {"README.md": "not a migration"})
    with pytest.raises(MigrationFileError, match=message):
        load_migrations(folder)


def test_plpgsql_begin_blocks_are_not_mistaken_for_transaction_control(tmp_path: Path) -> None:
    body = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n    RETURN 1;\nEND;\n$$;\n"
    )
    folder = _write(tmp_path / "m", {"0001_f.sql": body})
    assert [m.label for m in load_migrations(folder)] == ["0001_f"]


# --- 0012: each service owns its data ------------------------------------------------


def _through(version: int) -> list[Migration]:
    return [m for m in load_migrations() if m.version <= version]


def test_0012_keeps_in_the_pools_rows_what_it_read_from_the_wallets(
    empty_db_conninfo: str,
) -> None:
    """Books written before 0012 referenced the wallet's transactions; after it they keep
    the hash themselves, a harvest says whether the chain follower recorded it, and a
    failed payout transaction from before 0007 has its reversal."""
    apply_migrations(empty_db_conninfo, _through(11))
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        rows = Rows(conn)
        pooler = rows.pooler()
        farmer = rows.farmer(pooler)

        def wallet_tx(kind: str, **kw: object) -> tuple[UUID, str]:
            tx = rows.transaction(kind, farmer_id=farmer, **kw)
            row = conn.execute("SELECT tx_hash FROM transactions WHERE id = %s", (tx,)).fetchone()
            assert row is not None
            return tx, str(row[0])

        plant_tx, plant_hash = wallet_tx("plant", block_index=7)
        # A failure recorded with its transaction but without the hash.
        planting = rows.planting(farmer, pooler, 7, status="failed", transaction_id=plant_tx)
        harvest_tx, harvest_hash = wallet_tx("harvest", block_index=7)
        own = rows.harvest(farmer, pooler, 7, transaction_id=harvest_tx, tx_hash=harvest_hash)
        seen = rows.harvest(farmer, pooler, 8)  # someone else's, seen by the follower
        failed = rows.harvest(farmer, pooler, 9, status="failed")
        rows.ledger(farmer, 1_000)
        paid_tx, paid_hash = wallet_tx("payout", amount=100)
        lost_tx, lost_hash = wallet_tx("payout", amount=200)
        rows.ledger(farmer, -100, kind="payout", transaction_id=paid_tx)
        rows.ledger(farmer, -200, kind="payout", transaction_id=lost_tx)
        conn.execute(
            "UPDATE transactions SET status = 'success', ledger = 90 WHERE id = %s", (paid_tx,)
        )
        conn.execute("UPDATE transactions SET status = 'failed' WHERE id = %s", (lost_tx,))
        assert rows.balance(farmer) == 700

    assert [m.label for m in apply_migrations(empty_db_conninfo, _through(12))] == [
        "0012_service_schemas"
    ]

    with psycopg.connect(owner_view(empty_db_conninfo), autocommit=True) as conn:
        rows = Rows(conn)
        got = conn.execute("SELECT tx_hash FROM plantings WHERE id = %s", (planting,)).fetchone()
        assert got == (plant_hash,)
        observed = dict(conn.execute("SELECT id, observed_on_chain FROM harvests").fetchall())
        assert observed == {own: False, seen: True, failed: False}
        entries = conn.execute(
            "SELECT kind::text, amount, transaction_id, tx_hash FROM balance_ledger"
            " WHERE transaction_id IS NOT NULL ORDER BY id"
        ).fetchall()
        assert entries == [
            ("payout", -100, paid_tx, paid_hash),
            ("payout", -200, lost_tx, lost_hash),
            ("payout_reversal", 200, lost_tx, lost_hash),
        ]
        assert rows.balance(farmer) == 900
        assert check_consistency(conn) == []
        # The wallet's row keeps its link to the farmer (now: its wallet's owner).
        linked = conn.execute("SELECT farmer_id FROM transactions WHERE id = %s", (paid_tx,))
        assert linked.fetchone() == (farmer,)


def test_0012_waits_for_unsettled_payout_transactions_from_before_0007(
    empty_db_conninfo: str,
) -> None:
    apply_migrations(empty_db_conninfo, _through(11))
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        rows = Rows(conn)
        farmer = rows.farmer(rows.pooler())
        rows.ledger(farmer, 1_000)
        tx = rows.transaction("payout", farmer_id=farmer, amount=100)
        rows.ledger(farmer, -100, kind="payout", transaction_id=tx)

    with pytest.raises(MigrationError, match="still unsettled") as caught:
        apply_migrations(empty_db_conninfo)
    assert str(tx) in str(caught.value)
    assert migration_status(empty_db_conninfo)[-1].state is MigrationState.PENDING
    assert "pool.farmers" not in _tables(empty_db_conninfo)  # nothing of it applied


def test_a_service_role_verifies_a_current_schema_and_may_apply_nothing(
    tmp_path: Path, db_conninfo: str
) -> None:
    """Services call the runner at start-up with their own credentials: on a current
    schema it reads the history and changes nothing; a pending file is refused in one
    line that names who may apply it."""
    as_pool = service_conninfo(db_conninfo, POOL)
    assert apply_migrations(as_pool) == []
    folder = tmp_path / "m"
    folder.mkdir()
    for migration in load_migrations():
        (folder / f"{migration.label}.sql").write_text(migration.sql)
    (folder / "9999_next.sql").write_text("CREATE TABLE pool.next (id int);\n")
    with pytest.raises(MigrationError, match=r"may not apply migrations.*kale-pool db migrate"):
        apply_migrations(as_pool, load_migrations(folder))
    assert (
        migration_status(db_conninfo, load_migrations(folder))[-1].state is MigrationState.PENDING
    )


# --- 0014: grants as rows -------------------------------------------------------------


def _privileges(conninfo: str) -> list[tuple[object, ...]]:
    """Every privilege the service roles hold on our schemas' tables, columns, functions
    and the schemas themselves."""
    roles = ["kalepool_wallet", "kalepool_pool", "kalepool_auditor"]
    with psycopg.connect(conninfo) as conn:
        tables = conn.execute(
            "SELECT 'table', grantee, table_schema || '.' || table_name, privilege_type"
            " FROM information_schema.role_table_grants WHERE grantee = ANY(%s)",
            (roles,),
        ).fetchall()
        columns = conn.execute(
            "SELECT 'column', grantee, table_schema || '.' || table_name || '.' || column_name,"
            " privilege_type FROM information_schema.column_privileges"
            " WHERE grantee = ANY(%s)",
            (roles,),
        ).fetchall()
        routines = conn.execute(
            "SELECT 'routine', grantee, routine_schema || '.' || routine_name, privilege_type"
            " FROM information_schema.role_routine_grants WHERE grantee = ANY(%s)",
            (roles,),
        ).fetchall()
        schemas = conn.execute(
            "SELECT 'schema', r, s, 'USAGE' FROM unnest(%s::text[]) r,"
            " unnest(ARRAY['pool', 'wallet', 'shared']) s"
            " WHERE has_schema_privilege(r, s, 'USAGE')",
            (roles,),
        ).fetchall()
    return sorted(tables + columns + routines + schemas, key=repr)


def test_0014_grants_exactly_what_0012_granted(empty_db_conninfo: str) -> None:
    apply_migrations(empty_db_conninfo, _through(13))
    before = _privileges(empty_db_conninfo)
    assert before  # the roles exist and hold grants: a comparison of nothing proves nothing
    assert [m.label for m in apply_migrations(empty_db_conninfo, _through(14))] == [
        "0014_role_grants"
    ]
    with psycopg.connect(empty_db_conninfo, autocommit=True) as conn:
        conn.execute("SELECT shared.grant_roles()")
    assert _privileges(empty_db_conninfo) == before


def test_0015_registers_the_pools_payout_address_with_each_existing_wallet(
    empty_db_conninfo: str,
) -> None:
    """A wallet from before 0015 gets its farmer's payout address, recorded as a change
    from 'migration'; a wallet no farmer holds keeps none; from then on the address moves
    only with a recorded change."""
    apply_migrations(empty_db_conninfo, _through(14))
    with psycopg.connect(owner_view(empty_db_conninfo), autocommit=True) as conn:
        rows = Rows(conn)
        farmer = rows.farmer(rows.pooler())
        got = conn.execute(
            "SELECT custodial_public_key, payout_address FROM farmers WHERE id = %s", (farmer,)
        ).fetchone()
        assert got is not None
        custodial, payout = got
        held = rows.wallet(public_key=custodial, owner_id=farmer)
        orphan = rows.wallet()

    assert [m.label for m in apply_migrations(empty_db_conninfo, _through(15))] == [
        "0015_payout_policy"
    ]

    with psycopg.connect(owner_view(empty_db_conninfo), autocommit=True) as conn:
        registered = dict(conn.execute("SELECT id, payout_address FROM custodial_wallets"))
        assert registered == {held: payout, orphan: None}
        changes = conn.execute(
            "SELECT wallet_id, old_address, new_address, source FROM payout_address_changes"
        ).fetchall()
        assert changes == [(held, None, payout, "migration")]
        with pytest.raises(psycopg.errors.CheckViolation, match="payout_address_changes"):
            conn.execute(
                "UPDATE custodial_wallets SET payout_address = %s WHERE id = %s",
                (account(), held),
            )
        assert conn.execute(
            "SELECT payout_address FROM custodial_wallets WHERE id = %s", (held,)
        ).fetchone() == (payout,)
