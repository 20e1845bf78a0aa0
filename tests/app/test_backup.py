"""`kale-pool db backup` / `restore` against the session's real PostgreSQL, with the
embedded server's own pg_dump and pg_restore."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from kalepool.app.backup import (
    KEY_TABLES,
    BackupError,
    backup_database,
    libpq_args,
    restore_database,
)
from kalepool.app.runstate import StackLock
from kalepool.db.migrate import load_migrations
from kalepool.db.roles import AUDITOR, POOL, WALLET
from kalepool.settings import Settings
from tests.conftest import PgServer
from tests.db.rows import Rows, fill_books
from tests.dbkit import owner_view, service_conninfo

Conn = psycopg.Connection[tuple[Any, ...]]


def settings_for(conninfo: str, tmp_path: Path) -> Settings:
    """The settings of a process whose DATABASE_URL is ``conninfo``."""
    return Settings(  # type: ignore[call-arg]
        network="devnet", data_dir=tmp_path / "data", database_url=conninfo, _env_file=None
    )


def fingerprint(conninfo: str) -> dict[str, tuple[int, str]]:
    """Every application table's row count and a digest of its rows."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname IN ('pool', 'wallet', 'shared', 'public')"
            " ORDER BY 1, 2"
        ).fetchall()
        result: dict[str, tuple[int, str]] = {}
        for schema, name in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n'"
                    " ORDER BY t::text), '')) FROM {}.{} t"
                ).format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchone()
            assert row is not None
            result[f"{schema}.{name}"] = (int(row[0]), str(row[1]))
    return result


@pytest.fixture
def books(db: Conn, db_conninfo: str) -> str:
    """conninfo of a migrated database holding books."""
    fill_books(db)
    return db_conninfo


@pytest.fixture
def empty_target(pg_server: PgServer) -> Any:
    """conninfo of a new database with nothing in it."""
    name = pg_server.create_database()
    yield owner_view(pg_server.conninfo(name))
    pg_server.drop_database(name)


