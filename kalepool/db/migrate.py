"""Versioned SQL migrations: find them, apply the pending ones, report status.

Migrations are the files ``kalepool/db/migrations/NNNN_name.sql``. Each is
applied in its own transaction together with its row in ``public.schema_migrations``
(version, name, SHA-256 of the file, time applied; named with its schema, since a
service's session sees only its own schemas by name), under a transaction-level
advisory lock, so that services starting at the same moment apply each file
exactly once. A file whose checksum no longer matches what was applied is
refused: changing history must be a new migration, never an edit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable

import psycopg

log = logging.getLogger(__name__)

#: Key of the advisory lock every migrator takes; derived from a fixed name so
#: it cannot collide with locks the services take for their own work.
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"kalepool:schema_migrations").digest()[:8], "big", signed=True
)

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")
# A file's own transaction control would break the one-transaction-per-file rule.
_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\s*;\s*$", re.IGNORECASE | re.MULTILINE
)

_CREATE_TABLE = b"""
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version integer PRIMARY KEY CHECK (version > 0),
    name text NOT NULL,
    checksum text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """A migration could not be applied; the database is left as it was before it."""


class MigrationFileError(MigrationError):
    """The migration files themselves are malformed (name, duplicate, content)."""


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was changed afterwards."""


class UnknownMigrationError(MigrationError):
    """The database has migrations this code does not know: it is newer than the code."""


@dataclass(frozen=True, order=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    checksum: str = field(compare=False)
    sql: str = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        """``0003_events``: how people and file names refer to it."""
        return f"{self.version:04d}_{self.name}"


class MigrationState(StrEnum):
    """Where one migration stands in one database."""

    APPLIED = "applied"
    PENDING = "pending"
    CHANGED = "changed"  # applied, but the file's checksum differs now
    UNKNOWN = "unknown"  # applied, but this code has no such file


@dataclass(frozen=True)
class MigrationStatus:
    """A migration's state in a database, as `kale-pool db status` shows it."""

    version: int
    name: str
    state: MigrationState
    applied_at: datetime | None

    @property
    def applied(self) -> bool:
        """Whether the database has applied this version (whatever its file says now)."""
        return self.applied_at is not None

    @property
    def label(self) -> str:
        """``0003_events``."""
        return f"{self.version:04d}_{self.name}"


