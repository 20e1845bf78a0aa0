"""`kale-pool db backup` and `kale-pool db restore`: the pool's database to a file and back.

A backup is ``pg_dump --format=custom`` of one snapshot: the summary printed (migration
version, row counts) is read in a transaction whose snapshot pg_dump then imports, so
the file holds exactly what the summary says, however busy the pool is. It is written
beside its final name (0600 from its first byte) and renamed into place once complete,
so a backup path never holds half a dump.

A restore goes into an empty database only (``--force`` replaces what the backup holds,
in the same transaction), in one transaction with ``pg_restore``, as the database's
owner; it then gives the services' roles their grants again (which live as rows in the
backup, `kalepool.db.roles.grant_roles`) and runs the books' own consistency check, as
`kale-pool check --offline` does. It holds the lock of `kale-pool up` meanwhile, so a
running stack refuses it and no stack starts on a half-restored database.

The programs are the embedded PostgreSQL's own (`kalepool.db.embedded.client_bin_dir`),
or those in ``KALE_POOL_PG_BIN_DIR`` for an external server of a newer version.

The backup holds the custodial keys only as ciphertext: the master key is not in the
database and must be backed up on its own (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console

from kalepool.app.books import BooksReport, audit_books, print_report
from kalepool.app.runstate import StackLock, StackLockedError
from kalepool.app.status import nothing_has_run
from kalepool.db import resolve_conninfo
from kalepool.db.migrate import MigrationState, migration_status
from kalepool.db.roles import grant_roles
from kalepool.settings import Settings

#: The tables whose row counts say what a backup holds (those that exist are counted).
KEY_TABLES = (
    "pool.poolers",
    "pool.farmers",
    "pool.plantings",
    "pool.works",
    "pool.harvests",
    "pool.balance_ledger",
    "pool.deposits",
    "pool.payouts",
    "wallet.custodial_wallets",
    "wallet.transactions",
)

# Schemas that are the server's, not the application's: they do not make a database
# non-empty.
_SYSTEM_SCHEMAS = ("public", "information_schema")


class BackupError(Exception):
    """A backup or restore refused or failed; the message is one line for the operator."""


@dataclass(frozen=True)
class Contents:
    """What a database holds, in brief: its migration version and key tables' rows."""

    migration: str | None  # the latest applied migration (``0014_role_grants``), if any
    rows: dict[str, int] = field(default_factory=dict)
    #: custodial wallets per master key that sealed them (``mk-…`` id and version): the
    #: keys a restore needs, which are not in the database
    sealed_under: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: ``migration 0014_role_grants; pool.farmers 6, ...; custodial keys
        sealed under master key mk-… v1 (6)``."""
        parts = [f"migration {self.migration}" if self.migration else "no migration applied"]
        if self.rows:
            parts.append(", ".join(f"{table} {count}" for table, count in self.rows.items()))
        if self.sealed_under:
            keys = ", ".join(f"{key} ({count})" for key, count in self.sealed_under.items())
            parts.append(f"custodial keys sealed under master key {keys}")
        return "; ".join(parts)


@dataclass(frozen=True)
class BackupResult:
    """A backup written: where, how big, what it holds."""

    path: Path
    size: int
    contents: Contents


@dataclass(frozen=True)
class RestoreResult:
    """A restore done: what the database holds now and what its own check found."""

    contents: Contents
    granted: list[str]
    books: BooksReport
    pending: list[str]  # migrations this code has that the backup had not applied
    unknown: list[str]  # migrations the backup had applied that this code does not know


def read_contents(conn: psycopg.Connection[Any]) -> Contents:
    """The migration version and the key tables' row counts, as ``conn`` sees them."""
    found = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    migration = None
    if found and found[0]:
        latest = conn.execute(
            "SELECT version, name FROM public.schema_migrations ORDER BY version DESC LIMIT 1"
        ).fetchone()
        if latest is not None:
            migration = f"{int(latest[0]):04d}_{latest[1]}"
    rows: dict[str, int] = {}
    for table in KEY_TABLES:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        if not (exists and exists[0]):
            continue
        schema, name = table.split(".")
        counted = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
        ).fetchone()
        assert counted is not None
        rows[table] = int(counted[0])
    sealed_under: dict[str, int] = {}
    if "wallet.custodial_wallets" in rows:
        for key_id, version, count in conn.execute(
            "SELECT key_id, key_version, count(*) FROM wallet.custodial_wallets"
            " GROUP BY 1, 2 ORDER BY 2, 1"
        ).fetchall():
            sealed_under[f"{key_id} v{version}"] = int(count)
    return Contents(migration, rows, sealed_under)


