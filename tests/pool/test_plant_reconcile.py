"""Plants recorded exactly once whatever crashes: every plant is written down as a request
before the wallet is called, and the reconciler drives every unsettled request to its
record (after a restart, with the wallet back, with two replicas at once). The
reconciler takes a request only once it is older than the plant deadline, so these
tests run the pool with a short one (`DEADLINE`)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest

from kalepool.chain import (
    build_harvest,
    build_plant,
    build_work,
    current_block,
    kale_balance,
    read_block,
    read_pail,
)
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2
from tests.chain.stage import mine

from .books import (
    consistency,
    make_due,
    plantings,
    requests,
    rows,
    stakes,
    wait_due,
    wait_sent,
    wallet_status,
)
from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer
from .test_stream_and_work import next_assignment

# The plant deadline these tests run with: the reconciler leaves a request this young
# to the call that may still be asking about it.
DEADLINE = 2


async def _older_than_deadline(pool: PoolStage) -> None:
    """Until every unsettled request is older than the plant deadline."""

    async def old() -> bool:
        found = await rows(
            pool,
            "SELECT count(*) FROM plant_requests WHERE settled_at IS NULL"
            " AND opened_at > now() - make_interval(secs => %s)",
            DEADLINE,
        )
        return int(found[0][0]) == 0

    await until(old)


async def _balance(pool: PoolStage, farmer_id: str) -> int:
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer_id))
    return got.farmer.balance_stroops


async def _settled(pool: PoolStage, count: int) -> None:
    async def done() -> bool:
        found = await requests(pool)
        return len(found) == count and all(r[3] for r in found)

    await until(done, 30)


async def _strand_plants(pool: PoolStage, key: str, farmers: list[str], block: int) -> None:
    """The crash: the wallet stores and sends the block's plants, and the pool stops
    with its RequestPlant in flight, so it never sees an answer; then the chain applies
    them. (With the ledger held, the wallet waits for the outcome while the pool dies.)"""
    await pool.wallet.closer.hold()
    call = asyncio.ensure_future(
        pool.pooler().RequestPlant(
            pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
        )
    )
    for farmer in farmers:
        await wait_sent(pool, f"plant:{farmer}:{block}")
    assert pool.server is not None
    await pool.server.stop(0)
    pool.server = None
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    pool.wallet.closer.release()


async def test_a_plant_the_pool_never_saw_answered_is_recorded_after_a_restart(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    address = farmer.custodial_address
    block = (await current_block(pool.chain)).index
    plant_key = f"plant:{farmer.farmer_id}:{block}"

    await _strand_plants(pool, key, [farmer.farmer_id], block)

    async def planted_on_chain() -> bool:
        return await read_pail(pool.chain, address, block) is not None

    await until(planted_on_chain)
    # The split the crash left: the stake burned on chain, nothing in the books but the
    # request written before the wallet was called.
    assert await kale_balance(pool.chain, address) == 10 * KALE
    assert await plantings(pool) == []
    assert await requests(pool) == [(plant_key, block, 10 * KALE, False, None, 1)]

    # Both restart (kale-pool up runs them in one process): the wallet settles its own
    # transaction by hash, then the pool's reconciler records it (its start-up pass, the
    # request being past its deadline by then).
    port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    restarted = await pool.wallet.start(port)
    await asyncio.wait_for(restarted.reconciled, 20)
    assert await wallet_status(pool, plant_key) == "success"
    await _older_than_deadline(pool)
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=3600)
    await _settled(pool, 1)

    pail = await read_pail(pool.chain, address, block)
    assert pail is not None and pail.stake == 10 * KALE
    [row] = await plantings(pool)
    assert row[1:] == (farmer.farmer_id, block, "success", 10 * KALE, pail.sequence, "none")
    # Its first call and the reconciler's pass: two attempts.
    assert await requests(pool) == [(plant_key, block, 10 * KALE, True, row[0], 2)]
    assert await stakes(pool) == [(farmer.farmer_id, -10 * KALE, row[0])]
    # Recorded well within the block's work window: the pooler can still work it.
    assert await rows(pool, "SELECT recorded_late FROM plantings") == [(False,)]
    # The books agree with the chain again.
    assert await _balance(pool, farmer.farmer_id) == 10 * KALE
    assert await kale_balance(pool.chain, address) == 10 * KALE
    assert await consistency(pool) == []
    # The pooler gets the assignment, and a repeat of its request plants nobody again.
    got = await pool.pooler().GetAssignments(
        pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=bearer(key)
    )
    assert [a.planting_id for a in got.assignments] == [str(row[0])]
    again = await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
    )
    assert [p.planting_id for p in again.planted] == [str(row[0])]
    assert await pool.count("transactions") == 2  # the trustline and the one plant


async def test_two_replicas_reconciling_at_once_record_each_plant_once(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    farmers = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE) for _ in range(2)
    ]
    block = (await current_block(pool.chain)).index
    await _strand_plants(pool, key, [f.farmer_id for f in farmers], block)

    async def applied() -> bool:
        pails = [await read_pail(pool.chain, f.custodial_address, block) for f in farmers]
        return all(p is not None for p in pails)

    await until(applied)
    await _older_than_deadline(pool)
    # Both replicas' start-up passes reach for the requests at the same moment (held
    # behind a table lock until both wait): each request is taken by one of them.
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as blocker:
        await blocker.execute("LOCK TABLE plant_requests IN EXCLUSIVE MODE")
        settings = {
            "plant_timeout_seconds": DEADLINE,
            "plant_reconcile_interval_seconds": 3600,
        }
        await pool.start(**settings)
        await pool.start_replica(**settings)

        async def both_waiting() -> bool:
            found = await rows(pool, "SELECT count(*) FROM pg_locks WHERE NOT granted")
            return int(found[0][0]) == 2

        await until(both_waiting, 30)
        await blocker.commit()
    await _settled(pool, 2)

    recorded = await plantings(pool)
    assert sorted(r[1] for r in recorded) == sorted(f.farmer_id for f in farmers)
    assert all(r[2:5] == (block, "success", 10 * KALE) for r in recorded)
    # Each request driven once more than its first call: by one replica only.
    assert sorted((r[4], r[5]) for r in await requests(pool)) == sorted((r[0], 2) for r in recorded)
    assert sorted(s[2] for s in await stakes(pool)) == sorted(r[0] for r in recorded)
    for f in farmers:
        assert await _balance(pool, f.farmer_id) == 10 * KALE
    assert await consistency(pool) == []


async def test_an_unreachable_wallet_leaves_the_plant_pending_until_it_is_recorded(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=10_000, kale=4 * KALE)
    block = (await current_block(pool.chain)).index
    # Streams are woken by new plants only (no poll within the test).
    await pool.start(
        feed_poll_seconds=3600,
        plant_timeout_seconds=DEADLINE,
        plant_reconcile_interval_seconds=0.05,
    )
    port = pool.wallet.server.port
    await pool.wallet.server.stop(0)

    stub = pool.pooler()
    answer = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
    )
    # UNAVAILABLE proves nothing about a send: pending, not failed, nobody blamed.
    assert not answer.planted and not answer.failed
    assert [(p.farmer_id, p.status, p.stake_stroops) for p in answer.pending] == [
        (farmer.farmer_id, records_pb2.EVENT_STATUS_PENDING, 4 * KALE)
    ]
    assert answer.summary.pending == 1
    assert await plantings(pool) == []
    assert [r[3] for r in await requests(pool)] == [False]

    stream = stub.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=bearer(key)
    )
    pooler_id = uuid.UUID(pooler.pooler_id)

    async def connected() -> bool:
        assert pool.server is not None
        return pool.server.feeds.connected(pooler_id)

    await until(connected)
    await pool.wallet.start(port)  # the wallet is back: the reconciler plants it
    assignment = await next_assignment(stream)
    assert assignment.farmer_id == farmer.farmer_id and assignment.block_index == block
    [row] = await plantings(pool)
    assert str(row[0]) == assignment.planting_id and row[3] == "success"
    assert await _balance(pool, farmer.farmer_id) == 0
    assert await kale_balance(pool.chain, farmer.custodial_address) == 0
    assert await consistency(pool) == []
    stream.cancel()


async def test_a_request_never_signed_whose_block_is_over_is_the_pools_failure(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    block = (await current_block(pool.chain)).index
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    answer = await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=bearer(key)
    )
    assert len(answer.pending) == 1

    # The block ends before the wallet is back: the plant was never sent, and now never
    # will be; the request, past its deadline, is settled as the pool's failure.
    await make_due(pool)
    await wait_due(pool)
    await pool.wallet.start(port)
    await _settled(pool, 1)
    [row] = await plantings(pool)
    assert row[1:] == (farmer.farmer_id, block, "failed", 10 * KALE, None, "pool")
    found = await rows(pool, "SELECT error_code, error_message FROM plantings")
    assert found[0][0] == "BLOCK_MISMATCH" and "never sent" in found[0][1]
    assert await pool.count("transactions") == 1  # the trustline only
    assert await read_pail(pool.chain, farmer.custodial_address, block) is None
    assert await read_pail(pool.chain, farmer.custodial_address, block + 1) is None
    assert await _balance(pool, farmer.farmer_id) == 20 * KALE
    assert await kale_balance(pool.chain, farmer.custodial_address) == 20 * KALE
    assert await consistency(pool) == []


async def test_a_plant_whose_pail_is_gone_before_the_pool_asks_again_is_recorded(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    address = farmer.custodial_address
    block = (await current_block(pool.chain)).index
    await _strand_plants(pool, key, [farmer.farmer_id], block)

    async def planted_on_chain() -> bool:
        return await read_pail(pool.chain, address, block) is not None

    await until(planted_on_chain)
    # While the pool is down the pail lives its whole life: worked, the next block opened
    # by someone else's plant, harvested by a stranger. Nothing on chain holds it now.
    chain_block = await read_block(pool.chain, block)
    assert chain_block is not None
    nonce, digest, _ = mine(block, chain_block.entropy, address, 1)
    worker, other, stranger = [await pool.stage.account() for _ in range(3)]
    work = await build_work(pool.chain, address, digest, nonce, source=worker.public_key)
    assert (await pool.stage.run(work, worker)).ok
    now = await current_block(pool.chain)
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    assert (await pool.stage.run(await build_plant(pool.chain, other.public_key, 0), other)).ok
    harvest = await build_harvest(pool.chain, address, block, source=stranger.public_key)
    harvested = await pool.stage.run(harvest, stranger)
    assert harvested.ok and harvested.value is not None
    assert await read_pail(pool.chain, address, block) is None
    assert await read_pail(pool.chain, address, block + 1) is None

    # Wallet and pool come back: the plant is located by its transaction, recorded in its
    # block with its stake debited; the stranger's harvest is recorded by the follower.
    port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    restarted = await pool.wallet.start(port)
    await asyncio.wait_for(restarted.reconciled, 20)
    await _older_than_deadline(pool)
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    await _settled(pool, 1)
    [row] = await plantings(pool)
    plant_ledger = row[5]
    assert row[1:5] == (farmer.farmer_id, block, "success", 10 * KALE) and plant_ledger
    assert await stakes(pool) == [(farmer.farmer_id, -10 * KALE, row[0])]

    async def harvest_recorded() -> bool:
        return await pool.count("harvests") == 1

    await until(harvest_recorded, 30)
    found = await rows(pool, "SELECT block_index, reward_amount, stake_amount FROM harvests")
    assert found == [(block, harvested.value, 10 * KALE)]
    chain_balance = await kale_balance(pool.chain, address)
    assert chain_balance == 20 * KALE + harvested.value
    assert await _balance(pool, farmer.farmer_id) == chain_balance
    assert await consistency(pool) == []


async def test_a_plant_recorded_after_the_work_window_is_the_pools_to_answer_for(
    pool: PoolStage,
) -> None:
    pooler, key = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=20 * KALE)
    block = (await current_block(pool.chain)).index
    await _strand_plants(pool, key, [farmer.farmer_id], block)

    async def planted_on_chain() -> bool:
        return await read_pail(pool.chain, farmer.custodial_address, block) is not None

    await until(planted_on_chain)
    # The pool stays down past the block's work window (and the block falls due): the
    # plant is on chain, but no pooler heard of it in time.
    await make_due(pool)
    await wait_due(pool)
    await _older_than_deadline(pool)
    await pool.start(plant_timeout_seconds=DEADLINE, plant_reconcile_interval_seconds=0.05)
    await _settled(pool, 1)
    found = await rows(pool, "SELECT block_index, status::text, recorded_late FROM plantings")
    assert found == [(block, "success", True)]

    # The pooler gets the assignment too late and says so, blaming itself (WORK_LATE):
    # the pool still answers for it.
    stub = pool.pooler()
    late = await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(
            block_index=block,
            results=[
                pooler_pb2.WorkReport(
                    farmer_id=farmer.farmer_id,
                    status=records_pb2.EVENT_STATUS_FAILED,
                    failure=common_pb2.Failure(
                        code=common_pb2.FAILURE_CODE_WORK_LATE,
                        fault=common_pb2.FAULT_PARTY_POOLER,
                        message="the block was over before the work could be sent",
                    ),
                )
            ],
        ),
        metadata=bearer(key),
    )
    assert late.recorded == 1
    # The next block opens; the harvest loop reads the pail (never worked) and the
    # block settles.
    await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=bearer(key)
    )
    await pool.start(
        harvest_interval=0.1,
        plant_timeout_seconds=DEADLINE,
        plant_reconcile_interval_seconds=0.05,
    )

    async def compensated() -> bool:
        return await pool.count("pooler_compensations") > 0

    await until(compensated, 30)
    observed = await rows(
        pool,
        "SELECT fault::text, error_code, error_message FROM works WHERE observed_on_chain",
    )
    assert [r[:2] for r in observed] == [("pool", "WORK_MISSING")]
    assert "after the block's work window" in observed[0][2]
    listed = await pool.operator().ListCompensations(pool_pb2.ListCompensationsRequest())
    (c,) = listed.compensations
    assert (c.farmer_id, c.block_index, c.kind, c.owed_by) == (
        farmer.farmer_id,
        block,
        records_pb2.COMPENSATION_KIND_WORK_FAILURE,
        common_pb2.FAULT_PARTY_POOL,
    )
    # The stake the plant burned (the block's average reward is 0: nobody harvested).
    assert c.amount_stroops == 10 * KALE
    assert await consistency(pool) == []
