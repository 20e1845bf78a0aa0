"""Mining every farmer of a block at once and submitting their work from channel accounts."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from stellar_sdk import Keypair

from kalepool import protocol
from kalepool.chain import (
    FarmError,
    Fault,
    SignedTx,
    SubmitEvent,
    SubmitStep,
    build_plant,
    read_account,
    read_pails,
)
from pooler_agent.clock import ChainClock
from pooler_agent.work_manager import CapacityError, MinedWork, WorkManager, WorkTiming
from pooler_agent.work_submitter import (
    ChannelPool,
    FailureCode,
    WorkResult,
    WorkStatus,
    WorkSubmitter,
)
from tests.chain.stage import Stage
from tests.waits import until

from .conftest import plant, synced_clock


def timing_ending_in(stage: Stage, clock: ChainClock, opened: float, seconds: float) -> WorkTiming:
    """Timing whose mining for a block opened at `opened` ends `seconds` from now."""
    return WorkTiming(
        block_seconds=stage.client.config.block_seconds,
        work_delay_seconds=clock.now() - opened + seconds,
        submit_margin_seconds=0,
    )


async def hashing(manager: WorkManager, farmers: int) -> None:
    """Until `farmers` searches are running and have hashed: the miner really started."""

    def started() -> bool:
        now = manager.progress().farmers
        return sum(1 for f in now if f.running and f.hashes > 0) >= farmers

    await until(started, what=f"{farmers} searches hashing")


def check_hash(work: MinedWork | WorkResult) -> None:
    a = work.assignment
    expected = protocol.kale_hash(a.block_index, work.nonce, a.entropy, a.farmer_bytes)
    assert work.hash == expected and work.zeros == protocol.leading_zeros(expected)


async def test_farmers_mined_at_once_and_their_work_accepted_with_the_contracts_gap(
    stage: Stage,
) -> None:
    client = stage.client
    planted = await plant(stage, 4)
    channels = await stage.accounts(2)
    clock = await synced_clock(stage)
    timing = timing_ending_in(stage, clock, planted.block.timestamp, 2.0)
    manager = WorkManager(timing, clock, capacity=8)
    tasks = [manager.assign(a) for a in planted.assignments]
    # All four search at once on the shared pool.
    await hashing(manager, 4)
    progress = manager.progress()
    assert progress.mining_farmers == 4
    assert {f.farmer_address for f in progress.farmers} == {f.public_key for f in planted.farmers}
    assert all(f.hashes > 0 for f in progress.farmers) and progress.hashes_per_second > 0
    assert set(progress.best_zeros()) == {a.key for a in planted.assignments}
    mined = [await t for t in tasks if t is not None]
    assert len(mined) == 4
    for work in mined:
        assert work.sendable and work.stop_reason == "deadline"
        check_hash(work)
    await stage.close(2)  # let the gap grow

    events: list[SubmitEvent] = []
    pool = ChannelPool(client, channels, clock=clock)
    submitter = WorkSubmitter(client, pool, observe=stage.closer(events=events))
    results = await submitter.submit_all(mined)
    assert [r.status for r in results] == [WorkStatus.SUCCESS] * 4, [r.message for r in results]
    # Two accounts carried four works, never more than one in flight each.
    assert pool.peak_in_flight == 2 and pool.in_flight == 0
    assert {r.channel for r in results} == {c.public_key for c in channels}
    assert SubmitStep.TRY_AGAIN_LATER not in {e.step for e in events}
    pails = await read_pails(client, [a.key for a in planted.assignments])
    for result in results:
        check_hash(result)
        pail = pails[result.assignment.key]
        assert pail is not None and pail.worked
        assert result.gap == pail.gap == result.ledger - result.assignment.plant_ledger
        assert result.gap is not None and result.gap >= 2
        assert pail.zeros == result.zeros and result.fault is Fault.NONE
        assert result.tx_hash and result.submitted_at is not None
    # The pool tracked the sequence numbers itself: they match the chain.
    for channel in channels:
        state = await read_account(client, channel.public_key)
        assert state is not None
        leased = next(ch for ch in pool._channels if ch.address == channel.public_key)
        assert leased.account is not None and leased.account.sequence == state.sequence
    await manager.shutdown()


async def test_one_channel_per_farmer_sends_every_work_at_once(stage: Stage) -> None:
    planted = await plant(stage, 3)
    channels = await stage.accounts(3)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    mined = await manager.mine(planted.assignments)
    assert all(m.stop_reason == "target" and m.zeros >= 1 for m in mined)
    await manager.shutdown()
    sent_before_close: list[str] = []

    async def observe(event: SubmitEvent) -> None:
        if event.step is SubmitStep.SENT:
            sent_before_close.append(event.tx.source)
            if len(sent_before_close) == 3:  # all three queued before any ledger closes
                await stage.close()

    pool = ChannelPool(stage.client, channels, clock=clock)
    results = await WorkSubmitter(stage.client, pool, observe=observe).submit_all(mined)
    assert [r.status for r in results] == [WorkStatus.SUCCESS] * 3, [r.message for r in results]
    assert sorted(sent_before_close) == sorted(c.public_key for c in channels)
    assert len({r.ledger for r in results}) == 1  # one ledger applied them all


async def test_duplicate_assignment_is_ignored(stage: Stage) -> None:
    planted = await plant(stage, 1)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    (assignment,) = planted.assignments
    first = manager.assign(assignment)
    assert first is not None
    assert manager.assign(replace(assignment, cursor=7)) is None  # same (farmer, block)
    assert len(manager.progress().farmers) == 1
    assert len(await manager.mine([assignment, assignment])) == 0
    await first
    assert manager.assign(assignment) is None  # still a duplicate once mined
    await manager.shutdown()


async def test_capacity_is_enforced_and_changes_nothing(stage: Stage) -> None:
    planted = await plant(stage, 2)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, capacity=1
    )
    assert manager.assign(planted.assignments[0]) is not None
    with pytest.raises(CapacityError, match="at most 1"):
        manager.assign(planted.assignments[1])
    assert manager.progress().mining_farmers == 1
    await manager.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        manager.assign(planted.assignments[1])


async def test_shutdown_and_a_new_block_cancel_promptly_and_nothing_is_sent(
    stage: Stage,
) -> None:
    planted = await plant(stage, 2)
    clock = await synced_clock(stage)
    # Mining would run for four minutes.
    manager = WorkManager(timing_ending_in(stage, clock, planted.block.timestamp, 240), clock)
    first, second = (manager.assign(a) for a in planted.assignments)
    assert first is not None and second is not None
    await hashing(manager, 2)
    assert manager.block_opened(planted.block.index + 1) == 1 + 1
    late = await asyncio.wait_for(first, timeout=5)
    assert late.stop_reason == "cancelled" and late.block_closed and not late.sendable
    assert late.elapsed < 60
    check_hash(late)  # the best so far is kept
    # An assignment of the ended block is not mined at all.
    stale = manager.assign(
        replace(planted.assignments[0], farmer_address=planted.farmers[1].public_key, block_index=0)
    )
    assert stale is None  # (farmer, 0) was assigned already

    manager2 = WorkManager(timing_ending_in(stage, clock, planted.block.timestamp, 240), clock)
    task = manager2.assign(planted.assignments[0])
    assert task is not None
    await hashing(manager2, 1)
    await asyncio.wait_for(manager2.shutdown(), timeout=5)
    stopped = task.result()
    assert stopped.cancelled == "the agent shut down" and not stopped.block_closed
    assert stopped.elapsed < 60 and stopped.hashes > 0

    channels = await stage.accounts(1)
    submitter = WorkSubmitter(stage.client, ChannelPool(stage.client, channels, clock=clock))
    for work, code in ((late, FailureCode.WORK_LATE), (stopped, FailureCode.MINER_FAILED)):
        result = await submitter.submit(work)
        assert result.status is WorkStatus.FAILED and result.fault is Fault.POOLER
        assert result.failure is code and result.tx_hash is None
    await manager.shutdown()
    await second


async def test_late_work_after_the_next_block_opened_is_the_poolers_fault(stage: Stage) -> None:
    client = stage.client
    planted = await plant(stage, 1)
    (channel,) = await stage.accounts(1)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    (mined,) = await manager.mine(planted.assignments)
    await manager.shutdown()
    # Someone opens the next block before the work is sent.
    latest = await client.latest_ledger()
    await stage.advance(planted.block.next_block_at - latest.close_time)
    await stage.close()
    other = (await stage.accounts(1))[0]
    assert (await stage.run(await build_plant(client, other.public_key, 0), other)).ok

    pool = ChannelPool(client, [channel], clock=clock)
    submitter = WorkSubmitter(client, pool, observe=stage.closer())
    result = await submitter.submit(mined)
    assert result.status is WorkStatus.FAILED
    assert result.fault is Fault.POOLER
    assert result.failure is FailureCode.PAIL_MISSING
    assert result.contract_error == FarmError.PAIL_MISSING.value == 9
    assert result.error_code == "farm#9" and result.tx_hash is None  # refused in simulation
    # Nothing was sent, so the channel's sequence number is still free for the next work.
    state = await read_account(client, channel.public_key)
    leased = pool._channels[0]
    assert state is not None and leased.account is not None
    assert leased.account.sequence == state.sequence


async def test_a_missing_channel_account_is_the_poolers_fault(stage: Stage) -> None:
    planted = await plant(stage, 1)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    (mined,) = await manager.mine(planted.assignments)
    await manager.shutdown()
    pool = ChannelPool(stage.client, [Keypair.random()], clock=clock)
    result = await WorkSubmitter(stage.client, pool).submit(mined)
    assert result.status is WorkStatus.FAILED and result.fault is Fault.POOLER
    assert result.failure is FailureCode.FEE_ACCOUNT_UNAVAILABLE and pool.in_flight == 0


async def test_rpc_down_during_submission_is_the_chains_fault(stage: Stage) -> None:
    planted = await plant(stage, 1)
    (channel,) = await stage.accounts(1)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    (mined,) = await manager.mine(planted.assignments)
    await manager.shutdown()
    pool = ChannelPool(stage.client, [channel], clock=clock)
    await stage.faults(fail_next={"simulateTransaction": 100})
    result = await WorkSubmitter(stage.client, pool).submit(mined)
    assert result.status is WorkStatus.FAILED and result.fault is Fault.CHAIN
    assert result.failure is FailureCode.CHAIN_UNAVAILABLE and result.tx_hash is None
    # Sends lost for good: the envelope may be in flight, so its fate is pending and the
    # account is held back until its time bound passes.
    await stage.faults(fail_next={"sendTransaction": 100, "getTransaction": 100})
    result = await WorkSubmitter(stage.client, pool).submit(mined)
    assert result.status is WorkStatus.PENDING and result.fault is Fault.CHAIN
    assert result.tx_hash is not None
    assert pool._channels[0].blocked_until is not None and pool._channels[0].stale
    # Followed by hash: nothing while the chain does not answer, then the same envelope
    # is sent again and settles; the account is lent again at once.
    submitter = WorkSubmitter(stage.client, pool, observe=stage.closer())
    still, final = await submitter.settle(result)
    assert still.status is WorkStatus.PENDING and not final and still.envelope == result.envelope
    await stage.faults(fail_next={})
    settled, final = await submitter.settle(result)
    assert final and settled.status is WorkStatus.SUCCESS, settled.message
    assert settled.tx_hash == result.tx_hash and settled.gap is not None and settled.gap >= 1
    assert settled.fault is Fault.NONE and settled.failure is None
    assert pool._channels[0].blocked_until is None and pool._channels[0].stale


async def test_a_due_block_ends_its_searches_early_and_their_work_is_sent(stage: Stage) -> None:
    planted = await plant(stage, 2)
    (channel,) = await stage.accounts(1)
    clock = await synced_clock(stage)
    # Mining would run for four minutes.
    manager = WorkManager(timing_ending_in(stage, clock, planted.block.timestamp, 240), clock)
    first = manager.assign(planted.assignments[0])
    assert first is not None
    await hashing(manager, 1)
    assert manager.finish_block(planted.block.index) == 1
    assert manager.finish_block(planted.block.index) == 0  # once
    finished = await asyncio.wait_for(first, timeout=5)
    assert finished.sendable and finished.stop_reason == "finished" and finished.elapsed < 60
    check_hash(finished)
    # An assignment of that block arriving now is mined briefly, not until its deadline.
    late = manager.assign(planted.assignments[1])
    assert late is not None
    quick = await asyncio.wait_for(late, timeout=5)
    assert quick.sendable and quick.stop_reason == "deadline" and quick.elapsed < 1
    await manager.shutdown()
    submitter = WorkSubmitter(
        stage.client, ChannelPool(stage.client, [channel], clock=clock), observe=stage.closer()
    )
    results = [await submitter.submit(w) for w in (finished, quick)]
    assert [r.status for r in results] == [WorkStatus.SUCCESS] * 2, [r.message for r in results]


async def test_work_that_cannot_be_journaled_is_not_sent(stage: Stage) -> None:
    planted = await plant(stage, 1)
    (channel,) = await stage.accounts(1)
    clock = await synced_clock(stage)
    manager = WorkManager(
        timing_ending_in(stage, clock, planted.block.timestamp, 30), clock, target_zeros=1
    )
    (mined,) = await manager.mine(planted.assignments)
    await manager.shutdown()
    await stage.close()
    pool = ChannelPool(stage.client, [channel], clock=clock)
    journaled: list[str] = []

    async def full_disk(work: MinedWork, tx: SignedTx) -> None:
        raise OSError(28, "No space left on device")

    async def journal(work: MinedWork, tx: SignedTx) -> None:
        journaled.append(tx.hash)

    refused = await WorkSubmitter(stage.client, pool, record=full_disk).submit(mined)
    assert refused.status is WorkStatus.FAILED and refused.tx_hash is None
    assert refused.fault is Fault.POOLER and refused.failure is FailureCode.MINER_FAILED
    assert refused.message is not None and "journal" in refused.message
    assert (await stage.info())["pending_transactions"] == 0
    # Its sequence number is still free: the next work from the account lands.
    submitter = WorkSubmitter(stage.client, pool, record=journal, observe=stage.closer())
    sent = await submitter.submit(mined)
    assert sent.status is WorkStatus.SUCCESS, sent.message
    assert journaled == [sent.tx_hash]