def pg_program(settings: Settings, name: str) -> Path:
    """``pg_dump`` or ``pg_restore``: from ``KALE_POOL_PG_BIN_DIR``, else the embedded
    PostgreSQL's own."""
    if settings.pg_bin_dir is not None:
        directory = settings.pg_bin_dir.expanduser()
        origin = "KALE_POOL_PG_BIN_DIR"
    else:
        from kalepool.db.embedded import client_bin_dir

        directory = client_bin_dir()
        origin = "the embedded PostgreSQL"
    program = directory / name
    if not os.access(program, os.X_OK):
        raise BackupError(f"no {name} in {directory} ({origin}); set KALE_POOL_PG_BIN_DIR")
    return program


def libpq_args(conninfo: str) -> tuple[list[str], dict[str, str]]:
    """``--dbname`` for a PostgreSQL program and its environment: the password goes in
    the environment (readable by this user only), never on a command line (``ps``)."""
    params = conninfo_to_dict(conninfo)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return ["--dbname", make_conninfo(**{k: str(v) for k, v in params.items()})], env


def _failure(stderr: str) -> str:
    """The line of a program's error output that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line.lower():
            return line
    return lines[0] if lines else "no detail"


def default_backup_path(settings: Settings) -> Path:
    """``<data dir>/backups/kale-pool-<UTC time>.dump``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.layout().backups / f"kale-pool-{stamp}.dump"


def backup_database(settings: Settings, target: Path) -> BackupResult:
    """Dump the pool's database (``DATABASE_URL`` or the embedded one) to ``target``."""
    if nothing_has_run(settings):
        raise BackupError(
            f"nothing to back up: {settings.layout().root} holds no database"
            " (kale-pool up creates it; or set DATABASE_URL)"
        )
    pg_dump = pg_program(settings, "pg_dump")
    target = target.expanduser().absolute()
    if target.is_dir():
        raise BackupError(f"{target} is a directory; give the backup file's path")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    with psycopg.connect(conninfo) as conn:
        # One snapshot for the summary and the dump: exported here, imported by pg_dump,
        # and held until pg_dump is done with it.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        exported = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert exported is not None
        contents = read_contents(conn)
        # mkstemp creates the file 0600, whatever the umask: a dump holds ciphertext and
        # the books, for the owner's eyes only.
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            dbname, env = libpq_args(conninfo)
            with os.fdopen(fd, "wb") as out:
                done = subprocess.run(
                    [str(pg_dump), "--format=custom", f"--snapshot={exported[0]}", *dbname],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    text=False,
                    env=env,
                    check=False,
                )
                if done.returncode != 0:
                    raise BackupError(f"pg_dump failed: {_failure(done.stderr.decode())}")
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
    _fsync_directory(target.parent)
    return BackupResult(target, target.stat().st_size, contents)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def database_objects(conn: psycopg.Connection[Any]) -> list[str]:
    """What makes a database non-empty: schemas of its own, then tables, views, sequences
    and functions in ``public``. Empty: nothing a restore could collide with."""
    rows = conn.execute(
        """
        SELECT 1, 'schema ' || nspname FROM pg_namespace
         WHERE nspname <> ALL (%(system)s) AND nspname NOT LIKE 'pg\\_%%'
        UNION ALL
        SELECT 2, 'public.' || c.relname FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind NOT IN ('i', 'I', 't')
        UNION ALL
        SELECT 3, 'public.' || p.proname || '()' FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public'
        ORDER BY 1, 2
        """,
        {"system": list(_SYSTEM_SCHEMAS)},
    ).fetchall()
    return [str(row[1]) for row in rows]


