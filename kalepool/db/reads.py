"""Typed reads: the one way every store reads rows, and the pool every service opens.

A query's rows are dataclasses whose fields are its columns (`fetch_all`, `fetch_one`,
built by `dataclass_row`: psycopg's `class_row`, with a text column turned into the
field's `enum.Enum` when the field is one); a query of one column gives its values
(`fetch_value`, `fetch_values`), checked against the type asked for. Each takes the
service's pool (one connection for the query) or a connection already held (a query
inside a database transaction).
"""

from __future__ import annotations

import enum
import math
import select
import time
import types
import typing
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import AsyncRowFactory, RowMaker, no_result
from psycopg_pool import AsyncConnectionPool

from kalepool.db.roles import DbRole

T = TypeVar("T")

Query = str | bytes | sql.SQL | sql.Composed
"""What `execute` takes (psycopg's own alias also admits t-strings, which we do not use)."""

Pool = AsyncConnectionPool[AsyncConnection[Any]]
"""The connection pool every service opens (autocommit connections)."""

Source = Pool | AsyncConnection[Any]
"""Where a read runs: a connection of the pool, or one already held (in a transaction)."""

Params = Sequence[Any] | dict[str, Any] | None


_ENUM_FIELDS: dict[type[Any], tuple[tuple[str, type[enum.Enum]], ...]] = {}


def _enum_fields(cls: type[Any]) -> tuple[tuple[str, type[enum.Enum]], ...]:
    """(field, enum) of each field of `cls` typed as an enum (or an enum or None)."""
    if cls not in _ENUM_FIELDS:
        found: list[tuple[str, type[enum.Enum]]] = []
        for name, hint in typing.get_type_hints(cls).items():
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            options = typing.get_args(hint) if union else (hint,)
            kinds = [o for o in options if isinstance(o, type) and issubclass(o, enum.Enum)]
            if kinds:
                found.append((name, kinds[0]))
        _ENUM_FIELDS[cls] = tuple(found)
    return _ENUM_FIELDS[cls]


def dataclass_row(cls: type[T]) -> AsyncRowFactory[T]:
    """Rows as `cls` (a dataclass whose fields are the query's columns), each column read
    into an enum field given as its enum member (the database answers enums as text)."""
    enums = _enum_fields(cls)

    def factory(cursor: AsyncCursor[Any]) -> RowMaker[T]:
        if cursor.description is None:
            return no_result
        names = [column.name for column in cursor.description]

        def make(values: Sequence[Any]) -> T:
            fields = dict(zip(names, values, strict=True))
            for name, kind in enums:
                value = fields.get(name)
                if value is not None:
                    fields[name] = kind(value)
            return cls(**fields)

        return make

    return factory


@asynccontextmanager
async def _connection(source: Source) -> AsyncIterator[AsyncConnection[Any]]:
    if isinstance(source, AsyncConnection):
        yield source
    else:
        async with source.connection() as conn:
            yield conn


async def fetch_all(source: Source, row: type[T], query: Query, params: Params = None) -> list[T]:
    """Every row of ``query`` as a ``row`` (a dataclass whose fields are its columns)."""
    async with _connection(source) as conn:
        cur = conn.cursor(row_factory=dataclass_row(row))
        await cur.execute(query, params)
        return await cur.fetchall()


async def fetch_one(source: Source, row: type[T], query: Query, params: Params = None) -> T | None:
    """The first row of ``query`` as a ``row``, or None."""
    async with _connection(source) as conn:
        cur = conn.cursor(row_factory=dataclass_row(row))
        await cur.execute(query, params)
        return await cur.fetchone()


def _checked(kind: type[T], value: object) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"the query answered {type(value).__name__}, not {kind.__name__}")
    return value


async def fetch_value(
    source: Source, kind: type[T], query: Query, params: Params = None
) -> T | None:
    """The first column of ``query``'s first row, a ``kind``; None when there is no row
    or the value is NULL. (Cast sums and averages in SQL: PostgreSQL answers numeric.)"""
    async with _connection(source) as conn:
        cur = await conn.execute(query, params)
        found = await cur.fetchone()
        return None if found is None or found[0] is None else _checked(kind, found[0])


async def fetch_values(
    source: Source, kind: type[T], query: Query, params: Params = None
) -> list[T]:
    """The first column of every row of ``query``, each a ``kind`` (never NULL)."""
    async with _connection(source) as conn:
        cur = await conn.execute(query, params)
        return [_checked(kind, r[0]) for r in await cur.fetchall()]


CHECK_AFTER_SECONDS = 5.0
"""A pooled connection checked (a round trip) this recently is handed out unchecked,
unless its socket has something to read."""

_checked_at: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


def _server_spoke(conn: AsyncConnection[Any]) -> bool:
    """Whether an idle connection's socket has something to read (no round trip): the
    server never speaks to an idle connection unasked but to end it (a shutdown or
    restart sends its FATAL, a dead server leaves the socket at end of file)."""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


async def check_connection(conn: AsyncConnection[Any]) -> None:
    """The pool's check on checkout: a round trip (psycopg_pool's own check) only when
    the connection was last checked over CHECK_AFTER_SECONDS ago or the server has said
    something on it since; otherwise nothing (a checkout costs no round trip under load).
    Raises when the connection is broken, so the pool takes another."""
    last = _checked_at.get(conn)
    if (
        last is not None
        and time.monotonic() - last < CHECK_AFTER_SECONDS
        and not conn.broken
        and not _server_spoke(conn)
    ):
        return
    await AsyncConnectionPool.check_connection(conn)
    _checked_at[conn] = time.monotonic()


async def open_pool(
    conninfo: str,
    *,
    role: DbRole,
    max_size: int,
    statement_timeout_seconds: float | None = None,
) -> Pool:
    """The connection pool a service runs on (autocommit connections).

    Every connection sees ``role``'s schemas by name (its search_path), whichever
    role ``conninfo`` logs in as. A connection is checked when it is taken from the
    pool (`check_connection`: a round trip only when it was not checked in the last
    few seconds or the server spoke on it), so a pool that outlived a PostgreSQL
    restart hands out fresh connections instead of broken ones; a statement timeout
    (when given) bounds every query of the service, set when each connection opens. It
    is whole milliseconds, rounded up: PostgreSQL reads 0 as no timeout at all.
    """
    options = [role.search_path]
    if statement_timeout_seconds is not None:
        millis = max(1, math.ceil(statement_timeout_seconds * 1000))
        options.append(f"-c statement_timeout={millis}")
    kwargs: dict[str, Any] = {"autocommit": True, "options": " ".join(options)}
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        kwargs=kwargs,
        check=check_connection,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=30)
    except BaseException:
        await pool.close()
        raise
    return pool
