"""Heartbeats stored and shown, and the chain's block timing in the answers."""

from __future__ import annotations

import psycopg

from kalepool.chain import current_block
from kalepool.v1 import pool_pb2, pooler_pb2

from .conftest import PoolStage, until
from .test_pooler_auth import bearer, code_of


async def _heartbeat_row(pool: PoolStage, pooler_id: str) -> tuple[object, ...]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT heartbeat_capacity, heartbeat_hashes_per_second, heartbeat_threads,"
            " heartbeat_mining_farmers, heartbeat_agent_version, heartbeat_block_index,"
            " heartbeat_last_cursor FROM poolers WHERE id = %s",
            (pooler_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)


async def test_heartbeats_are_stored_and_shown(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler(max_farmers=4)
    stub, op = pool.pooler(), pool.operator()
    ask = pool_pb2.GetPoolerStatsRequest(pooler_id=pooler.pooler_id)
    never = await op.GetPoolerStats(ask)
    assert not never.HasField("last_heartbeat_at") and never.agent_version == ""

    chain = await current_block(pool.chain)
    beat = pooler_pb2.HeartbeatRequest(
        agent_version="0.3.1",
        capacity=4,
        hashes_per_second=12_345_678_901,
        threads=8,
        mining_farmers=3,
        observed_block_index=chain.index,
        last_cursor=17,
    )
    answer = await stub.Heartbeat(beat, metadata=bearer(key))
    assert answer.current_block_index == chain.index
    assert answer.current_block_opened_at.seconds == chain.timestamp
    assert answer.next_block_due_at.seconds == chain.next_block_at
    stats = await op.GetPoolerStats(ask)
    assert stats.HasField("last_heartbeat_at")
    assert (stats.capacity, stats.hashes_per_second, stats.agent_version) == (
        4,
        12_345_678_901,
        "0.3.1",
    )
    # Every figure of the request is stored and shown.
    shown = (stats.threads, stats.mining_farmers, stats.observed_block_index, stats.last_cursor)
    assert shown == (8, 3, chain.index, 17)
    stored = (4, 12_345_678_901, 8, 3, "0.3.1", chain.index, 17)
    assert await _heartbeat_row(pool, pooler.pooler_id) == stored

    # Within a few seconds of the last write, a heartbeat is answered, not written.
    busier = pooler_pb2.HeartbeatRequest(agent_version="0.3.2", capacity=4, threads=8)
    await stub.Heartbeat(busier, metadata=bearer(key))
    assert await _heartbeat_row(pool, pooler.pooler_id) == stored
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        await conn.execute(
            "UPDATE poolers SET last_heartbeat_at = last_heartbeat_at - interval '1 minute'"
            " WHERE id = %s",
            (pooler.pooler_id,),
        )
    await stub.Heartbeat(busier, metadata=bearer(key))
    assert await _heartbeat_row(pool, pooler.pooler_id) == (4, 0, 8, 0, "0.3.2", 0, 0)
    assert (await op.GetPoolerStats(ask)).agent_version == "0.3.2"

    # Figures the columns cannot hold are refused, and nothing is written.
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        await conn.execute("UPDATE poolers SET last_heartbeat_at = NULL")
    for bad in [
        pooler_pb2.HeartbeatRequest(agent_version="v" * 65),
        pooler_pb2.HeartbeatRequest(agent_version="bad\nversion"),
        pooler_pb2.HeartbeatRequest(capacity=2**31),
        pooler_pb2.HeartbeatRequest(hashes_per_second=2**63),
        pooler_pb2.HeartbeatRequest(last_cursor=2**63),
    ]:
        code, message = await code_of(stub.Heartbeat(bad, metadata=bearer(key)))
        assert code.name == "INVALID_ARGUMENT" and message, (bad, code)
    assert await _heartbeat_row(pool, pooler.pooler_id) == (4, 0, 8, 0, "0.3.2", 0, 0)


async def test_pool_stats_show_the_block_timing_when_the_chain_answers(pool: PoolStage) -> None:
    op = pool.operator()
    chain = await current_block(pool.chain)
    stats = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert stats.current_block_index == chain.index
    assert stats.current_block_opened_at.seconds == chain.timestamp
    assert stats.next_block_due_at.seconds == chain.next_block_at

    # The farm cannot be read: once the view read a second ago has expired, the books'
    # figures still come, the chain's stay unset.
    await pool.stage.faults(error_rate={"getLedgerEntries": 1.0})
    blind = stats
    try:

        async def unread() -> bool:
            nonlocal blind
            blind = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
            return not blind.HasField("current_block_opened_at")

        await until(unread)
    finally:
        await pool.stage.faults(error_rate={})
    assert not blind.HasField("current_block_opened_at")
    assert not blind.HasField("next_block_due_at")
    assert blind.poolers_total == stats.poolers_total and blind.HasField("as_of")