def _check_backup_file(pg_restore: Path, source: Path) -> None:
    """Refuse a file that is not a pg_dump archive of a kale-pool database."""
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    listed = subprocess.run(
        [str(pg_restore), "--list", str(source)], capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        raise BackupError(
            f"{source} is not a backup pg_restore can read: {_failure(listed.stderr)}"
        )
    if " TABLE public schema_migrations " not in listed.stdout:
        raise BackupError(f"{source} is no kale-pool backup: it has no migrations table")


def restore_database(settings: Settings, source: Path, *, force: bool = False) -> RestoreResult:
    """Restore ``source`` into the pool's database (``DATABASE_URL`` or the embedded one),
    which must be empty unless ``force``; then grant the roles and check the books."""
    lock = StackLock(settings)
    try:
        lock.acquire()
    except StackLockedError:
        raise BackupError(
            f"kale-pool up is running on {settings.layout().root}: stop it before restoring"
        ) from None
    try:
        return _restore_locked(settings, source.expanduser().absolute(), force=force)
    finally:
        lock.release()


def _restore_locked(settings: Settings, source: Path, *, force: bool) -> RestoreResult:
    pg_restore = pg_program(settings, "pg_restore")
    _check_backup_file(pg_restore, source)
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    with psycopg.connect(conninfo, autocommit=True) as conn:
        present = database_objects(conn)
    if present and not force:
        shown = ", ".join(present[:3]) + (
            f" and {len(present) - 3} more" if len(present) > 3 else ""
        )
        raise BackupError(
            f"the database is not empty (it holds {shown}): restore into an empty database,"
            " or pass --force to replace what the backup holds"
        )
    command = [
        str(pg_restore),
        # The restoring role (the migrator) owns what it restores, as after migrations;
        # the services' privileges come from the grants' own rows, below.
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
    ]
    if force:
        command += ["--clean", "--if-exists"]
    dbname, env = libpq_args(conninfo)
    done = subprocess.run(
        [*command, *dbname, str(source)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"restore failed and changed nothing: {_failure(done.stderr)}")
    granted = grant_roles(conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        contents = read_contents(conn)
    books = asyncio.run(audit_books(conninfo, None))
    states = migration_status(conninfo)
    return RestoreResult(
        contents=contents,
        granted=granted,
        books=books,
        pending=[s.label for s in states if s.state is MigrationState.PENDING],
        unknown=[s.label for s in states if s.state is MigrationState.UNKNOWN],
    )


# --- the commands' output --------------------------------------------------------------


def _size(size: int) -> str:
    """A file size as people read it: ``297.8 KiB``."""
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def backup_command(settings: Settings, target: Path | None, console: Console) -> BackupResult:
    """`kale-pool db backup [PATH]`: write the backup and say what it holds."""
    result = backup_database(settings, target or default_backup_path(settings))
    console.print(f"backup written: {result.path} ({_size(result.size)})")
    console.print(f"it holds {result.contents.describe()}")
    console.print(
        "the custodial keys are in it as ciphertext only: keep the master key's own backup"
        " (docs/operations.md)",
    )
    return result


def restore_command(settings: Settings, source: Path, *, force: bool, console: Console) -> bool:
    """`kale-pool db restore PATH`: restore, then report the grants and the books' check;
    True when the books are consistent."""
    result = restore_database(settings, source, force=force)
    console.print(f"restored {source}: {result.contents.describe()}")
    if result.granted:
        console.print(f"granted the roles {', '.join(result.granted)} their privileges")
    if result.unknown:
        console.print(
            f"the backup has migrations this version does not know ({', '.join(result.unknown)}):"
            " run the kale-pool version that wrote it",
        )
    if result.pending:
        console.print(
            f"{len(result.pending)} migration(s) pending: kale-pool db migrate applies them",
        )
    print_report(result.books, console, offline=True)
    return result.books.ok
