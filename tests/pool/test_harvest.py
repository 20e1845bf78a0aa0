"""Harvests of worked pails once the next block opened: on request and by the loop."""

from __future__ import annotations

from typing import Any

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


async def _open_next_block(pool: PoolStage, stub: Any, auth: Any, block: int) -> None:
    """Advance the chain's clock and open block + 1 with the pooler's own plant."""
    now = await current_block(pool.chain)
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=auth)


async def test_work_the_pooler_never_reported_is_observed_and_harvested(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    silent, mistaken, idle = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(3)
    ]
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    by_farmer = {a.farmer_id: a for a in snapshot.assignments}
    fee_account = await pool.stage.account()
    gaps = {}
    for farmer in (silent, mistaken):
        a = by_farmer[farmer.farmer_id]
        nonce, digest, _ = mine(block, a.entropy, a.farmer_address, 1)
        tx = await build_work(
            pool.chain, a.farmer_address, digest, nonce, source=fee_account.public_key
        )
        outcome = await submit(pool.chain, sign(tx, fee_account))
        assert outcome.ok, outcome.describe()
        gaps[farmer.farmer_id] = outcome.value
    # One work is never reported; the other is reported as failed although it landed.
    failed = await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(
            block_index=block,
            results=[
                pooler_pb2.WorkReport(
                    farmer_id=mistaken.farmer_id,
                    status=records_pb2.EVENT_STATUS_FAILED,
                    failure=common_pb2.Failure(
                        code=common_pb2.FAILURE_CODE_MINER_FAILED,
                        fault=common_pb2.FAULT_PARTY_POOLER,
                        message="the agent lost track of the submission",
                    ),
                )
            ],
        ),
        metadata=auth,
    )
    assert failed.recorded == 1
    await _open_next_block(pool, stub, auth, block)

    # The loop asks the chain about the pails, records what it shows and harvests.
    await pool.start(harvest_interval=0.1)

    async def harvested() -> bool:
        return len([r for r in await _harvest_rows(pool) if r[1] == "success"]) == 2

    await until(harvested)
    assert {r[0] for r in await _harvest_rows(pool)} == {silent.farmer_id, mistaken.farmer_id}
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT farmer_id::text, status::text, fault::text, error_code, zeros, gap, nonce,"
            " tx_hash, observed_on_chain FROM works WHERE block_index = %s ORDER BY id",
            (block,),
        )
        works = [tuple(r) for r in await cur.fetchall()]
    chain_pails = {w[0]: w for w in works if w[8] and w[1] == "success"}
    assert set(chain_pails) == {silent.farmer_id, mistaken.farmer_id}
    for farmer_id, row in chain_pails.items():
        assert row[2:4] == ("none", None) and row[6:8] == (None, None)
        assert row[4] is not None and row[4] >= 1 and row[5] == gaps[farmer_id]
    (idle_row,) = [w for w in works if w[0] == idle.farmer_id]
    assert idle_row[1:4] == ("failed", "pooler", "WORK_MISSING") and idle_row[8]
    assert len(works) == 4  # plus the reported failure, kept as it was

    # Only the pail never worked is owed for, by the pooler; each is written once.
    async def compensated() -> bool:
        return await pool.count("pooler_compensations") > 0

    await until(compensated)
    listed = await pool.operator().ListCompensations(pool_pb2.ListCompensationsRequest())
    assert [(c.farmer_id, c.owed_by) for c in listed.compensations] == [
        (idle.farmer_id, common_pb2.FAULT_PARTY_POOLER)
    ]
    block_view = await pool.operator().GetBlock(pool_pb2.GetBlockRequest(block_index=block))
    assert block_view.block.status == pool_pb2.BLOCK_STATUS_COMPLETED
    assert block_view.block.counts.works_succeeded == 2
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_a_failure_reported_keeps_its_party_when_the_chain_confirms_it(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    chains, pools, own, idle = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(4)
    ]
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)

    # Nobody works. Three failures are reported, each naming its party; one farmer's
    # work is never reported at all.
    def failed(
        farmer_id: str,
        fault: common_pb2.FaultParty.ValueType,
        code: common_pb2.FailureCode.ValueType,
        why: str,
    ) -> pooler_pb2.WorkReport:
        return pooler_pb2.WorkReport(
            farmer_id=farmer_id,
            status=records_pb2.EVENT_STATUS_FAILED,
            failure=common_pb2.Failure(code=code, fault=fault, message=why),
        )

    reported = await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(
            block_index=block,
            results=[
                failed(
                    chains.farmer_id,
                    common_pb2.FAULT_PARTY_CHAIN,
                    common_pb2.FAILURE_CODE_CHAIN_UNAVAILABLE,
                    "the RPC refused every submission",
                ),
                failed(
                    pools.farmer_id,
                    common_pb2.FAULT_PARTY_POOL,
                    common_pb2.FAILURE_CODE_WORK_LATE,
                    "the assignment came after the deadline",
                ),
                failed(
                    own.farmer_id,
                    common_pb2.FAULT_PARTY_POOLER,
                    common_pb2.FAILURE_CODE_MINER_FAILED,
                    "the miner crashed",
                ),
            ],
        ),
        metadata=auth,
    )
    assert reported.recorded == 3
    await _open_next_block(pool, stub, auth, block)

    # The loop reads the four pails (none worked) and records what the chain shows,
    # keeping the party of each failure reported; then the block settles.
    await pool.start(harvest_interval=0.1)

    async def compensated() -> bool:  # written in one transaction once the block settles
        return await pool.count("pooler_compensations") >= 3

    await until(compensated, 30)
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT farmer_id::text, fault::text, error_code FROM works"
            " WHERE block_index = %s AND observed_on_chain ORDER BY id",
            (block,),
        )
        observed = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
    assert observed == {
        chains.farmer_id: ("chain", "WORK_MISSING"),
        pools.farmer_id: ("pool", "WORK_MISSING"),
        own.farmer_id: ("pooler", "WORK_MISSING"),
        idle.farmer_id: ("pooler", "WORK_MISSING"),
    }
    listed = await pool.operator().ListCompensations(pool_pb2.ListCompensationsRequest())
    owed = {c.farmer_id: (c.owed_by, c.kind, c.amount_stroops) for c in listed.compensations}
    work_failure = records_pb2.COMPENSATION_KIND_WORK_FAILURE
    # The stake burned, plus the block's average reward (nothing was harvested: 0).
    assert owed == {
        pools.farmer_id: (common_pb2.FAULT_PARTY_POOL, work_failure, 5 * KALE),
        own.farmer_id: (common_pb2.FAULT_PARTY_POOLER, work_failure, 5 * KALE),
        idle.farmer_id: (common_pb2.FAULT_PARTY_POOLER, work_failure, 5 * KALE),
    }
    reasons = {c.farmer_id: c.reason for c in listed.compensations}
    assert "confirming the failure the pooler reported (WORK_LATE" in reasons[pools.farmer_id]
    block_view = await pool.operator().GetBlock(pool_pb2.GetBlockRequest(block_index=block))
    assert block_view.block.counts.works_failed == 4  # a confirmation is not a second failure
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []
