"""Typed reads: one query's rows as dataclasses, the idiom every store repeats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from kalepool.db.roles import DbRole

T = TypeVar("T")

Query = str | bytes | sql.SQL | sql.Composed
"""What `execute` takes (psycopg's own alias also admits t-strings, which we do not use)."""

Pool = AsyncConnectionPool[AsyncConnection[Any]]
"""The connection pool every service opens (autocommit connections)."""

Params = Sequence[Any] | dict[str, Any] | None


async def fetch_all(pool: Pool, row: type[T], query: Query, params: Params = None) -> list[T]:
    """Every row of ``query`` as a ``row`` (a dataclass whose fields are its columns)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(row))
        await cur.execute(query, params)
        return await cur.fetchall()


async def fetch_one(pool: Pool, row: type[T], query: Query, params: Params = None) -> T | None:
    """The first row of ``query`` as a ``row``, or None."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=class_row(row))
        await cur.execute(query, params)
        return await cur.fetchone()


async def open_pool(
    conninfo: str,
    *,
    role: DbRole,
    max_size: int,
    statement_timeout_seconds: float | None = None,
) -> Pool:
    """The connection pool a service runs on (autocommit connections).

    Every connection sees ``role``'s schemas by name (its search_path), whichever
    role ``conninfo`` logs in as. Every connection is checked when it is taken from
    the pool, so a pool that outlived a PostgreSQL restart hands out fresh
    connections instead of broken ones; a statement timeout (when given) bounds every
    query of the service.
    """
    options = [role.search_path]
    if statement_timeout_seconds is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_seconds * 1000)}")
    kwargs: dict[str, Any] = {"autocommit": True, "options": " ".join(options)}
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        kwargs=kwargs,
        check=AsyncConnectionPool.check_connection,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=30)
    except BaseException:
        await pool.close()
        raise
    return pool
