"""Which block can be planted now, shared by concurrent checks (unit): checks that come
together share one read, and none is answered from a read that began before it asked."""

from __future__ import annotations

import asyncio

import pytest

from kalepool.chain import CurrentBlock, Plantable, PlantableReads

OPENED = 1_000_000


class _Farm:
    """A read of the farm that waits until released, numbering its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def read(self) -> Plantable:
        self.reads += 1
        number = self.reads
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        current = CurrentBlock(7, OPENED, None, OPENED + 300, False, None, 99)
        return Plantable(current, OPENED + number, 100 + number)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_checks_that_come_together_share_one_read() -> None:
    farm = _Farm()
    reads = PlantableReads(farm.read)
    checks = [asyncio.create_task(reads.get(fresh=True)) for _ in range(20)]
    await _settle()
    farm.release.set()
    got = await asyncio.gather(*checks)
    assert farm.reads == 1
    assert {p.latest_ledger for p in got} == {101}


async def test_a_check_never_takes_a_read_begun_before_it() -> None:
    farm = _Farm()
    reads = PlantableReads(farm.read)
    first = asyncio.create_task(reads.get(fresh=True))
    await _settle()  # the first read is under way
    later = [asyncio.create_task(reads.get(fresh=True)) for _ in range(5)]
    await _settle()
    assert farm.reads == 1  # the later checks wait for a read of their own
    farm.release.set()
    assert (await first).latest_ledger == 101
    got = await asyncio.gather(*later)
    assert farm.reads == 2 and {p.latest_ledger for p in got} == {102}


async def test_a_recent_read_answers_checks_that_need_not_be_fresh() -> None:
    farm = _Farm()
    farm.release.set()
    reads = PlantableReads(farm.read, max_age=3600)
    first = await reads.get()
    assert await reads.get() is first and farm.reads == 1
    fresh = await reads.get(fresh=True)
    assert farm.reads == 2 and fresh.latest_ledger == 102
    assert await reads.get() is fresh
    never = PlantableReads(farm.read)  # max_age 0: every call reads
    await never.get()
    await never.get()
    assert farm.reads == 4


async def test_a_failed_read_fails_every_check_sharing_it_and_the_next_reads_again() -> None:
    farm = _Farm()
    farm.fail = ConnectionError("rpc down")
    reads = PlantableReads(farm.read)
    checks = [asyncio.create_task(reads.get(fresh=True)) for _ in range(3)]
    await _settle()
    farm.release.set()
    for outcome in await asyncio.gather(*checks, return_exceptions=True):
        assert isinstance(outcome, ConnectionError)
    farm.fail = None
    assert (await reads.get(fresh=True)).latest_ledger == 102
    assert farm.reads == 2


async def test_a_cancelled_check_leaves_the_shared_read_to_the_others() -> None:
    farm = _Farm()
    reads = PlantableReads(farm.read)
    gone = asyncio.create_task(reads.get(fresh=True))
    stays = asyncio.create_task(reads.get(fresh=True))
    await _settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    farm.release.set()
    assert (await stays).latest_ledger == 101
    assert farm.reads == 1
