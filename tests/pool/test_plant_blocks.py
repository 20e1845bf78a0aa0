"""Which block a plant is for: one rule for the pool and the wallet (the current block
while it is not due, only the next once it is), and a pail recorded in the block where
the chain put it, also when the plant applied after its block became due."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kalepool.chain import CurrentBlock, current_block, kale_balance, read_pail
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, wallet_pb2

from .books import (
    consistency,
    make_due,
    plantings,
    requests,
    stakes,
    wait_due,
    wait_sent,
)
from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer


def _block(index: int, opened: int, *, exists: bool = True) -> CurrentBlock:
    return CurrentBlock(
        index=index,
        timestamp=opened,
        entropy=None,
        next_block_at=opened + 300,
        paused=False,
        block=object() if exists else None,  # type: ignore[arg-type]
        ledger=1,
    )


def test_the_plant_target_is_the_current_block_until_it_is_due_then_only_the_next() -> None:
    assert _block(7, 1000).plant_target(1000) == 7
    assert _block(7, 1000).plant_target(1299) == 7
    assert _block(7, 1000).plant_target(1300) == 8  # due: a plant now opens block 8
    assert _block(7, 1000).plant_target(9999) == 8
    # Block(7) evicted: the contract opens the next one too. Block 0 before any plant
    # does not exist yet and is the target.
    assert _block(7, 1000, exists=False).plant_target(1000) == 8
    assert _block(0, 1000, exists=False).plant_target(1000) == 0


async def _refused(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    return caught.value.details() or ""


async def test_a_due_block_is_refused_naming_the_next_by_pool_and_wallet(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id)
    block = (await current_block(pool.chain)).index
    await make_due(pool)
    await wait_due(pool)
    before = await pool.counts()

    stub = pool.pooler()
    details = await _refused(
        stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key))
    )
    assert f"the block to plant is {block + 1}" in details
    assert await pool.counts() == before
    # The wallet applies the same rule: nothing is signed for the due block.
    direct = await pool.wallet.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=f"plant:{farmer.farmer_id}:{block}",
            farmer_address=farmer.custodial_address,
            block_index=block,
        )
    )
    assert direct.outcome.status == common_pb2.TX_STATUS_REJECTED
    assert direct.outcome.failure.code == common_pb2.FAILURE_CODE_BLOCK_MISMATCH
    assert f"the block to plant is {block + 1}" in direct.outcome.failure.message
    assert await pool.counts() == before

    opened = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=bearer(key)
    )
    assert [(p.farmer_id, p.block_index) for p in opened.planted] == [(farmer.farmer_id, block + 1)]
    assert (await current_block(pool.chain)).index == block + 1


async def test_a_plant_that_applies_after_its_block_is_due_is_recorded_in_the_next(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    address = farmer.custodial_address
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()

    # The latest ledger closed before the block is due, the next one closes when it is:
    # pool and wallet check the plant for `block`, the chain (simulating the next ledger)
    # and the ledger that applies it open the next block.
    await pool.wallet.closer.hold()
    await make_due(pool)
    call = asyncio.ensure_future(
        stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key))
    )
    await wait_sent(pool, f"plant:{farmer.farmer_id}:{block}")
    pool.wallet.closer.release()
    answer = await call

    pail = await read_pail(pool.chain, address, block + 1)
    assert pail is not None and pail.stake == 10 * KALE
    assert await read_pail(pool.chain, address, block) is None
    assert [(p.farmer_id, p.block_index, p.plant_ledger) for p in answer.planted] == [
        (farmer.farmer_id, block + 1, pail.sequence)
    ]
    assert not answer.failed and not answer.pending
    [row] = await plantings(pool)
    assert row[1:] == (farmer.farmer_id, block + 1, "success", 10 * KALE, pail.sequence, "none")
    assert await stakes(pool) == [(farmer.farmer_id, -10 * KALE, row[0])]
    # The wallet says where the pail is when it replays the key, too.
    replay = await pool.wallet.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=f"plant:{farmer.farmer_id}:{block}",
            farmer_address=address,
            block_index=block,
            stake_stroops=10 * KALE,
        )
    )
    assert replay.outcome.replayed
    assert (replay.block_index, replay.plant_ledger) == (block + 1, pail.sequence)

    # The next block's request plants nobody twice and blames nobody.
    transactions = await pool.count("transactions")
    again = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=bearer(key)
    )
    assert [p.planting_id for p in again.planted] == [str(row[0])]
    assert not again.failed and not again.pending
    assert await pool.count("transactions") == transactions
    assert await plantings(pool) == [row]
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert got.farmer.balance_stroops == 10 * KALE == await kale_balance(pool.chain, address)
    assert await consistency(pool) == []


async def test_the_pail_of_an_unrecorded_attempt_blames_nobody_and_settles_both(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    address = farmer.custodial_address
    block = (await current_block(pool.chain)).index
    first_key, second_key = (f"plant:{farmer.farmer_id}:{b}" for b in (block, block + 1))
    # The pool's call is cut by its deadline while the plant waits for a ledger; no
    # reconciliation until the pool is restarted.
    await pool.start(plant_timeout_seconds=2, plant_reconcile_interval_seconds=3600)
    stub = pool.pooler()
    await pool.wallet.closer.hold()
    await make_due(pool)  # the plant applies in the ledger that makes the block due
    first = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
    )
    assert [p.farmer_id for p in first.pending] == [farmer.farmer_id] and not first.failed
    await wait_sent(pool, first_key)
    pool.wallet.closer.release()

    async def landed() -> bool:
        return await read_pail(pool.chain, address, block + 1) is not None

    await until(landed)  # and the farm's current block is block + 1

    # Asked for the next block before the first attempt is recorded: the chain refuses
    # a second pail. Nobody's failure; nothing recorded, nothing signed.
    direct = await pool.wallet.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=second_key,
            farmer_address=address,
            block_index=block + 1,
            stake_stroops=10 * KALE,
        )
    )
    assert direct.outcome.status == common_pb2.TX_STATUS_REJECTED
    assert direct.outcome.failure.code == common_pb2.FAILURE_CODE_PAIL_EXISTS
    assert direct.outcome.failure.fault == common_pb2.FAULT_PARTY_NONE
    second = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=bearer(key)
    )
    assert [p.farmer_id for p in second.pending] == [farmer.farmer_id]
    assert not second.failed and not second.planted
    assert await plantings(pool) == []

    # The reconciler records the first attempt where its pail is, and settles the
    # second by it.
    await pool.start(plant_timeout_seconds=2, plant_reconcile_interval_seconds=0.05)

    async def both_settled() -> bool:
        return all(r[3] for r in await requests(pool))

    await until(both_settled, 30)
    pail = await read_pail(pool.chain, address, block + 1)
    assert pail is not None
    [row] = await plantings(pool)
    assert row[1:] == (farmer.farmer_id, block + 1, "success", 10 * KALE, pail.sequence, "none")
    assert [(r[0], r[4]) for r in await requests(pool)] == [
        (first_key, row[0]),
        (second_key, row[0]),
    ]
    assert await stakes(pool) == [(farmer.farmer_id, -10 * KALE, row[0])]
    assert await pool.count("transactions") == 2  # the trustline and the one plant
    assert await consistency(pool) == []
