"""The plant reconciler's pace: it takes only requests older than the plant deadline,
oldest-attempted first, counting each pass as an attempt and waiting longer after each
one that stays pending (on real PostgreSQL), and asks the wallet about a few at once
through a limit of its own, never through the one RequestPlant calls share (unit)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from kalepool.db.reads import Pool, open_pool
from kalepool.db.roles import POOL
from kalepool.settings import Settings
from pool_service.books.farmers import FarmerStore
from pool_service.books.plantings import PlantingRow, PlantingStore, PlantRequestRow
from pool_service.books.poolers import PoolerStore
from pool_service.planting import Planter
from pool_service.reconcile import PlantReconciler
from tests.dbkit import service_conninfo

DEADLINE = 30.0
LONGEST = 300.0


@pytest.fixture
async def pool(db_conninfo: str) -> AsyncIterator[Pool]:
    pool: Pool = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def _farmers(pool: Pool, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    from stellar_sdk import Keypair

    pooler = await PoolerStore(pool).insert_pooler(
        "rig", Keypair.random().public_key, 100, b"k" * 32, "kp_x"
    )
    farmers = []
    for _ in range(count):
        farmer, _ = await FarmerStore(pool).insert_farmer(
            uuid.uuid4(), pooler.id, Keypair.random().public_key, Keypair.random().public_key, 0
        )
        farmers.append(farmer.id)
    return pooler.id, farmers


async def _request(
    conninfo: str,
    pooler: uuid.UUID,
    farmer: uuid.UUID,
    *,
    opened_ago: float,
    attempted_ago: float,
    attempts: int,
    settled: bool = False,
) -> int:
    """A request written as a pool would have left it, its times set in the past."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "INSERT INTO plant_requests (idempotency_key, farmer_id, pooler_id, block_index,"
            " stake_amount, attempts, requested_at, opened_at, updated_at, settled_at)"
            " VALUES (%(key)s, %(farmer)s, %(pooler)s, 7, 10, %(attempts)s,"
            " now() - make_interval(secs => %(opened)s), now() - make_interval(secs => %(opened)s),"
            " now() - make_interval(secs => %(attempted)s), CASE WHEN %(settled)s THEN now() END)"
            " RETURNING id",
            {
                "key": f"plant:{farmer}:7",
                "farmer": farmer,
                "pooler": pooler,
                "attempts": attempts,
                "opened": opened_ago,
                "attempted": attempted_ago,
                "settled": settled,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_only_requests_past_the_deadline_and_their_backoff_are_taken(
    pool: Pool, db_conninfo: str
) -> None:
    store = PlantingStore(pool)
    pooler, farmers = await _farmers(pool, 8)
    made = {}
    for name, farmer, opened, attempted, attempts in [
        ("in flight", farmers[0], 5, 5, 1),  # a first call may be asking right now
        ("past its deadline", farmers[1], 40, 40, 1),
        ("stuck, waiting", farmers[2], 500, 100, 3),  # waits 30 * 2^2 = 120 s
        ("stuck, due", farmers[3], 500, 130, 3),
        ("long stuck, due", farmers[4], 5000, 301, 12),  # waits at most 300 s
        ("reopened just now", farmers[5], 5, 5, 2),  # a repeat after a failure
        ("oldest attempt", farmers[6], 9000, 9000, 1),
    ]:
        made[name] = await _request(
            db_conninfo,
            pooler,
            farmer,
            opened_ago=opened,
            attempted_ago=attempted,
            attempts=attempts,
        )
    settled = await _request(
        db_conninfo, pooler, farmers[7], opened_ago=900, attempted_ago=900, attempts=1, settled=True
    )

    taken = await store.take_unsettled_plant_requests(10, DEADLINE, LONGEST)
    # Oldest-attempted first; each counted as an attempt.
    assert [r.id for r in taken] == [
        made["oldest attempt"],
        made["long stuck, due"],
        made["stuck, due"],
        made["past its deadline"],
    ]
    assert [r.attempts for r in taken] == [2, 13, 4, 2]
    assert all(r.age() >= DEADLINE for r in taken) and settled not in {r.id for r in taken}
    # Taken: another replica's pass (or the next one) leaves them alone for now.
    assert await store.take_unsettled_plant_requests(10, DEADLINE, LONGEST) == []
    # A limit, and what this process is asking about itself, are respected.
    again = await store.take_unsettled_plant_requests(10, 0, 0, busy=[made["in flight"]])
    assert made["in flight"] not in {r.id for r in again} and len(again) == 6
    assert len(await store.take_unsettled_plant_requests(2, 0, 0)) == 2


class _Driving:
    """A planter whose drive waits until released, counting how many run at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.watch = None  # no contract watch: every request may be sent
        self.driving: set[int] = set()
        self.running = 0
        self.most = 0
        self.limits: set[int] = set()
        self.release = asyncio.Event()
        self.busy = asyncio.Event()  # set once `full` drives run at once
        self.full = 0

    async def drive(
        self, request: PlantRequestRow, limit: asyncio.Semaphore | None = None
    ) -> PlantingRow | None:
        assert limit is not None
        self.limits.add(id(limit))
        async with limit:
            self.running += 1
            self.most = max(self.most, self.running)
            if self.running >= self.full:
                self.busy.set()
            await self.release.wait()
            self.running -= 1
        return None


class _Requests:
    def __init__(self, count: int) -> None:
        self.count = count
        self.asked: list[Any] = []

    async def take_unsettled_plant_requests(self, *args: Any, **kwargs: Any) -> list[Any]:
        self.asked.append((args, kwargs))
        return [
            PlantRequestRow(i, f"plant:{i}", uuid.uuid4(), uuid.uuid4(), 7, 1, 2, None, None, "G")
            for i in range(self.count)
        ]


async def test_the_reconciler_drives_a_few_at_once_through_its_own_limit(tmp_path: Path) -> None:
    settings = Settings(
        network="devnet",
        data_dir=tmp_path,
        _env_file=None,
        plant_concurrency=16,
        plant_timeout_seconds=DEADLINE,
    )  # type: ignore[call-arg]
    planter = _Driving(settings)
    requests = _Requests(40)
    reconciler = PlantReconciler(cast(PlantingStore, requests), cast(Planter, planter))
    assert reconciler.concurrency == 4  # a quarter of the plant concurrency
    planter.driving.add(3)
    planter.full = reconciler.concurrency
    task = asyncio.create_task(reconciler.reconcile())
    await asyncio.wait_for(planter.busy.wait(), 5)
    planter.release.set()
    assert await task == 0
    assert planter.most == reconciler.concurrency and len(planter.limits) == 1
    ((args, kwargs),) = requests.asked
    assert args == (reconciler.batch, DEADLINE, DEADLINE * 10) and kwargs == {"busy": [3]}
