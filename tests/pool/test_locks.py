"""Locks per key (unit): callers of one key go one at a time, and a key's lock is dropped
once nobody holds or waits for it, so the planter's and payouts' locks do not grow with
every (pooler, block) and farmer ever seen."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import cast

from kalepool.settings import Settings
from pool_service.books.farmers import FarmerStore
from pool_service.books.plantings import PlantingStore
from pool_service.chain_view import ChainView
from pool_service.locks import KeyedLocks
from pool_service.planting import Planter
from pool_service.wallet import WalletClient


async def test_one_key_at_a_time_and_nothing_kept_after() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    inside: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            inside.append("first")
            entered.set()
            await release.wait()
            inside.append("first out")

    async def second() -> None:
        async with locks.hold("a"):
            inside.append("second")

    one = asyncio.create_task(first())
    await entered.wait()
    two = asyncio.create_task(second())
    async with locks.hold("b"):  # another key is not held up
        assert len(locks) == 2
    await asyncio.sleep(0)
    assert inside == ["first"]  # the second waits for the first
    release.set()
    await asyncio.gather(one, two)
    assert inside == ["first", "first out", "second"]
    assert len(locks) == 0


async def test_a_waiter_cancelled_leaves_nothing_behind() -> None:
    locks: KeyedLocks[int] = KeyedLocks()
    async with locks.hold(1):
        waiter = asyncio.create_task(locks.hold(1).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert len(locks) == 1  # still held by this block
    assert len(locks) == 0


async def test_the_planters_locks_are_dropped_after_each_request(tmp_path: Path) -> None:
    planter = Planter(
        cast(FarmerStore, None),
        cast(PlantingStore, None),
        cast(WalletClient, None),
        cast(ChainView, None),
        Settings(network="devnet", data_dir=tmp_path, _env_file=None),  # type: ignore[call-arg]
        lambda _: None,
    )
    for block in range(100):
        async with planter.locks.hold((uuid.uuid4(), block)):
            pass
    assert len(planter.locks) == 0
