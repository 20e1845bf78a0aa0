"""Harvests of worked pails once the next block opened: on request and by the loop."""

from __future__ import annotations

import grpc
import psycopg
import pytest

from kalepool.chain import build_work, current_block, kale_balance, sign, submit
from kalepool.db.consistency import check_consistency
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2
from tests.chain.stage import mine

from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer


async def _harvest_rows(pool: PoolStage) -> list[tuple[str, str, int | None, str | None]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT h.farmer_id::text, h.status::text, h.reward_amount, t.return_value::text"
            " FROM harvests h LEFT JOIN transactions t ON t.tx_hash = h.tx_hash ORDER BY h.id"
        )
        return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]


async def test_worked_pails_are_harvested_with_the_contracts_reward(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    farmers = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(2)
    ]
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    reports = []
    fee_account = await pool.stage.account()
    for a in snapshot.assignments:
        nonce, digest, zeros = mine(block, a.entropy, a.farmer_address, 1)
        tx = await build_work(
            pool.chain, a.farmer_address, digest, nonce, source=fee_account.public_key
        )
        outcome = await submit(pool.chain, sign(tx, fee_account))
        assert outcome.ok, outcome.describe()
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

    # Not over yet: refused, nothing recorded.
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await stub.RequestHarvest(
            pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth
        )
    assert early.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert await pool.count("harvests") == 0

    # The next block opens with this pooler's own plant.
    now = await current_block(pool.chain)
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=auth)

    first, second = farmers
    op = pool.operator()
    before = (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=first.farmer_id))).farmer
    chain_before = await kale_balance(pool.chain, first.custodial_address) or 0
    asked = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block, farmer_ids=[first.farmer_id]),
        metadata=auth,
    )
    assert [h.farmer_id for h in asked.harvested] == [first.farmer_id]
    harvested = asked.harvested[0]
    assert harvested.reward_stroops > 0 and harvested.stake_returned_stroops == 5 * KALE
    assert asked.total_reward_stroops == harvested.reward_stroops
    # The reward is what the contract returned, and the ledger credits reward + stake.
    rows = await _harvest_rows(pool)
    assert rows == [
        (first.farmer_id, "success", harvested.reward_stroops, str(harvested.reward_stroops))
    ]
    after = (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=first.farmer_id))).farmer
    credit = harvested.reward_stroops + harvested.stake_returned_stroops
    assert after.balance_stroops == before.balance_stroops + credit
    assert await kale_balance(pool.chain, first.custodial_address) == chain_before + credit

    # The loop harvests the rest by itself; asking again harvests nobody twice.
    await pool.start(harvest_interval=0.1)

    async def loop_harvested() -> bool:
        return len(await _harvest_rows(pool)) == 2

    await until(loop_harvested)
    stub = pool.pooler()
    again = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth
    )
    assert sorted(h.farmer_id for h in again.harvested) == sorted(f.farmer_id for f in farmers)
    assert not again.failed and not again.pending
    assert len(await _harvest_rows(pool)) == 2
    assert second.farmer_id in {r[0] for r in await _harvest_rows(pool) if r[1] == "success"}

    # Derived state (balances, counters, block totals) agrees with the events.
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []
