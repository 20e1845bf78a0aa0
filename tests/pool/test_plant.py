"""RequestPlant: every active funded farmer of the pooler planted in parallel, each
outcome recorded, nobody planted twice."""

from __future__ import annotations

import grpc
import psycopg

from kalepool.chain import current_block, kale_balance, read_pail
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2

from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer


async def _planting_rows(pool: PoolStage) -> list[tuple[str, str, int, int | None, str]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT farmer_id::text, status::text, stake_amount, ledger, fault::text"
            " FROM plantings ORDER BY id"
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]


async def test_plants_every_funded_farmer_in_parallel_once(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler(max_farmers=10)
    auth = bearer(key)
    staking = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=bps, kale=20 * KALE)
        for bps in (5000, 2500, 10000)
    ]
    zero = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000)  # nothing to stake
    # The ledger says 30 KALE, the chain holds none: the stake cannot be burned.
    broke = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, ledger_kale=30 * KALE)
    # Registered, never funded: not planted.
    await pool.operator().RegisterFarmer(
        pool_pb2.RegisterFarmerRequest(
            pooler_id=pooler.pooler_id, payout_address=zero.payout_address
        )
    )
    other_pooler, _ = await pool.register_pooler("someone-else")
    outsider = await pool.funded_farmer(other_pooler.pooler_id)

    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    first = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth
    )
    expected = {
        staking[0].farmer_id: 10 * KALE,
        staking[1].farmer_id: 5 * KALE,
        staking[2].farmer_id: 20 * KALE,
        zero.farmer_id: 0,
    }
    assert {p.farmer_id: p.stake_stroops for p in first.planted} == expected
    assert all(p.status == records_pb2.EVENT_STATUS_SUCCEEDED for p in first.planted)
    assert [f.farmer_id for f in first.failed] == [broke.farmer_id]
    failure = first.failed[0].failure
    assert failure.code == common_pb2.FAILURE_CODE_INSUFFICIENT_KALE
    assert failure.fault == common_pb2.FAULT_PARTY_FARMER and failure.message
    assert first.summary.planted == 4 and first.summary.failed == 1
    assert first.summary.total_staked_stroops == 35 * KALE
    assert outsider.farmer_id not in {p.farmer_id for p in first.planted}

    # On chain: every pail is there with its stake, the stake burned.
    for farmer in [*staking, zero]:
        pail = await read_pail(pool.chain, farmer.custodial_address, block)
        assert pail is not None and pail.stake == expected[farmer.farmer_id]
        planted = next(p for p in first.planted if p.farmer_id == farmer.farmer_id)
        assert planted.plant_ledger == pail.sequence
    assert await kale_balance(pool.chain, staking[2].custodial_address) == 0
    # The plants went out together: serially, each would have waited for its own ledger.
    assert len({p.plant_ledger for p in first.planted}) < 4

    rows = await _planting_rows(pool)
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        [(f, "success") for f in expected] + [(broke.farmer_id, "failed")]
    )
    assert next(r for r in rows if r[1] == "failed")[4] == "farmer"
    # The ledger followed the stakes (trigger): 20 KALE credited, 10 staked.
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=staking[0].farmer_id))
    assert got.farmer.balance_stroops == 10 * KALE
    transactions = await pool.count("transactions")

    # Asked again: the same planted set, nobody planted twice, no new plant transaction.
    again = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth
    )
    assert sorted((p.farmer_id, p.planting_id) for p in again.planted) == sorted(
        (p.farmer_id, p.planting_id) for p in first.planted
    )
    after = await _planting_rows(pool)
    assert [r for r in after if r[1] == "success"] == [r for r in rows if r[1] == "success"]
    assert await pool.count("transactions") == transactions
    assert [f.farmer_id for f in again.failed] == [broke.farmer_id]


async def test_a_wrong_block_is_refused_and_the_due_one_accepted(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id)
    stub = pool.pooler()
    now = await current_block(pool.chain)
    before = await pool.counts()
    for wrong in (now.index + 1, now.index + 7, max(now.index - 1, 0) if now.index else 99):
        try:
            await stub.RequestPlant(
                pooler_pb2.RequestPlantRequest(block_index=wrong), metadata=bearer(key)
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert f"the block to plant is {now.index}" in (exc.details() or "")
        else:
            raise AssertionError(f"block {wrong} was accepted")
    assert await pool.counts() == before

    # Once the current block is a block interval old, the plant opens the next one.
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    opened = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=now.index + 1), metadata=bearer(key)
    )
    assert [p.farmer_id for p in opened.planted] == [farmer.farmer_id]
    assert (await current_block(pool.chain)).index == now.index + 1


async def test_answered_when_sent_and_each_plant_recorded_as_it_lands(pool: PoolStage) -> None:
    # No reconciler: what records the plants is the request's own follow-up. Two
    # farmers to a PlantBatch: the four go in two calls, each followed by one more.
    await pool.start(plant_reconcile_interval_seconds=3600, plant_batch_size=2)
    pooler, key = await pool.register_pooler(max_farmers=10)
    auth = bearer(key)
    farmers = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE) for _ in range(3)
    ]
    broke = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, ledger_kale=30 * KALE)
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    await pool.wallet.closer.hold()  # no ledger closes: the plants can only be sent
    sent = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block, answer_when_sent=True), metadata=auth
    )
    ids = {f.farmer_id for f in farmers}
    assert {p.farmer_id for p in sent.pending} == ids and not sent.planted
    # Refused before anything was sent (the stake cannot be burned): answered as failed.
    assert [f.farmer_id for f in sent.failed] == [broke.farmer_id]
    assert sent.summary.pending == 3 and sent.summary.failed == 1
    assert [r for r in await _planting_rows(pool) if r[1] == "success"] == []
    pool.wallet.closer.release()

    async def recorded() -> bool:
        return {r[0] for r in await _planting_rows(pool) if r[1] == "success"} == ids

    await until(recorded)
    for farmer in farmers:
        pail = await read_pail(pool.chain, farmer.custodial_address, block)
        assert pail is not None
        row = next(r for r in await _planting_rows(pool) if r[0] == farmer.farmer_id)
        assert row[3] == pail.sequence  # recorded where the chain put the pail
    # Each is an assignment of the block, as the stream would carry it.
    listed = await stub.GetAssignments(
        pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=auth
    )
    assert {a.farmer_id for a in listed.assignments} == ids
    # Asked again: the same plants, recorded once, nothing signed twice.
    transactions = await pool.count("transactions")
    again = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block, answer_when_sent=True), metadata=auth
    )
    assert {p.farmer_id for p in again.planted} == ids and not again.pending
    assert await pool.count("transactions") == transactions
