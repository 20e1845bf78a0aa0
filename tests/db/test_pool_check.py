"""The service pools' check on checkout (kalepool.db.reads.check_connection): no round
trip for a connection checked a moment ago, yet one the server ended is never handed
out (a PostgreSQL restart: tests/pool/test_db_restart.py)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from kalepool.db import reads
from kalepool.db.reads import open_pool
from kalepool.db.roles import POOL
from tests.dbkit import service_conninfo


async def _pid(db: reads.Pool) -> int:
    async with db.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each psycopg_pool check (a round trip) the pool's check makes, counted."""
    made: list[int] = []
    real = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        made.append(conn.info.backend_pid)
        await real(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    return made


async def test_a_recently_checked_connection_is_handed_out_without_a_round_trip(
    db_conninfo: str, round_trips: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=1)
    try:
        pids = {await _pid(db) for _ in range(10)}
        assert len(pids) == 1 and round_trips == list(pids)  # the first checkout only
        monkeypatch.setattr(reads, "CHECK_AFTER_SECONDS", 0.0)  # as if idle a while
        await _pid(db)
        assert len(round_trips) == 2
    finally:
        await db.close()


async def test_a_connection_the_server_ended_is_not_handed_out(
    db_conninfo: str, round_trips: list[int]
) -> None:
    db = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=1)
    try:
        first = await _pid(db)  # checked just now: the next checkout would skip the check
        with psycopg.connect(db_conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", [first])  # waits for it
        second = await _pid(db)  # an OperationalError if the ended one were handed out
        assert second != first
        assert round_trips.count(first) == 2  # checked again, found broken
    finally:
        await db.close()
