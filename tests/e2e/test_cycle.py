"""One whole cycle on real parts: an operator registers a pooler and three farmers, the
pooler agent plants through the pool, mines the assignments the stream brings, submits
work from its channel accounts and reports it; the next block opens by the agent's own
plant, the finished block is harvested, and the pool's books match the chain."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import psycopg
from stellar_sdk import TransactionEnvelope

from kalepool.chain import current_block, kale_balance
from kalepool.db.consistency import check_consistency
from kalepool.v1 import pool_pb2
from pooler_agent.agent import PoolerAgent
from pooler_agent.block_monitor import BlockMonitor
from pooler_agent.clock import ChainClock
from pooler_agent.journal import WorkJournal
from pooler_agent.pool_client import Backoff, CursorFile, CursorTracker, PoolClient
from pooler_agent.work_manager import WorkManager, WorkTiming
from pooler_agent.work_submitter import ChannelPool, WorkSubmitter
from tests.pool.conftest import KALE, PoolStage, until


async def _rows(pool: PoolStage, query: str, *args: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(query, args)
        return list(await cur.fetchall())


async def _count(pool: PoolStage, query: str, *args: object) -> int:
    rows = await _rows(pool, query, *args)
    value = rows[0][0]
    assert isinstance(value, int | Decimal), value  # count() is an int, sum() a numeric
    return int(value)


async def test_a_block_is_planted_mined_worked_and_harvested_through_the_pool(
    pool: PoolStage, tmp_path: Path
) -> None:
    # Heartbeats, reports and plant requests come fast here: lift the per-pooler limit.
    await pool.start(rate_limit_requests_per_minute=100_000)
    pooler, api_key = await pool.register_pooler("e2e-rig", max_farmers=10)
    farmers = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(3)
    ]
    by_id = {f.farmer_id: f for f in farmers}
    channel_keys = await pool.stage.accounts(2)

    assert pool.server is not None
    client = PoolClient(
        f"127.0.0.1:{pool.server.port}",
        pool.pki.client("e2e-rig"),
        pool.pki.ca_pem,
        api_key,
        timeout=10.0,
        retry_attempts=3,
        backoff=Backoff(initial=0.05, maximum=0.5),
    )
    clock = ChainClock()
    # Work is sent as soon as the block is open (a 50 ms search): the contract takes any
    # correct hash, and the gap is whatever ledgers closed since the plant.
    manager = WorkManager(
        WorkTiming(
            block_seconds=pool.chain.config.block_seconds,
            work_delay_seconds=0,
            submit_margin_seconds=0,
        ),
        clock,
        capacity=10,
        threads=1,
    )
    cursor_file = CursorFile(tmp_path / "cursor.json")
    journal = WorkJournal(tmp_path / "journal.jsonl")
    agent = PoolerAgent(
        pool=client,
        monitor=BlockMonitor(pool.chain, interval=0.05, clock=clock),
        manager=manager,
        submitter=WorkSubmitter(pool.chain, ChannelPool(pool.chain, channel_keys, clock=clock)),
        cursors=CursorTracker(cursor_file),
        journal=journal,
        heartbeat_seconds=0.5,
        report_linger=0.05,
    )
    chain_before = {
        f.farmer_id: await kale_balance(pool.chain, f.custodial_address) for f in farmers
    }
    block = (await current_block(pool.chain)).index
    running = asyncio.create_task(agent.run())
    try:
        # 1. The agent plants the current block, mines and reports all three farmers.
        async def worked(index: int) -> bool:
            n = await _count(
                pool,
                "SELECT count(*) FROM works WHERE block_index = %s AND status = 'success'",
                index,
            )
            return n == 3

        await until(lambda: worked(block), 30)

        # 2. The block's time runs out; the agent's plant for the next block opens it.
        now = await current_block(pool.chain)
        latest = await pool.chain.latest_ledger()
        await pool.stage.advance(now.next_block_at - latest.close_time)

        async def harvested() -> bool:
            n = await _count(
                pool,
                "SELECT count(*) FROM harvests WHERE block_index = %s AND status = 'success'",
                block,
            )
            return n == 3

        await until(harvested, 30)
        # The next block is worked too (its plants staked again): let it settle.
        await until(lambda: worked(block + 1), 30)
    finally:
        agent.stop()
        stats = await asyncio.wait_for(running, 20)
        await client.close()

    assert stats.plant_requests >= 2 and stats.succeeded >= 6 and stats.harvested == 3
    # Each (farmer, block) planted, worked and harvested once.
    for table in ("plantings", "works", "harvests"):
        dupes = await _rows(
            pool,
            f"SELECT farmer_id, block_index FROM {table} WHERE status = 'success'"
            " GROUP BY farmer_id, block_index HAVING count(*) > 1",
        )
        assert dupes == [], (table, dupes)
    # Work came from the channel accounts, with the gap the contract returned.
    works = await _rows(
        pool,
        "SELECT w.tx_hash, w.gap, w.ledger - p.ledger FROM works w JOIN plantings p"
        " ON p.farmer_id = w.farmer_id AND p.block_index = w.block_index"
        " WHERE w.block_index = %s",
        block,
    )
    assert len(works) == 3
    for tx_hash, gap, ledgers in works:
        sent = await pool.chain.rpc.get_transaction(str(tx_hash))
        assert sent.envelope_xdr is not None
        envelope = TransactionEnvelope.from_xdr(
            sent.envelope_xdr, pool.chain.config.network_passphrase
        )
        assert envelope.transaction.source.account_id in {kp.public_key for kp in channel_keys}
        assert gap == ledgers and isinstance(gap, int) and gap >= 1

    # The reward recorded is the one the contract returned, and the pool's books match
    # the chain: each farmer's balance is the sum of its ledger entries and equals the
    # custodial account's KALE (deposit - stakes + reward + stake returned).
    harvests = await _rows(
        pool,
        "SELECT h.farmer_id::text, h.reward_amount, h.stake_amount, t.return_value::text"
        " FROM harvests h JOIN transactions t ON t.tx_hash = h.tx_hash"
        " WHERE h.block_index = %s",
        block,
    )
    assert len(harvests) == 3
    op = pool.operator()
    for farmer_id, reward, stake, returned in harvests:
        assert isinstance(reward, int) and reward > 0 and str(reward) == returned
        assert stake == 5 * KALE
        farmer = by_id[str(farmer_id)]
        got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
        ledger_sum = await _count(
            pool,
            "SELECT coalesce(sum(amount), 0) FROM balance_ledger WHERE farmer_id = %s",
            farmer.farmer_id,
        )
        on_chain = await kale_balance(pool.chain, farmer.custodial_address)
        assert got.farmer.balance_stroops == ledger_sum == on_chain
        credited = await _count(
            pool,
            "SELECT coalesce(sum(l.amount), 0) FROM balance_ledger l JOIN harvests h"
            " ON h.id = l.harvest_id WHERE h.farmer_id = %s AND h.block_index = %s",
            farmer.farmer_id,
            block,
        )
        assert credited == reward + stake
        staked_next = await _count(
            pool,
            "SELECT stake_amount FROM plantings WHERE farmer_id = %s AND block_index = %s"
            " AND status = 'success'",
            farmer.farmer_id,
            block + 1,
        )
        assert on_chain == (chain_before[farmer.farmer_id] or 0) - stake + credited - staked_next
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []
    # The cursor saved covers every assignment reported; every work envelope was journaled
    # before it was sent, and its entry closed once its report was acknowledged.
    assert cursor_file.load() == agent.cursors.received > 0
    journaled = (tmp_path / "journal.jsonl").read_text()
    assert all(str(tx_hash) in journaled for tx_hash, _, _ in works)
    assert WorkJournal(tmp_path / "journal.jsonl").unreported == []
