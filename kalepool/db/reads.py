"""Typed reads: one query's rows as dataclasses, the idiom every store repeats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

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
