"""The contract watch on the real pool over mTLS and the devnet: the farm's code changing
or the farm being paused holds every new plant (nothing written, nothing sent) until an
operator acknowledges the new code or the farm is unpaused; a plant already signed is
followed to its record all the same."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from prometheus_client import REGISTRY

from kale_devnet.network import identity
from kalepool import wire
from kalepool.chain import current_block, kale_balance, read_pail
from kalepool.v1 import pool_pb2, pooler_pb2

from .books import requests, rows, wait_sent
from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer

DEADLINE = 2  # the plant deadline of the reconciler tests (see test_plant_reconcile)


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("kalepool_contract_watch_ok")


async def _status(pool: PoolStage) -> pool_pb2.ContractStatus:
    got = await pool.operator().GetContractStatus(pool_pb2.GetContractStatusRequest())
    return got.status


async def _plant(pool: PoolStage, key: str) -> pooler_pb2.RequestPlantResponse:
    block = (await current_block(pool.chain)).index
    answer: pooler_pb2.RequestPlantResponse = await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
    )
    return answer


async def _refused(pool: PoolStage, key: str) -> str:
    """RequestPlant's refusal: FAILED_PRECONDITION, the contract watch's message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _plant(pool, key)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = caught.value.details() or ""
    assert wire.is_contract_hold(detail), detail
    return detail


async def _nothing_planted(pool: PoolStage, transactions: int) -> None:
    assert await pool.count("plant_requests") == 0
    assert await pool.count("plantings") == 0
    assert await pool.count("transactions") == transactions


async def test_the_first_code_seen_is_acknowledged(pool: PoolStage) -> None:
    genesis = identity().farm_wasm_hash.hex()
    status = await _status(pool)
    assert status.wasm_hash == genesis and status.acknowledged_wasm_hash == genesis
    assert status.acknowledged_by == "pool" and status.HasField("acknowledged_at")
    assert status.plants_allowed and not status.paused and not status.message
    assert not status.HasField("held_since")
    assert await rows(pool, "SELECT wasm_hash, source FROM contract_acks") == [
        (genesis, "first_seen")
    ]
    # A second replica, another start: still the one sighting.
    await pool.start_replica()
    await pool.start()
    await _status(pool)
    assert await pool.count("contract_acks") == 1
    assert _gauge() == 1.0
    # The record is append-only, even for the owner.
    with pytest.raises(psycopg.Error):
        await rows(pool, "UPDATE contract_acks SET wasm_hash = repeat('0', 64)")
    with pytest.raises(psycopg.Error):
        await rows(pool, "DELETE FROM contract_acks")


