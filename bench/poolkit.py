"""What the pool benches share: a throwaway PostgreSQL with the migrations applied, the
pool's test stage on it (in-process devnet, the real wallet and pool servers on
127.0.0.1 over mutual TLS: `tests.pool.conftest.pool_stage`), poolers and farmers
registered through the pool's own API, and percentiles.

The stage is the one the integration tests use, so the benches exercise exactly the code
the tests prove; nothing here re-implements the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stellar_sdk import Keypair

from kalepool.db.embedded import start_embedded
from kalepool.db.migrate import apply_migrations
from kalepool.tls import DevPki
from kalepool.v1 import pool_pb2
from tests.conftest import PgServer
from tests.dbkit import owner_view
from tests.pool.conftest import PoolStage, pool_stage

# Limits high enough that the benches measure the services, not their rate limits.
OPEN_LIMITS: dict[str, Any] = {
    "rate_limit_requests_per_minute": 10_000_000,
    "rate_limit_operator_per_minute": 10_000_000,
    "rate_limit_failed_auth_per_minute": 10_000_000,
    "rate_limit_wallet_per_minute": 10_000_000,
    "max_farmers_per_pooler": 100_000,
}


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[PgServer, str]]:
    """An embedded PostgreSQL in a temporary directory (tmpfs when there is one) and a
    database built from the migrations: (server, the owner's conninfo)."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="kale-pool-bench-pg-", dir=shm if shm.is_dir() else None))
    embedded = start_embedded(base / "postgres")
    server = PgServer(embedded.admin_conninfo)
    try:
        name = server.create_database()
        apply_migrations(server.conninfo(name))
        yield server, owner_view(server.conninfo(name))
    finally:
        server.drop_all()
        embedded.release()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Pooler:
    pooler_id: str
    api_key: str
    cert: str  # the name of its client certificate in the stage's PKI
    farmer_ids: list[str] = field(default_factory=list)

    @property
    def auth(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.api_key}"),)


@contextlib.asynccontextmanager
async def staged_pool(
    conninfo: str, devnet: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[PoolStage]:
    """The pool's test stage on `conninfo` (the devnet given `devnet`'s settings),
    restarted with open limits (and `settings`)."""
    with tempfile.TemporaryDirectory(prefix="kale-pool-bench-pki-") as certs:
        async with pool_stage(conninfo, DevPki(Path(certs)), **(devnet or {})) as stage:
            await stage.start(**(OPEN_LIMITS | settings))
            yield stage


async def register(stage: PoolStage, poolers: int, farmers: int, limit: int = 16) -> list[Pooler]:
    """`poolers` poolers with `farmers` farmers each, through PoolService (the operator's
    RegisterPooler and RegisterFarmer: the wallet creates each custodial account)."""
    made: list[Pooler] = []
    for i in range(poolers):
        # One place to spare: the farmer a bench may plant for real to open a block.
        pooler, key = await stage.register_pooler(f"bench-{i}", max_farmers=farmers + 1)
        made.append(Pooler(pooler.pooler_id, key, f"bench-{i}"))
    op = stage.operator()
    gate = asyncio.Semaphore(limit)

    async def one(p: Pooler) -> None:
        async with gate:
            got = await op.RegisterFarmer(
                pool_pb2.RegisterFarmerRequest(
                    pooler_id=p.pooler_id, payout_address=Keypair.random().public_key
                )
            )
            p.farmer_ids.append(got.farmer.farmer_id)

    started = time.monotonic()
    await asyncio.gather(*(one(p) for p in made for _ in range(farmers)))
    took = time.monotonic() - started
    print(f"registered {poolers} poolers x {farmers} farmers in {took:.1f} s", flush=True)
    return made


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max (in the unit given) of a non-empty sample."""
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"n": len(values), "p50": qs[49], "p95": qs[94], "p99": qs[98], "max": max(values)}


def ms(p: dict[str, float]) -> str:
    """The percentiles of a sample in seconds, as milliseconds."""
    return (
        f"p50 {p['p50'] * 1e3:7.2f}  p95 {p['p95'] * 1e3:7.2f}  p99 {p['p99'] * 1e3:7.2f}"
        f"  max {p['max'] * 1e3:7.2f} ms  (n={int(p['n'])})"
    )
