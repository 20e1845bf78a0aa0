"""The block monitor against the devnet: a new block, a block due to end, RPC failures, stop."""

from __future__ import annotations

import asyncio

from kalepool.chain import Fault, build_plant
from pooler_agent.block_monitor import BlockEvent, BlockEventKind, BlockMonitor
from pooler_agent.clock import ChainClock
from tests.chain.stage import Stage
from tests.waits import until

from .conftest import plant


async def test_new_block_after_another_account_plants(stage: Stage) -> None:
    client = stage.client
    clock = ChainClock()
    monitor = BlockMonitor(client, interval=5.0, clock=clock)
    (first,) = await monitor.poll()
    assert first.kind is BlockEventKind.OPENED and first.initial
    assert first.block is not None and first.block.index == 0 and first.plant_index == 0
    assert clock.synced
    assert await monitor.poll() == []  # nothing changed

    planted = await plant(stage, 1)  # the block's first plant creates Block(0)
    assert await monitor.poll() == []  # same index: nothing to report

    # The block ages past the interval with nobody opening the next one: due, once.
    latest = await client.latest_ledger()
    await stage.advance(planted.block.next_block_at - latest.close_time)
    await stage.close()
    (due,) = await monitor.poll()
    assert due.kind is BlockEventKind.DUE and due.plant_index == 1
    assert await monitor.poll() == []

    # Someone else's plant opens block 1.
    other = (await stage.accounts(1))[0]
    outcome = await stage.run(await build_plant(client, other.public_key, 0), other)
    assert outcome.ok, outcome.describe()
    (opened,) = await monitor.poll()
    assert opened.kind is BlockEventKind.OPENED and not opened.initial
    assert opened.block is not None and opened.block.index == 1 and opened.plant_index == 1
    assert opened.block.entropy == bytes(32)  # nobody worked block 0


async def test_rpc_errors_are_the_chains_and_the_next_tick_recovers(stage: Stage) -> None:
    monitor = BlockMonitor(stage.client, interval=5.0)
    await stage.faults(fail_next={"getLedgerEntries": 100})
    (error,) = await monitor.poll()
    assert error.kind is BlockEventKind.CHAIN_ERROR and error.fault is Fault.CHAIN
    assert error.block is None and error.failures == 1 and error.plant_index is None
    assert error.error is not None and "getLedgerEntries" in error.error
    (again,) = await monitor.poll()
    assert again.failures == 2
    await stage.faults(fail_next={})
    (recovered,) = await monitor.poll()
    assert recovered.kind is BlockEventKind.OPENED and recovered.initial
    assert monitor.failures == 0


async def test_the_loop_polls_each_interval_and_stops_promptly(stage: Stage) -> None:
    monitor = BlockMonitor(stage.client, interval=0.02)
    seen: asyncio.Queue[BlockEvent] = asyncio.Queue()

    async def run() -> None:
        async for event in monitor.events():
            seen.put_nowait(event)

    task = asyncio.create_task(run())
    first = await asyncio.wait_for(seen.get(), timeout=5)
    # A plant in a new ledger is seen by a later tick without any further prodding.
    planted = await plant(stage, 1)
    latest = await stage.client.latest_ledger()
    await stage.advance(planted.block.next_block_at - latest.close_time)
    await stage.close()
    second = await asyncio.wait_for(seen.get(), timeout=5)
    assert [first.kind, second.kind] == [BlockEventKind.OPENED, BlockEventKind.DUE]
    # Stop must not wait for the next tick: once a poll has ended under the new interval,
    # the loop waits an hour for its next one, and stop() ends that wait.
    monitor.interval = 3600.0
    polled = monitor.polls
    await until(lambda: monitor.polls > polled, what="a poll under the hour-long interval")
    monitor.stop()
    await asyncio.wait_for(task, timeout=5)
    assert monitor.stopped