async def test_new_code_holds_plants_until_an_operator_acknowledges_it(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    await _status(pool)  # the genesis code recorded
    before = await pool.count("transactions")

    upgraded = (await pool.stage.admin("devnet_upgradeFarm"))["wasmHash"]
    detail = await _refused(pool, key)
    assert f"the farm contract changed (code hash {upgraded}" in detail
    assert "kale-pool contract ack" in detail
    await _nothing_planted(pool, before)
    status = await _status(pool)
    assert status.wasm_hash == upgraded and status.acknowledged_wasm_hash != upgraded
    assert not status.plants_allowed and status.HasField("held_since")
    assert "the farm contract changed" in status.message
    assert _gauge() == 0.0

    # An acknowledgement must name the code the farm runs now.
    op = pool.operator()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await op.AcknowledgeContract(
            pool_pb2.AcknowledgeContractRequest(wasm_hash=status.acknowledged_wasm_hash)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"the farm runs code {upgraded}" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await op.AcknowledgeContract(pool_pb2.AcknowledgeContractRequest(wasm_hash="beef"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "64 hex digits" in (caught.value.details() or "")
    assert await pool.count("contract_acks") == 1
    await _refused(pool, key)

    acked = await op.AcknowledgeContract(
        pool_pb2.AcknowledgeContractRequest(wasm_hash=upgraded.upper())
    )
    assert acked.status.plants_allowed and acked.status.acknowledged_wasm_hash == upgraded
    assert acked.status.acknowledged_by == "operator"
    assert _gauge() == 1.0
    # Acknowledging it again records nothing new.
    await op.AcknowledgeContract(pool_pb2.AcknowledgeContractRequest(wasm_hash=upgraded))
    assert await rows(pool, "SELECT wasm_hash, source, acknowledged_by FROM contract_acks") == [
        (identity().farm_wasm_hash.hex(), "first_seen", "pool"),
        (upgraded, "operator", "operator"),
    ]

    answer = await _plant(pool, key)
    assert [p.farmer_id for p in answer.planted] == [farmer.farmer_id]
    pail = await read_pail(pool.chain, farmer.custodial_address, answer.block_index)
    assert pail is not None and pail.stake == 5 * KALE


async def test_a_paused_farm_holds_plants_until_it_is_unpaused(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    before = await pool.count("transactions")

    await pool.stage.admin("devnet_setFarmPaused", paused=True)
    detail = await _refused(pool, key)
    assert "the farm is paused" in detail and "contract changed" not in detail
    await _nothing_planted(pool, before)
    status = await _status(pool)
    assert status.paused and not status.plants_allowed
    assert status.acknowledged_wasm_hash == status.wasm_hash
    assert _gauge() == 0.0
    # An acknowledgement does not lift a pause: the homesteader does.
    await pool.operator().AcknowledgeContract(
        pool_pb2.AcknowledgeContractRequest(wasm_hash=status.wasm_hash)
    )
    await _refused(pool, key)

    await pool.stage.admin("devnet_setFarmPaused", paused=False)
    answer = await _plant(pool, key)
    assert [p.farmer_id for p in answer.planted] == [farmer.farmer_id]
    assert (await _status(pool)).plants_allowed and _gauge() == 1.0


async def test_the_reconciler_sends_nothing_new_while_held(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    before = await pool.count("transactions")
    # A request written down and never sent: the wallet is away when it is asked.
    port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    answer = await _plant(pool, key)
    assert len(answer.pending) == 1
    upgraded = (await pool.stage.admin("devnet_upgradeFarm"))["wasmHash"]
    await pool.wallet.start(port)

    # Pass after pass takes it (its attempts grow) and sends nothing: the wallet holds
    # no transaction under its key.
    async def retried() -> bool:
        found = await requests(pool)
        return len(found) == 1 and found[0][5] >= 3

    await until(retried, 30)
    [request] = await requests(pool)
    assert not request[3]
    assert await pool.count("transactions") == before
    assert await pool.count("plantings") == 0

    await pool.operator().AcknowledgeContract(
        pool_pb2.AcknowledgeContractRequest(wasm_hash=upgraded)
    )

    async def planted() -> bool:
        return await pool.count("plantings WHERE status = 'success'") == 1

    await until(planted, 30)
    assert await read_pail(pool.chain, farmer.custodial_address, request[1]) is not None


async def test_a_plant_already_signed_is_followed_to_its_end_while_held(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    block = (await current_block(pool.chain)).index
    # The wallet signs and sends the plant; the pool stops before it hears the outcome.
    await pool.wallet.closer.hold()
    call = asyncio.ensure_future(
        pool.pooler().RequestPlant(
            pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
        )
    )
    await wait_sent(pool, f"plant:{farmer.farmer_id}:{block}")
    assert pool.server is not None
    await pool.server.stop(0)
    pool.server = None
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    # The farm's code changes while the plant is on its way; then it applies.
    await pool.stage.admin("devnet_upgradeFarm")
    pool.wallet.closer.release()

    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    assert not (await _status(pool)).plants_allowed

    async def settled() -> bool:
        found = await requests(pool)
        return len(found) == 1 and found[0][3]

    await until(settled, 30)
    # Followed to its end, which the chain decided: the transaction's footprint named the
    # old code, so it failed and burned nothing (as a plant simulated before an upgrade
    # and applied after fails on the network). One transaction, never sent again.
    assert await rows(pool, "SELECT status, error_code FROM plantings") == [("failed", "TX_FAILED")]
    assert await rows(
        pool, "SELECT status FROM transactions WHERE idempotency_key LIKE 'plant:%%'"
    ) == [("failed",)]
    assert await read_pail(pool.chain, farmer.custodial_address, block) is None
    assert await kale_balance(pool.chain, farmer.custodial_address) == 10 * KALE
    balance = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert balance.farmer.balance_stroops == 10 * KALE
    await _refused(pool, key)  # and nothing new goes out
