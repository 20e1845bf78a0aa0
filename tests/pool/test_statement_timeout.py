"""KALE_POOL_DB_TIMEOUT_SECONDS: every connection of the pool service's database pool
bounds its statements (the wallet's: tests/wallet/test_wallet_replicas.py)."""

from __future__ import annotations

import psycopg
import pytest

from kalepool.db.reads import open_pool
from kalepool.db.roles import POOL
from tests.dbkit import service_conninfo

from .conftest import PoolStage


async def test_every_pool_connection_bounds_its_statements(pool: PoolStage) -> None:
    server = await pool.start(db_timeout_seconds=0.25)
    async with server.pool.connection() as conn:
        cur = await conn.execute("SHOW statement_timeout")
        assert await cur.fetchone() == ("250ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conn.execute("SELECT pg_sleep(2)")


async def test_a_timeout_under_a_millisecond_is_one_not_none(db_conninfo: str) -> None:
    # PostgreSQL reads 0 as no timeout at all: a tiny setting must not switch it off.
    db = await open_pool(
        service_conninfo(db_conninfo, POOL), role=POOL, max_size=1, statement_timeout_seconds=0.0001
    )
    try:
        async with db.connection() as conn:
            cur = await conn.execute("SHOW statement_timeout")
            assert await cur.fetchone() == ("1ms",)
    finally:
        await db.close()