def test_a_backup_restored_into_an_empty_database_gives_the_same_books(
    books: str, empty_target: str, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "pool.dump"
    os.umask(0o022)
    result = backup_database(settings_for(books, tmp_path), target)
    assert result.path == target and result.size == target.stat().st_size > 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["pool.dump"]  # no partial left
    assert result.contents.migration is not None
    assert result.contents.migration == load_migrations()[-1].label  # the newest shipped
    assert result.contents.rows["pool.farmers"] == 3
    assert result.contents.rows["pool.plantings"] == 4
    assert result.contents.rows["wallet.custodial_wallets"] == 1
    assert set(result.contents.rows) == set(KEY_TABLES)
    # The master key the restore needs, by the id the wallet rows carry (the row
    # builder's stand-in id here).
    assert result.contents.sealed_under == {"master v1": 1}

    restored = restore_database(settings_for(empty_target, tmp_path), target)

    assert fingerprint(empty_target) == fingerprint(books)
    assert restored.contents == result.contents
    assert restored.books.ok, restored.books.differences
    assert restored.pending == [] and restored.unknown == []
    assert set(restored.granted) == {POOL.name, WALLET.name, AUDITOR.name}
    # The grants came back: each service reads what it needs as its own role, and the
    # wall between them holds.
    with psycopg.connect(service_conninfo(empty_target, POOL), autocommit=True) as pool:
        assert pool.execute("SELECT count(*) FROM farmers").fetchone() == (3,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pool.execute("SELECT count(*) FROM wallet.custodial_wallets")
    with psycopg.connect(service_conninfo(empty_target, WALLET), autocommit=True) as wallet:
        assert wallet.execute("SELECT count(*) FROM custodial_wallets").fetchone() == (1,)
    # The append-only rules came back with the tables.
    with (
        psycopg.connect(service_conninfo(empty_target, POOL), autocommit=True) as pool,
        pytest.raises(psycopg.Error),
    ):
        pool.execute("DELETE FROM plantings")


def test_the_summary_and_the_file_are_one_snapshot_while_the_books_change(
    books: str, empty_target: str, tmp_path: Path
) -> None:
    """A writer adds poolers all through the backup: the file holds exactly the rows the
    summary counted (read in the snapshot pg_dump imports), not those of a later moment."""
    stop = threading.Event()
    writing = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(books, autocommit=True) as conn:
            rows = Rows(conn)
            while not stop.is_set():
                rows.pooler()
                written.append(1)
                writing.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writing.wait(30), "the writer never wrote"
        result = backup_database(settings_for(books, tmp_path), tmp_path / "a.dump")
        during = len(written)
    finally:
        stop.set()
        thread.join(30)
    counted = result.contents.rows["pool.poolers"]
    assert 1 < counted < 1 + during  # taken while the writer wrote
    restored = restore_database(settings_for(empty_target, tmp_path), tmp_path / "a.dump")
    assert restored.contents.rows["pool.poolers"] == counted
    assert restored.contents == result.contents


def test_restore_refuses_a_database_that_is_not_empty(
    books: str, db_conninfo: str, pg_server: PgServer, migrated_template: str, tmp_path: Path
) -> None:
    backup = backup_database(settings_for(books, tmp_path), tmp_path / "b.dump").path
    name = pg_server.create_database(template=migrated_template)
    migrated = owner_view(pg_server.conninfo(name))
    try:
        before = fingerprint(migrated)
        with pytest.raises(BackupError) as refused:
            restore_database(settings_for(migrated, tmp_path), backup)
        message = str(refused.value)
        assert "not empty" in message and "--force" in message and "schema pool" in message
        assert "\n" not in message
        assert fingerprint(migrated) == before
    finally:
        pg_server.drop_database(name)


def test_force_replaces_what_the_backup_holds(
    books: str, pg_server: PgServer, migrated_template: str, tmp_path: Path
) -> None:
    backup = backup_database(settings_for(books, tmp_path), tmp_path / "c.dump").path
    name = pg_server.create_database(template=migrated_template)
    other = owner_view(pg_server.conninfo(name))
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            Rows(conn).farmer(Rows(conn).pooler(name="elsewhere"))
        restored = restore_database(settings_for(other, tmp_path), backup, force=True)
        assert fingerprint(other) == fingerprint(books)
        assert restored.books.ok, restored.books.differences
    finally:
        pg_server.drop_database(name)


def test_a_running_stack_refuses_a_restore(books: str, empty_target: str, tmp_path: Path) -> None:
    backup = backup_database(settings_for(books, tmp_path), tmp_path / "d.dump").path
    settings = settings_for(empty_target, tmp_path)
    with StackLock(settings), pytest.raises(BackupError, match="kale-pool up is running"):
        restore_database(settings, backup)
    assert fingerprint(empty_target) == {}
    # Once it stopped, the same restore goes through.
    restore_database(settings, backup)
    assert fingerprint(empty_target) == fingerprint(books)


def test_restore_refuses_a_file_that_is_no_backup(empty_target: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dump"
    junk.write_bytes(os.urandom(4096))
    settings = settings_for(empty_target, tmp_path)
    with pytest.raises(BackupError, match="not a backup pg_restore can read"):
        restore_database(settings, junk)
    with pytest.raises(BackupError, match="no backup file"):
        restore_database(settings, tmp_path / "missing.dump")
    assert fingerprint(empty_target) == {}


def test_a_failed_backup_leaves_the_previous_file_whole(books: str, tmp_path: Path) -> None:
    """A pg_dump that dies half-way: the old backup at that path stays, no partial file."""
    target = tmp_path / "out" / "pool.dump"
    backup_database(settings_for(books, tmp_path), target)
    good = target.read_bytes()
    broken = tmp_path / "bin"
    broken.mkdir()
    program = broken / "pg_dump"
    program.write_text(
        "#!/bin/sh\nprintf 'PGDMP half'\necho 'pg_dump: error: out of disk' >&2\nexit 1\n"
    )
    program.chmod(0o755)
    settings = settings_for(books, tmp_path).model_copy(update={"pg_bin_dir": broken})
    with pytest.raises(BackupError, match="pg_dump failed: pg_dump: error: out of disk"):
        backup_database(settings, target)
    assert target.read_bytes() == good
    assert [p.name for p in target.parent.iterdir()] == ["pool.dump"]


def test_a_missing_program_is_one_clear_line(books: str, tmp_path: Path) -> None:
    settings = settings_for(books, tmp_path).model_copy(update={"pg_bin_dir": tmp_path})
    with pytest.raises(BackupError, match=r"no pg_dump in .*KALE_POOL_PG_BIN_DIR"):
        backup_database(settings, tmp_path / "e.dump")
    assert not (tmp_path / "e.dump").exists()


def test_a_restore_that_fails_half_way_changes_nothing(
    books: str, pg_server: PgServer, migrated_template: str, tmp_path: Path
) -> None:
    """--force into a database where a view of the operator's hangs on a table the backup
    replaces: dropping that table fails, and the whole restore is rolled back."""
    backup = backup_database(settings_for(books, tmp_path), tmp_path / "f.dump").path
    name = pg_server.create_database(template=migrated_template)
    other = owner_view(pg_server.conninfo(name))
    try:
        with psycopg.connect(other, autocommit=True) as conn:
            Rows(conn).pooler(name="elsewhere")
            conn.execute("CREATE VIEW public.my_poolers AS SELECT name FROM pool.poolers")
        before = fingerprint(other)
        with pytest.raises(BackupError, match="restore failed and changed nothing") as failed:
            restore_database(settings_for(other, tmp_path), backup, force=True)
        assert "\n" not in str(failed.value)
        assert "cannot drop table pool.poolers" in str(failed.value)
        assert fingerprint(other) == before
    finally:
        pg_server.drop_database(name)


def test_the_password_reaches_pg_dump_by_environment_not_command_line() -> None:
    """Another user can read a process's command line (ps), not its environment."""
    url = "postgresql://owner:s3cret-pw@db.example:5432/kalepool?sslmode=require"
    args, env = libpq_args(url)
    assert "s3cret-pw" not in " ".join(args)
    assert env["PGPASSWORD"] == "s3cret-pw"
    assert "sslmode=require" in args[1] and "user=owner" in args[1]


def test_a_data_directory_where_nothing_ran_has_nothing_to_back_up(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        network="devnet", data_dir=tmp_path / "data", _env_file=None
    )
    with pytest.raises(BackupError, match=r"nothing to back up: .* holds no database"):
        backup_database(settings, tmp_path / "g.dump")
    assert not (tmp_path / "data" / "postgres").exists()  # no server started behind our back
