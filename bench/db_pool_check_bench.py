"""What the service pools' check on checkout costs: psycopg_pool's own check (a round
trip at every checkout, what the pools did before) beside kalepool.db.reads'
check_connection (a round trip only for a connection not checked in the last few
seconds, or one the server spoke on), in the same run against one embedded PostgreSQL.

Each pool (4 connections) serves R rounds of C concurrent checkouts of one
`SELECT 1`, the two pools taking turns round by round. CPU time of this process
(time.process_time) and wall time per checkout are printed, and the server's
statements are not counted. No assertion.

    .venv/bin/python bench/db_pool_check_bench.py --rounds 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from kalepool.db.embedded import start_embedded
from kalepool.db.reads import check_connection

Check = Callable[[AsyncConnection[Any]], Awaitable[None]]


async def _round(pool: AsyncConnectionPool[AsyncConnection[Any]], concurrency: int) -> None:
    async def one() -> None:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")

    await asyncio.gather(*(one() for _ in range(concurrency)))


async def _main(conninfo: str, rounds: int, concurrency: int) -> dict[str, Any]:
    checks: dict[str, Check] = {
        "every checkout (before)": AsyncConnectionPool.check_connection,
        "checked within 5 s or the server spoke (now)": check_connection,
    }
    pools = {}
    for name, check in checks.items():
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo, min_size=4, max_size=4, kwargs={"autocommit": True}, check=check, open=False
        )
        await pool.open(wait=True)
        await _round(pool, concurrency)  # warm
        pools[name] = pool
    cpu = dict.fromkeys(pools, 0.0)
    wall = dict.fromkeys(pools, 0.0)
    for _ in range(rounds):
        for name, pool in pools.items():
            c0, w0 = time.process_time(), time.monotonic()
            await _round(pool, concurrency)
            cpu[name] += time.process_time() - c0
            wall[name] += time.monotonic() - w0
    for pool in pools.values():
        await pool.close()
    n = rounds * concurrency
    return {
        name: {
            "cpu_us_per_checkout": cpu[name] / n * 1e6,
            "wall_us_per_checkout": wall[name] / n * 1e6,
        }
        for name in pools
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = start_embedded(Path(tempfile.mkdtemp(prefix="kale-pool-check-bench-")) / "pg")
    try:
        figures = asyncio.run(_main(server.conninfo, args.rounds, args.concurrency))
    finally:
        server.release()
    for name, f in figures.items():
        print(
            f"{name}: {f['cpu_us_per_checkout']:.0f} µs CPU, "
            f"{f['wall_us_per_checkout']:.0f} µs wall per checkout and statement"
        )
    before, now = (f["cpu_us_per_checkout"] for f in figures.values())
    print(f"CPU ratio before / now: {before / now:.2f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
