"""The agent loop against the real pool: a stop mid-mining reports nothing and saves no
cursor past the cancelled work; a restarted agent mines it again from the saved cursor."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stellar_sdk import Keypair

from kalepool.chain import current_block
from pooler_agent.agent import PoolerAgent
from pooler_agent.block_monitor import BlockMonitor
from pooler_agent.clock import ChainClock
from pooler_agent.pool_client import Backoff, CursorFile, CursorTracker, PoolClient
from pooler_agent.work_manager import WorkManager, WorkTiming
from pooler_agent.work_submitter import ChannelPool, WorkSubmitter
from tests.pool.conftest import KALE, PoolStage, until


def _agent(
    pool: PoolStage, key: str, cursor: Path, channels: list[Keypair], work_delay: float
) -> tuple[PoolerAgent, PoolClient]:
    assert pool.server is not None
    client = PoolClient(
        f"127.0.0.1:{pool.server.port}",
        pool.pki.client("rig-agent"),
        pool.pki.ca_pem,
        key,
        timeout=10.0,
        backoff=Backoff(initial=0.05, maximum=0.5),
    )
    clock = ChainClock()
    manager = WorkManager(
        WorkTiming(
            block_seconds=pool.chain.config.block_seconds,
            work_delay_seconds=work_delay,
            submit_margin_seconds=0,
        ),
        clock,
        capacity=10,
        threads=1,
    )
    agent = PoolerAgent(
        pool=client,
        monitor=BlockMonitor(pool.chain, interval=0.05, clock=clock),
        manager=manager,
        submitter=WorkSubmitter(pool.chain, ChannelPool(pool.chain, channels, clock=clock)),
        cursors=CursorTracker(CursorFile(cursor)),
        heartbeat_seconds=0.5,
        report_linger=0.05,
    )
    return agent, client


async def test_a_stopped_agent_leaves_its_cancelled_work_to_the_restarted_one(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    pooler, key = await pool.register_pooler("rig-agent")
    for _ in range(2):
        await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    channels = await pool.stage.accounts(1)
    cursor = tmp_path / "cursor.json"
    block = (await current_block(pool.chain)).index

    # Mining runs until near the end of an hour-long block: the agent is stopped first.
    agent, client = _agent(pool, key, cursor, channels, work_delay=3000)
    running = asyncio.create_task(agent.run())

    async def mining_both() -> bool:
        return agent.manager.progress().mining_farmers == 2

    try:
        await until(mining_both, 20)
    finally:
        agent.stop()
        stats = await asyncio.wait_for(running, 20)
        await client.close()
    assert stats.assignments == 2 and stats.submitted == 0
    assert await pool.count("works") == 0
    assert CursorFile(cursor).load() == 0

    # The restarted agent is sent both assignments again, mines, submits and reports them.
    agent, client = _agent(pool, key, cursor, channels, work_delay=0)
    running = asyncio.create_task(agent.run())

    async def reported() -> bool:
        return await pool.count("works") == 2

    try:
        await until(reported, 20)
    finally:
        agent.stop()
        stats = await asyncio.wait_for(running, 20)
        await client.close()
    assert stats.assignments == 2 and stats.succeeded == 2
    assert CursorFile(cursor).load() > 0
    assert block == (await current_block(pool.chain)).index
