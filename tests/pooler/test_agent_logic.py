"""The agent's own decisions, on fakes: what to plant when (the late-arrival judgement,
the DUE sequencing, asking again after a refusal), following a pending work, and
reporting a journaled one after a restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from kalepool.chain import CurrentBlock
from kalepool.v1 import records_pb2
from pooler_agent.agent import PoolerAgent
from pooler_agent.block_monitor import PlantAction, plan_plant
from pooler_agent.journal import WorkJournal
from pooler_agent.pool_client import Backoff, CursorFile, CursorTracker
from pooler_agent.work_manager import MinedWork
from pooler_agent.work_submitter import WorkStatus
from tests.waits import until

from .fakes import FakeChain, FakePool, FakeSubmitter, farmer_assignment, make_agent, signed


async def ticks(chain: FakeChain, count: int = 5) -> None:
    """Until the monitor read the chain `count` more times (the agent looked again)."""
    start = chain.reads
    await until(lambda: chain.reads >= start + count)


@asynccontextmanager
async def running(agent: PoolerAgent) -> AsyncIterator[asyncio.Task[object]]:
    task: asyncio.Task[object] = asyncio.create_task(agent.run())  # type: ignore[arg-type]
    try:
        yield task
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


def _cursors(tmp_path: Path) -> CursorTracker:
    return CursorTracker(CursorFile(tmp_path / "cursor.json"))


# --- plan_plant: the decision alone --------------------------------------------------------


def _block(index: int = 7, next_at: int = 1300, paused: bool = False) -> CurrentBlock:
    return CurrentBlock(index, next_at - 300, bytes(32), next_at, paused, None, 1)


@pytest.mark.parametrize(
    ("now", "planted", "holding", "action", "block"),
    [
        (1000, (), False, PlantAction.PLANT, 7),  # 300 s left: plant the current block
        (1269, (), False, PlantAction.PLANT, 7),  # 31 s left: still enough
        (1271, (), False, PlantAction.SKIP, 7),  # 29 s left: too late to work it
        (1100, (7,), False, PlantAction.WAIT, None),  # planted already
        (1300, (), False, PlantAction.PLANT, 8),  # due, nothing held: open the next
        (1300, (7,), True, PlantAction.FINISH, 7),  # due, work of 7 held: finish it first
        (1400, (7,), True, PlantAction.FINISH, 7),
        (1300, (7, 8), True, PlantAction.WAIT, None),  # 8 asked for already
        (1350, (), False, PlantAction.PLANT, 8),  # arrived after it was due: skip 7 entirely
    ],
)
def test_what_to_plant(
    now: float,
    planted: tuple[int, ...],
    holding: bool,
    action: PlantAction,
    block: int | None,
) -> None:
    plan = plan_plant(_block(), now, min_window=30, planted=planted, holding=holding)
    assert (plan.action, plan.block) == (action, block)
    assert plan.seconds_left == 1300 - now


def test_a_paused_farm_is_not_planted() -> None:
    plan = plan_plant(_block(paused=True), 1000, min_window=30, planted=(), holding=False)
    assert plan.action is PlantAction.WAIT


# --- the agent on fakes --------------------------------------------------------------------


@pytest.mark.parametrize("seconds_ago", [280, 400])
async def test_a_newcomer_late_in_a_block_skips_it_and_plants_the_next_when_due(
    tmp_path: Path, seconds_ago: int
) -> None:
    chain = FakeChain()
    chain.opened(7, seconds_ago)  # 20 s left, or due 100 s ago
    pool = FakePool()
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    async with running(agent):
        if seconds_ago < 300:
            await ticks(chain)
            assert pool.plants == [] and agent.stats.blocks_skipped == 1
            chain.close(25)  # now due
        await until(lambda: pool.plants == [8])
        await ticks(chain)
    assert pool.plants == [8]  # block 7 was never planted, so none of its work is lost


async def test_a_due_block_is_finished_and_its_work_settled_before_the_next_is_planted(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool()
    submitter = FakeSubmitter()
    submitter.release.clear()  # the work transaction is slow to settle
    agent = make_agent(chain, pool, submitter, _cursors(tmp_path))
    assignment = farmer_assignment(7, chain.block.timestamp, cursor=1)
    async with running(agent):
        await until(lambda: pool.plants == [7])
        pool.stream.put_nowait(assignment.to_proto())
        await until(lambda: agent.manager.progress().mining_farmers == 1)
        chain.close(200)  # the block is due while its farmer is still being mined
        await until(lambda: len(submitter.submitted) == 1)
        mined = submitter.submitted[0]
        # Mining ended early, its best hash sent (not cancelled: no WORK_LATE).
        assert mined.sendable and mined.stop_reason == "finished" and mined.hashes > 0
        await ticks(chain)
        assert pool.plants == [7], "block 8 was planted while the work of 7 was unsettled"
        submitter.release.set()
        await until(lambda: pool.plants == [7, 8])
        await until(
            lambda: pool.reported(assignment.farmer_id) == [records_pb2.EVENT_STATUS_SUCCEEDED]
        )
    assert agent.stats.succeeded == 1 and agent.stats.failed == 0


async def test_assignments_of_a_finished_block_are_sent_at_once(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool()
    submitter = FakeSubmitter()
    submitter.release.clear()
    agent = make_agent(chain, pool, submitter, _cursors(tmp_path))
    first = farmer_assignment(7, chain.block.timestamp, cursor=1)
    late = farmer_assignment(7, chain.block.timestamp, cursor=2)
    async with running(agent):
        await until(lambda: pool.plants == [7])
        pool.stream.put_nowait(first.to_proto())
        await until(lambda: agent.manager.progress().mining_farmers == 1)
        chain.close(200)
        await until(lambda: len(submitter.submitted) == 1)
        pool.stream.put_nowait(late.to_proto())  # arrives after its block was due
        await until(lambda: len(submitter.submitted) == 2)  # a short search, not the block's
        assert pool.plants == [7]
        submitter.release.set()
        await until(lambda: pool.plants == [7, 8])
    assert [m.sendable for m in submitter.submitted] == [True, True]


async def test_a_block_planted_whose_assignments_have_not_arrived_is_held(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool(timeout=30.0, planted_farmers=["farmer-late"])
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    async with running(agent):
        await until(lambda: pool.plants == [7])
        chain.close(200)  # due before the planted farmer's assignment came
        await ticks(chain)
        assert pool.plants == [7]
        assignment = farmer_assignment(7, chain.block.timestamp, cursor=1)
        message = assignment.to_proto()
        message.farmer_id = "farmer-late"
        pool.stream.put_nowait(message)
        await until(lambda: pool.plants == [7, 8])


async def test_a_refused_or_failed_due_plant_is_asked_again_until_answered(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 301)  # due
    pool = FakePool(
        plant_failures=[
            grpc.StatusCode.FAILED_PRECONDITION,  # the pool's view of the chain lags ours
            grpc.StatusCode.UNAVAILABLE,  # the pool is away
            grpc.StatusCode.FAILED_PRECONDITION,
        ]
    )
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    async with running(agent):
        await until(lambda: pool.plants == [8, 8, 8, 8])
        await ticks(chain)
    assert pool.plants == [8, 8, 8, 8]  # answered once: not asked again
    assert agent.stats.plant_refused == 2 and agent.stats.plant_errors == 1


async def test_a_contract_hold_is_not_asked_again_at_once_even_in_a_new_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool(plant_holds=1)
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    agent.hold_backoff = Backoff(initial=600, maximum=600)
    with caplog.at_level(logging.INFO, logger="pooler_agent.agent"):
        async with running(agent):
            await until(lambda: pool.plants == [7])
            await ticks(chain)
            # A new block would be asked for at once after any other refusal.
            chain.opened(8, 10)
            await ticks(chain, 10)
    assert pool.plants == [7]
    assert agent.stats.plant_held == 1 and agent.stats.plant_refused == 1
    [held] = [r for r in caplog.records if "the pool holds plants" in r.getMessage()]
    assert held.levelno == logging.WARNING and "the farm is paused" in held.getMessage()
    assert "asking again in 600 s" in held.getMessage()


async def test_plants_resume_after_a_contract_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool(plant_holds=2)
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    agent.hold_backoff = Backoff(initial=0.05, maximum=0.1)
    with caplog.at_level(logging.INFO, logger="pooler_agent.agent"):
        async with running(agent):
            await until(lambda: pool.plants == [7, 7, 7])
            await ticks(chain)
    assert pool.plants == [7, 7, 7] and agent.stats.plant_held == 2
    levels = [r.levelno for r in caplog.records if "the pool holds plants" in r.getMessage()]
    assert levels == [logging.WARNING, logging.INFO]  # loud once per hold
    assert any("the pool plants again" in r.getMessage() for r in caplog.records)


async def test_a_due_plant_that_planted_nobody_is_asked_again(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.opened(7, 301)  # due
    pool = FakePool(nobody_planted=2)  # every farmer's plant failed: block 8 did not open
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    async with running(agent):
        await until(lambda: pool.plants == [8, 8, 8])
        await ticks(chain)
    assert pool.plants == [8, 8, 8] and agent.stats.plant_errors == 2


async def test_a_refused_plant_of_the_current_block_is_asked_again_while_it_is_open(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool(plant_failures=[grpc.StatusCode.INTERNAL])
    agent = make_agent(chain, pool, FakeSubmitter(), _cursors(tmp_path))
    async with running(agent):
        await until(lambda: pool.plants == [7, 7])
        # Another block opened meanwhile: it is the one planted now, not 7.
        chain.opened(9, 10)
        await until(lambda: pool.plants == [7, 7, 9])


async def test_a_pending_work_is_followed_until_settled_and_reported_again(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool()
    submitter = FakeSubmitter(max_time=chain.close_time + 1000)
    submitter.status = WorkStatus.PENDING
    submitter.settles = [(WorkStatus.PENDING, False), (WorkStatus.PENDING, False)]
    agent = make_agent(chain, pool, submitter, _cursors(tmp_path), target_zeros=0)
    assignment = farmer_assignment(7, chain.block.timestamp, cursor=1)
    async with running(agent):
        await until(lambda: pool.plants == [7])
        pool.stream.put_nowait(assignment.to_proto())
        await until(lambda: len(submitter.followed) >= 1)
        chain.close(200)  # due while the work's fate is unknown and it may still apply
        await until(lambda: len(submitter.followed) == 3)
        await until(
            lambda: pool.reported(assignment.farmer_id)[-1:] == [records_pb2.EVENT_STATUS_SUCCEEDED]
        )
        await until(lambda: pool.plants == [7, 8])
    # Reported pending first (unless the outcome came before that report left), then
    # with its real outcome; followed by the same envelope each time.
    assert pool.reported(assignment.farmer_id) in (
        [records_pb2.EVENT_STATUS_PENDING, records_pb2.EVENT_STATUS_SUCCEEDED],
        [records_pb2.EVENT_STATUS_SUCCEEDED],
    )
    assert len({r.tx_hash for r in submitter.followed}) == 1


async def test_an_unsettled_work_past_its_time_bound_does_not_hold_the_next_block(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    pool = FakePool()
    submitter = FakeSubmitter(max_time=chain.close_time + 250)
    submitter.status = WorkStatus.PENDING
    submitter.settles = [(WorkStatus.PENDING, False)] * 10_000  # the chain never answers
    agent = make_agent(chain, pool, submitter, _cursors(tmp_path), target_zeros=0)
    async with running(agent):
        await until(lambda: pool.plants == [7])
        pool.stream.put_nowait(farmer_assignment(7, chain.block.timestamp, cursor=1).to_proto())
        await until(lambda: len(submitter.followed) >= 1)
        chain.close(200)  # due, but the envelope may still apply until max_time
        await ticks(chain)
        assert pool.plants == [7]
        chain.close(100)  # past its max_time: it can no longer apply
        await until(lambda: pool.plants == [7, 8])


async def test_work_journaled_before_a_restart_is_followed_reported_and_not_mined_again(
    tmp_path: Path,
) -> None:
    chain = FakeChain()
    chain.opened(7, 100)
    journal = WorkJournal(tmp_path / "journal.jsonl")
    assignment = farmer_assignment(7, chain.block.timestamp, cursor=5)
    sent = MinedWork(assignment, 42, bytes(32), 64, 1000, 1.0, "deadline")
    tx = signed(chain.close_time + 60)
    await journal.record(sent, tx)

    # The restarted agent: a new journal object on the same file.
    journal = WorkJournal(tmp_path / "journal.jsonl")
    assert [e.tx_hash for e in journal.unreported] == [tx.hash]
    pool = FakePool()
    submitter = FakeSubmitter()
    cursors = _cursors(tmp_path)
    agent = make_agent(chain, pool, submitter, cursors, journal=journal)
    async with running(agent):
        await until(
            lambda: pool.reported(assignment.farmer_id) == [records_pb2.EVENT_STATUS_SUCCEEDED]
        )
        # The pool sends the assignment again (its cursor was never saved): not mined.
        pool.stream.put_nowait(assignment.to_proto())
        await until(lambda: cursors.saved == 5)
        await ticks(chain)
    assert submitter.submitted == [] and [r.tx_hash for r in submitter.followed] == [tx.hash]
    assert submitter.channels.held == [(tx.source, tx.max_time)]
    assert agent.stats.recovered == 1
    assert WorkJournal(tmp_path / "journal.jsonl").unreported == []
