"""Driving blocks through the pool as a pooler agent would: plant, work (or report a
failure), open the next block, harvest. Real calls on the stage's servers and devnet."""

from __future__ import annotations

from collections.abc import Collection

from kalepool.chain import build_work, current_block, sign, submit
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2
from tests.chain.stage import mine
from tests.pool.conftest import PoolStage, until
from tests.pool.test_pooler_auth import bearer

MINER_FAILED = common_pb2.Failure(
    code=common_pb2.FAILURE_CODE_MINER_FAILED,
    fault=common_pb2.FAULT_PARTY_POOLER,
    message="the miner crashed",
)


async def plant(pool: PoolStage, api_key: str) -> int:
    """Plant the pooler's farmers in the chain's current block; the block's index."""
    block = (await current_block(pool.chain)).index
    await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(api_key)
    )
    return block


async def work(
    pool: PoolStage, api_key: str, block: int, *, fail: Collection[str] = ()
) -> dict[str, int]:
    """Work every assignment of the block on chain and report it, except the farmers in
    `fail`, reported as failed (the miner crashed). The zeros of each work, by farmer."""
    auth = bearer(api_key)
    stub = pool.pooler()
    snapshot = await stub.GetAssignments(
        pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=auth
    )
    fee_account = await pool.stage.account()
    reports = []
    zeros_by_farmer: dict[str, int] = {}
    for a in snapshot.assignments:
        if a.farmer_id in fail:
            reports.append(
                pooler_pb2.WorkReport(
                    farmer_id=a.farmer_id,
                    status=records_pb2.EVENT_STATUS_FAILED,
                    failure=MINER_FAILED,
                )
            )
            continue
        nonce, digest, zeros = mine(block, a.entropy, a.farmer_address, 1)
        tx = await build_work(
            pool.chain, a.farmer_address, digest, nonce, source=fee_account.public_key
        )
        outcome = await submit(pool.chain, sign(tx, fee_account))
        assert outcome.ok, outcome.describe()
        zeros_by_farmer[a.farmer_id] = zeros
        reports.append(
            pooler_pb2.WorkReport(
                farmer_id=a.farmer_id,
                status=records_pb2.EVENT_STATUS_SUCCEEDED,
                nonce=nonce,
                hash=digest,
                zeros=zeros,
                gap=outcome.value or 0,
                transaction=common_pb2.TransactionRef(
                    tx_hash=outcome.hash, ledger=outcome.ledger or 0
                ),
            )
        )
    await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(block_index=block, results=reports), metadata=auth
    )
    return zeros_by_farmer


async def open_next(pool: PoolStage, api_key: str, block: int) -> None:
    """Move the chain's clock past the block and open the next one by planting in it."""
    now = await current_block(pool.chain)
    assert now.index == block
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=bearer(api_key)
    )


async def harvest(pool: PoolStage, api_key: str, block: int) -> pooler_pb2.RequestHarvestResponse:
    """Harvest the pooler's worked pails of a finished block."""
    got = await pool.pooler().RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=bearer(api_key)
    )
    assert not got.failed and not got.pending, got
    return got


async def farm_block(pool: PoolStage, api_key: str, *, fail: Collection[str] = ()) -> int:
    """One whole block: plant, work (but `fail`), open the next, harvest. Its index."""
    block = await plant(pool, api_key)
    await work(pool, api_key, block, fail=fail)
    await open_next(pool, api_key, block)
    await harvest(pool, api_key, block)
    return block


async def farmers(
    pool: PoolStage, count: int, **kwargs: object
) -> tuple[str, str, list[pool_pb2.Farmer]]:
    """A pooler (id, API key) and `count` funded farmers staking half of 10 KALE."""
    from tests.pool.conftest import KALE

    pooler, key = await pool.register_pooler("rig-east", max_farmers=10)
    made = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
        for _ in range(count)
    ]
    return pooler.pooler_id, key, made
