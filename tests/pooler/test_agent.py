"""The agent loop against the real pool, wallet and devnet: a stop mid-mining reports
nothing and saves no cursor past the cancelled work; a late arrival does not lose its first
block; a due block is finished before the next is planted; a refused or failed plant is
asked again until a block opens; a work of unknown fate is reported with its real outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from stellar_sdk import Keypair

from kalepool.chain import CurrentBlock, current_block
from kalepool.settings import Settings
from kalepool.tls import POOL_CLIENT, POOL_SERVER
from pool_service.server import PoolServer, start_pool_server
from pooler_agent.agent import PoolerAgent
from pooler_agent.block_monitor import BlockMonitor
from pooler_agent.clock import ChainClock
from pooler_agent.journal import WorkJournal
from pooler_agent.pool_client import (
    Backoff,
    CursorFile,
    CursorTracker,
    PoolClient,
    ReportOutcome,
)
from pooler_agent.work_manager import WorkManager, WorkTiming
from pooler_agent.work_submitter import ChannelPool, WorkResult, WorkStatus, WorkSubmitter
from tests.pool.conftest import KALE, PoolStage, until
from tests.wallet.conftest import Closer


def _agent(
    pool: PoolStage,
    key: str,
    cursor: Path,
    channels: list[Keypair],
    work_delay: float,
    *,
    port: int | None = None,
    min_work_window: float = 30.0,
) -> tuple[PoolerAgent, PoolClient]:
    assert pool.server is not None
    client = PoolClient(
        f"127.0.0.1:{port or pool.server.port}",
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
        journal=WorkJournal(cursor.with_name("journal.jsonl")),
        heartbeat_seconds=0.5,
        report_linger=0.05,
        min_work_window=min_work_window,
        follow_backoff=Backoff(initial=0.05, maximum=0.2),
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


# --- blocks: late arrivals, due blocks, refused plants ------------------------------------


async def _rows(pool: PoolStage, query: str, *args: object) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(query, args)
        return list(await cur.fetchall())


async def _works(pool: PoolStage, block: int, status: str = "success") -> int:
    rows = await _rows(
        pool, "SELECT count(*) FROM works WHERE block_index = %s AND status = %s", block, status
    )
    return int(rows[0][0])


async def _make_due(pool: PoolStage) -> CurrentBlock:
    """Move the chain's clock so that the current block is due (the next plant opens the
    next block); returns the block as it was."""
    now = await current_block(pool.chain)
    latest = await pool.chain.latest_ledger()
    await pool.stage.advance(max(now.next_block_at - latest.close_time, 0))

    async def due() -> bool:
        return (await pool.chain.latest_ledger()).close_time >= now.next_block_at

    await until(due)
    return now


@asynccontextmanager
async def _running(agent: PoolerAgent, client: PoolClient) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.run())
    try:
        yield
    finally:
        agent.stop()
        await asyncio.wait_for(task, 30)
        await client.close()


async def _rig(pool: PoolStage, name: str, farmers: int) -> tuple[str, list[str], list[Keypair]]:
    await pool.start(rate_limit_requests_per_minute=100_000)
    # The agents of these tests present the certificate `rig-agent` (see `_agent`).
    pooler, key = await pool.register_pooler(name, certificate="rig-agent")
    ids = [
        (await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)).farmer_id
        for _ in range(farmers)
    ]
    return key, ids, await pool.stage.accounts(2)


async def test_an_agent_arriving_after_a_block_is_due_skips_it_and_loses_no_work(
    pool: PoolStage, tmp_path: Path
) -> None:
    key, _, channels = await _rig(pool, "rig-late", 2)
    old = await _make_due(pool)
    # The newcomer sees block N already due: it plants N + 1 (which opens it), not N,
    # whose work its own plant would have made late.
    agent, client = _agent(pool, key, tmp_path / "cursor.json", channels, work_delay=0)
    async with _running(agent, client):

        async def worked() -> bool:
            return await _works(pool, old.index + 1) == 2

        await until(worked, 30)
    assert await pool.count("works") == 2  # all of them landed; none late, none failed
    planted = await _rows(pool, "SELECT DISTINCT block_index FROM plantings")
    assert planted == [(old.index + 1,)]
    assert (await current_block(pool.chain)).index == old.index + 1


async def test_a_due_block_is_finished_and_settled_before_the_agent_opens_the_next(
    pool: PoolStage, tmp_path: Path
) -> None:
    key, _, channels = await _rig(pool, "rig-due", 2)
    block = (await current_block(pool.chain)).index
    # Mining would run to the end of the hour-long block.
    agent, client = _agent(pool, key, tmp_path / "cursor.json", channels, work_delay=3000)
    async with _running(agent, client):

        async def mining_both() -> bool:
            return agent.manager.progress().mining_farmers == 2

        await until(mining_both, 20)
        await _make_due(pool)  # due while both are still being mined

        async def next_opened() -> bool:
            return (await current_block(pool.chain)).index == block + 1

        await until(next_opened, 30)

        # The chain settled both works before the plant; their reports may trail it.
        async def both_reported() -> bool:
            return await pool.count("works") == 2

        await until(both_reported, 30)
    assert await _works(pool, block) == 2
    # Both works landed before the agent's own plant opened the next block.
    (last_work,) = await _rows(pool, "SELECT max(ledger) FROM works WHERE block_index = %s", block)
    (first_plant,) = await _rows(
        pool, "SELECT min(ledger) FROM plantings WHERE block_index = %s", block + 1
    )
    assert last_work[0] < first_plant[0]


async def test_a_refused_due_plant_is_asked_again_until_the_next_block_opens(
    pool: PoolStage, tmp_path: Path
) -> None:
    key, _, channels = await _rig(pool, "rig-refused", 1)
    block = await current_block(pool.chain)
    agent, client = _agent(pool, key, tmp_path / "cursor.json", channels, work_delay=0)
    again: Closer | None = None
    try:
        async with _running(agent, client):

            async def worked() -> bool:
                return await _works(pool, block.index) == 1

            await until(worked, 30)
            # Ledgers stop; the last one closes a second before the block is due. The
            # agent's clock runs on between ledgers and finds the block due; the pool,
            # judging by the last ledger, refuses to plant the next one.
            await pool.wallet.closer.stop()
            latest = await pool.chain.latest_ledger()
            await pool.stage.advance(block.next_block_at - latest.close_time - 5 - 1)
            await pool.stage.close()

            async def refused() -> bool:
                return agent.stats.plant_refused >= 2

            await until(refused, 30)
            assert (await current_block(pool.chain)).index == block.index
            # Ledgers close again: the next ask is granted and opens the next block.
            again = Closer(pool.stage)

            async def opened() -> bool:
                return (await current_block(pool.chain)).index == block.index + 1

            await until(opened, 30)
    finally:
        if again is not None:
            await again.stop()


async def test_a_pool_away_for_a_whole_block_does_not_stop_the_agent(
    pool: PoolStage, tmp_path: Path
) -> None:
    key, _, channels = await _rig(pool, "rig-away", 1)
    assert pool.server is not None
    port = pool.server.port
    block = (await current_block(pool.chain)).index
    agent, client = _agent(pool, key, tmp_path / "cursor.json", channels, work_delay=0)
    async with _running(agent, client):

        async def worked() -> bool:
            return await _works(pool, block) == 1

        await until(worked, 30)
        await pool.server.stop(0)
        await _make_due(pool)  # the block ends while the pool is away

        async def asked() -> bool:
            return agent.stats.plant_errors >= 2

        await until(asked, 30)
        pool.server = await _restart_pool(pool, port)

        async def next_worked() -> bool:
            return await _works(pool, block + 1) == 1

        await until(next_worked, 30)
    assert agent.stats.succeeded == 2


async def test_a_work_of_unknown_fate_is_followed_and_reported_with_its_outcome(
    pool: PoolStage, tmp_path: Path
) -> None:
    key, (farmer,), channels = await _rig(pool, "rig-pending", 1)
    block = (await current_block(pool.chain)).index
    agent, client = _agent(pool, key, tmp_path / "cursor.json", channels, work_delay=3000)
    reported: list[tuple[WorkStatus, ReportOutcome]] = []
    seen = agent.reporter.on_acknowledged

    def watch(result: WorkResult, outcome: ReportOutcome) -> None:
        reported.append((result.status, outcome))
        if seen is not None:
            seen(result, outcome)

    agent.reporter.on_acknowledged = watch
    async with _running(agent, client):

        async def mining() -> bool:
            return agent.manager.progress().mining_farmers == 1

        await until(mining, 20)
        # The work's sendTransaction answer is lost (it is queued all the same) and the
        # lookups by hash fail for a while: the submission ends with its fate unknown.
        await pool.stage.faults(lose_next_sends=1, fail_next={"getTransaction": 12})
        await _make_due(pool)

        async def landed() -> bool:
            return await _works(pool, block) == 1

        await until(landed, 30)
    assert reported[0] == (WorkStatus.PENDING, ReportOutcome.PENDING)
    assert reported[-1] == (WorkStatus.SUCCESS, ReportOutcome.RECORDED)
    # The work recorded is the envelope sent once, found by its hash.
    ((tx_hash, ledger),) = await _rows(
        pool, "SELECT tx_hash, ledger FROM works WHERE farmer_id = %s", farmer
    )
    sent = await pool.chain.rpc.get_transaction(tx_hash)
    assert sent.ledger == ledger
    assert WorkJournal(tmp_path / "journal.jsonl").unreported == []


async def _restart_pool(pool: PoolStage, port: int) -> PoolServer:
    """The pool service again, on the same address and state."""
    return await start_pool_server(
        address=f"127.0.0.1:{port}",
        conninfo=pool.service_conninfo,
        chain=pool.chain,
        identity=pool.pki.server(POOL_SERVER),
        ca_pem=pool.pki.ca_pem,
        wallet_address=f"127.0.0.1:{pool.wallet.server.port}",
        wallet_identity=pool.pki.client(POOL_CLIENT),
        settings=Settings(
            network="devnet",
            data_dir=pool.data_dir,
            _env_file=None,
            rate_limit_requests_per_minute=100_000,
        ),
        pool_size=8,
        feed_poll_seconds=0.2,
    )