def _default_directory() -> Traversable:
    return resources.files("kalepool.db") / "migrations"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read and check the migration files, sorted by version.

    ``directory`` defaults to the migrations shipped with this package. Files
    not ending in ``.sql`` are ignored; a ``.sql`` file with a bad name, two
    files with one version, or a file with its own BEGIN/COMMIT is an error.
    """
    folder = directory if directory is not None else _default_directory()
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationFileError(
                f"migration file {entry.name!r} is not named NNNN_lowercase_name.sql"
            )
        raw = entry.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MigrationFileError(f"migration file {entry.name!r} is not UTF-8") from error
        if _TRANSACTION_CONTROL.search(text):
            raise MigrationFileError(
                f"migration file {entry.name!r} controls its own transaction; "
                "the runner wraps each file in one"
            )
        version = int(match["version"])
        if version == 0:
            raise MigrationFileError(f"migration file {entry.name!r}: versions start at 0001")
        if version in found:
            raise MigrationFileError(
                f"migration version {version:04d} appears twice: "
                f"{found[version].label}.sql and {entry.name}"
            )
        found[version] = Migration(
            version=version,
            name=match["name"],
            checksum=hashlib.sha256(raw).hexdigest(),
            sql=text,
        )
    return sorted(found.values())


@dataclass(frozen=True)
class _AppliedRow:
    version: int
    name: str
    checksum: str
    applied_at: datetime


def _read_applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, _AppliedRow]:
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at FROM public.schema_migrations ORDER BY version"
    ).fetchall()
    result: dict[int, _AppliedRow] = {}
    for version, name, checksum, applied_at in rows:
        assert isinstance(version, int)
        assert isinstance(name, str)
        assert isinstance(checksum, str)
        assert isinstance(applied_at, datetime)
        result[version] = _AppliedRow(version, name, checksum, applied_at)
    return result


def _verify_history(migrations: Iterable[Migration], applied: dict[int, _AppliedRow]) -> None:
    known = {m.version: m for m in migrations}
    unknown = sorted(v for v in applied if v not in known)
    if unknown:
        labels = ", ".join(f"{v:04d}_{applied[v].name}" for v in unknown)
        raise UnknownMigrationError(
            f"the database has migrations this code does not know ({labels}); "
            "it was migrated by a newer kale-pool"
        )
    for version, row in applied.items():
        migration = known[version]
        if migration.checksum != row.checksum:
            raise MigrationChecksumError(
                f"migration {migration.label} was changed after it was applied "
                f"(applied sha256 {row.checksum[:12]}…, file now {migration.checksum[:12]}…); "
                "put changes in a new migration instead"
            )


def _table_exists(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _lock(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


def apply_migrations(
    conninfo: str,
    migrations: Sequence[Migration] | None = None,
    *,
    lock_timeout_s: float = 60.0,
) -> list[Migration]:
    """Apply every pending migration in order; return those applied by this call.

    Safe to call from several processes at once and any number of times: a
    migration already applied (by anyone) is skipped. Before applying anything
    the recorded history is checked, and a changed or unknown migration stops
    the whole run with a clear error. A failing migration is rolled back whole
    and raises :class:`MigrationError`; earlier ones stay applied. Waiting
    longer than ``lock_timeout_s`` for a lock raises instead of hanging.
    """
    todo = sorted(migrations) if migrations is not None else load_migrations()
    applied_now: list[Migration] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Read committed: after the lock is granted each statement sees what the
        # previous holder committed.
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false)", (f"{int(lock_timeout_s * 1000)}ms",)
        )
        with (
            _lock_wait_is_an_error("checking migration history", lock_timeout_s),
            _privilege_is_an_error("the migration history"),
            conn.transaction(),
        ):
            _lock(conn)
            # Created only when missing: a service's role may read it but create nothing.
            if not _table_exists(conn):
                conn.execute(_CREATE_TABLE)
            _verify_history(todo, _read_applied(conn))
        for migration in todo:
            with _lock_wait_is_an_error(f"migration {migration.label}", lock_timeout_s):
                if not _apply_one(conn, migration, todo):
                    continue
            log.info("applied migration %s", migration.label)
            applied_now.append(migration)
    return applied_now


def _apply_one(
    conn: psycopg.Connection[tuple[object, ...]], migration: Migration, todo: Sequence[Migration]
) -> bool:
    """Apply one migration in its own transaction; False if it was applied already."""
    with conn.transaction():
        _lock(conn)
        row = conn.execute(
            "SELECT checksum FROM public.schema_migrations WHERE version = %s", (migration.version,)
        ).fetchone()
        if row is not None:
            if row[0] != migration.checksum:
                # Another process applied a different file meanwhile.
                _verify_history(todo, _read_applied(conn))
            return False
        try:
            with _privilege_is_an_error(f"migration {migration.label}"):
                conn.execute(migration.sql.encode("utf-8"))
        except (psycopg.errors.LockNotAvailable, MigrationError):
            raise
        except psycopg.Error as error:
            raise MigrationError(f"migration {migration.label} failed: {error}") from error
        conn.execute(
            "INSERT INTO public.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )
    return True


@contextlib.contextmanager
def _privilege_is_an_error(what: str) -> Iterator[None]:
    """A role that may not migrate (a service's own) gets one line saying who may."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as error:
        raise MigrationError(
            f"{what}: this database role may not apply migrations"
            f" ({error.diag.message_primary}); the schema is not current: apply them as the"
            " migrator, `kale-pool db migrate` (docs/database.md)"
        ) from error


@contextlib.contextmanager
def _lock_wait_is_an_error(what: str, lock_timeout_s: float) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.LockNotAvailable as error:
        raise MigrationError(
            f"{what}: gave up waiting {lock_timeout_s:g} s for a lock; another process "
            "holds it (a migrator or a long transaction)"
        ) from error


def migration_status(
    conninfo: str, migrations: Sequence[Migration] | None = None
) -> list[MigrationStatus]:
    """Every known or recorded migration with its state, by version. Changes nothing."""
    known = sorted(migrations) if migrations is not None else load_migrations()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        applied = _read_applied(conn) if _table_exists(conn) else {}
    result: list[MigrationStatus] = []
    for migration in known:
        row = applied.get(migration.version)
        if row is None:
            state = MigrationState.PENDING
        elif row.checksum != migration.checksum:
            state = MigrationState.CHANGED
        else:
            state = MigrationState.APPLIED
        result.append(
            MigrationStatus(
                migration.version, migration.name, state, row.applied_at if row else None
            )
        )
    known_versions = {m.version for m in known}
    for version, row in applied.items():
        if version not in known_versions:
            result.append(
                MigrationStatus(version, row.name, MigrationState.UNKNOWN, row.applied_at)
            )
    return sorted(result, key=lambda s: s.version)
