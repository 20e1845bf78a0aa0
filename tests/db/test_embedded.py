"""The embedded server as separate kale-pool commands use it: start, reuse, stop.

Each "command" is a fresh Python process, because what matters is what one
process leaves for the next in the data directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kalepool.db.embedded import (
    embedded_running,
    ensure_database,
    start_embedded,
    stop_embedded,
)
from kalepool.db.migrate import MigrationState, migration_status

COMMAND = """
import json, os, sys
from collections.abc import Iterator
from pathlib import Path
from kalepool.db.embedded import start_embedded
from kalepool.db.migrate import apply_migrations
pgdata, action = Path(sys.argv[1]), sys.argv[2]
server = start_embedded(pgdata, keep_running=(action == "keep"))
applied = [m.label for m in apply_migrations(server.conninfo)] if action == "migrate" else []
print(json.dumps({"pid": server.pid, "conninfo": server.conninfo, "applied": applied}), flush=True)
if action == "crash":
    os._exit(0)  # like SIGKILL: no exit handlers run
"""


def command(pgdata: Path, action: str = "use") -> dict[str, Any]:
    """Run one short-lived process that starts (or reuses) the server in ``pgdata``."""
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, str(pgdata), action],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    """pgdata as commands get it, <data dir>/postgres; no server outlives the test."""
    path = tmp_path / "data" / "postgres"
    yield path
    stop_embedded(path)


def test_the_server_lives_as_long_as_a_command_holds_it(pgdata: Path) -> None:
    first = command(pgdata, "migrate")
    assert len(first["applied"]) >= 5
    assert not embedded_running(pgdata)  # the only holder exited: stopped

    # The next command restarts it on the same data: the schema is still there.
    here = start_embedded(pgdata)
    try:
        assert here.conninfo == first["conninfo"]
        assert all(s.state is MigrationState.APPLIED for s in migration_status(here.conninfo))
        # A second command while this one runs reuses the same server...
        second = command(pgdata)
        assert second["pid"] == here.pid
        # ...and leaves it running for us when it exits.
        assert embedded_running(pgdata)
        with psycopg.connect(here.conninfo) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kalepool",)
    finally:
        here.release()
    assert not embedded_running(pgdata)


def test_a_killed_holder_does_not_keep_the_server_forever(pgdata: Path) -> None:
    crashed = command(pgdata, "crash")
    assert embedded_running(pgdata)  # postgres outlives the killed process

    later = command(pgdata)
    assert later["pid"] == crashed["pid"]  # found and reused
    assert not embedded_running(pgdata)  # and, as the last live holder, stopped it


def test_keep_running_and_an_explicit_stop(pgdata: Path) -> None:
    command(pgdata, "keep")
    assert embedded_running(pgdata)
    assert stop_embedded(pgdata) is True
    assert not embedded_running(pgdata)
    assert stop_embedded(pgdata) is False


def test_embedded_running_starts_nothing(pgdata: Path) -> None:
    assert not embedded_running(pgdata)
    assert not pgdata.exists()


@pytest.mark.parametrize(
    "name", ["", "Kalepool", "kale-pool", "x; DROP DATABASE postgres", "a" * 64]
)
def test_bad_database_names_are_refused(pgdata: Path, name: str) -> None:
    with pytest.raises(ValueError, match="database name"):
        start_embedded(pgdata, dbname=name)
    assert not pgdata.exists()


def test_ensure_database_is_idempotent(pg_server: Any) -> None:
    name = pg_server.new_name()
    ensure_database(pg_server.admin_conninfo, name)
    ensure_database(pg_server.admin_conninfo, name)
    with psycopg.connect(pg_server.conninfo(name)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
