"""Database health: a `SELECT 1` on a connection of its own, with its latency, behind
the `kalepool_database_up` and `kalepool_database_ping_seconds` gauges of every service
(the pool's monitor runs it each pass; the wallet service on a loop of its own).

A fresh connection each time, not one from the service's pool: "reachable" must mean
a new connection can be made now, which a pooled idle connection does not prove.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psycopg
from prometheus_client import Gauge

from kalepool.masking import redact

DATABASE_UP = Gauge(
    "kalepool_database_up", "1 when the last `SELECT 1` on a new connection answered, else 0."
)
DATABASE_PING_SECONDS = Gauge(
    "kalepool_database_ping_seconds",
    "Seconds the last database health check took (connect and `SELECT 1`).",
)


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """One health check's result; `error` says why it failed (no secret in it)."""

    up: bool
    seconds: float
    error: str = ""


async def check_database(conninfo: str, deadline_seconds: float) -> DatabaseHealth:
    """Connect, `SELECT 1`, disconnect within `deadline_seconds`; the gauges follow."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline_seconds):
            conn = await psycopg.AsyncConnection.connect(
                conninfo, connect_timeout=max(1, int(deadline_seconds)), autocommit=True
            )
            async with conn:
                await conn.execute("SELECT 1")
    except (OSError, TimeoutError, psycopg.Error) as exc:
        seconds = time.monotonic() - started
        DATABASE_UP.set(0)
        DATABASE_PING_SECONDS.set(seconds)
        # libpq messages can name the host and user; redact drops any password in them.
        reason = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        return DatabaseHealth(False, seconds, reason or type(exc).__name__)
    seconds = time.monotonic() - started
    DATABASE_UP.set(1)
    DATABASE_PING_SECONDS.set(seconds)
    return DatabaseHealth(True, seconds)
