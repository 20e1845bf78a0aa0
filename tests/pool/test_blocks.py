"""Block history, statistics and compensations over a real block: two farmers planted,
one worked and harvested, the other never worked (the pooler's fault)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import psycopg
import pytest

from kalepool.chain import build_work, current_block, sign, submit
from kalepool.db.consistency import check_consistency
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2
from pool_service.harvesting import Harvester
from tests.chain.stage import mine

from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer, code_of


@dataclass
class WorkedBlock:
    pooler: pool_pb2.Pooler
    auth: tuple[tuple[str, str], ...]
    block: int
    worked: pool_pb2.Farmer
    idle: pool_pb2.Farmer
    reward: int
    zeros: int


async def worked_block(pool: PoolStage) -> WorkedBlock:
    """Plant two farmers (5 KALE stake each), work one, open the next block with the
    pooler's plant and harvest the worked pail."""
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    worked, idle = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(2)
    ]
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    (a,) = [a for a in snapshot.assignments if a.farmer_id == worked.farmer_id]
    fee_account = await pool.stage.account()
    nonce, digest, zeros = mine(block, a.entropy, a.farmer_address, 1)
    tx = await build_work(
        pool.chain, a.farmer_address, digest, nonce, source=fee_account.public_key
    )
    outcome = await submit(pool.chain, sign(tx, fee_account))
    assert outcome.ok, outcome.describe()
    report = pooler_pb2.WorkReport(
        farmer_id=a.farmer_id,
        status=records_pb2.EVENT_STATUS_SUCCEEDED,
        nonce=nonce,
        hash=digest,
        zeros=zeros,
        gap=outcome.value or 0,
        transaction=common_pb2.TransactionRef(tx_hash=outcome.hash, ledger=outcome.ledger or 0),
    )
    await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(block_index=block, results=[report]), metadata=auth
    )
    now = await current_block(pool.chain)
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=auth)
    harvested = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth
    )
    assert [h.farmer_id for h in harvested.harvested] == [worked.farmer_id]
    reward = harvested.harvested[0].reward_stroops
    return WorkedBlock(pooler, auth, block, worked, idle, reward, zeros)


async def test_blocks_and_stats_from_the_events(pool: PoolStage) -> None:
    w = await worked_block(pool)
    op = pool.operator()
    got = await op.GetBlock(pool_pb2.GetBlockRequest(block_index=w.block))
    s = got.block
    assert (s.block_index, s.pooler_id, s.status) == (w.block, "", pool_pb2.BLOCK_STATUS_COMPLETED)
    assert s.total_farmers == 2 and s.total_staked_stroops == 10 * KALE
    assert s.total_reward_stroops == w.reward > 0
    # The idle farmer's work never came: it counts as failed once the block is over.
    assert s.counts == pool_pb2.CycleCounts(
        plants_succeeded=2, works_succeeded=1, works_failed=1, harvests_succeeded=1
    )
    assert len(s.entropy) == 32 and s.opened_at.seconds > 0
    assert s.best_zeros == w.zeros > 0
    assert s.plant_requested_at.seconds > 0
    assert [p.pooler_id for p in got.poolers] == [w.pooler.pooler_id]
    assert got.poolers[0].counts == s.counts
    assert sorted(p.farmer_id for p in got.plantings) == sorted(
        [w.worked.farmer_id, w.idle.farmer_id]
    )
    # The reported work, and the idle pail as the harvest pass found it on chain.
    assert [(x.farmer_id, x.status, x.observed_on_chain) for x in got.works] == [
        (w.worked.farmer_id, records_pb2.EVENT_STATUS_SUCCEEDED, False),
        (w.idle.farmer_id, records_pb2.EVENT_STATUS_FAILED, True),
    ]
    idle_work = got.works[1].failure
    assert idle_work.code == common_pb2.FAILURE_CODE_WORK_MISSING
    assert idle_work.fault == common_pb2.FAULT_PARTY_POOLER
    assert [(h.farmer_id, h.reward_stroops) for h in got.harvests] == [
        (w.worked.farmer_id, w.reward)
    ]
    mine_only = await op.GetBlock(
        pool_pb2.GetBlockRequest(block_index=w.block, pooler_id=w.pooler.pooler_id)
    )
    assert mine_only.block.pooler_id == w.pooler.pooler_id
    assert mine_only.block.counts == s.counts

    # The next block is the chain's current one: active, planted, nothing worked yet.
    nxt = (await op.GetBlock(pool_pb2.GetBlockRequest(block_index=w.block + 1))).block
    assert nxt.status == pool_pb2.BLOCK_STATUS_ACTIVE
    assert nxt.counts == pool_pb2.CycleCounts(plants_succeeded=2)
    assert nxt.best_zeros == 0

    # Newest first, paged; filtered by status and by pooler.
    first = await op.ListBlocks(
        pool_pb2.ListBlocksRequest(pagination=common_pb2.Pagination(page_size=1))
    )
    assert [b.block_index for b in first.blocks] == [w.block + 1] and first.next_page_token
    second = await op.ListBlocks(
        pool_pb2.ListBlocksRequest(
            pagination=common_pb2.Pagination(page_size=1, page_token=first.next_page_token)
        )
    )
    assert [b.block_index for b in second.blocks] == [w.block] and not second.next_page_token
    done = await op.ListBlocks(pool_pb2.ListBlocksRequest(status=pool_pb2.BLOCK_STATUS_COMPLETED))
    assert [b.block_index for b in done.blocks] == [w.block]
    other, _ = await pool.register_pooler("idle-rig")
    none = await op.ListBlocks(pool_pb2.ListBlocksRequest(pooler_id=other.pooler_id))
    assert list(none.blocks) == []

    # Stats: the last block only, then all time.
    last = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest(last_blocks=1))
    assert last.blocks == 1 and last.counts == nxt.counts
    assert last.current_block_index == w.block + 1
    every = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert every.blocks == 2 and every.total_reward_stroops == w.reward
    assert every.counts.plants_succeeded == 4 and every.counts.works_failed == 1
    assert (every.poolers_total, every.poolers_active, every.farmers_active) == (2, 2, 2)
    assert every.total_staked_stroops == s.total_staked_stroops + nxt.total_staked_stroops
    with psycopg.connect(pool.conninfo) as conn:
        row = conn.execute("SELECT sum(current_balance) FROM farmers").fetchone()
    assert row is not None and every.total_balance_stroops == row[0]
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=w.pooler.pooler_id))
    assert stats.pooler.pooler_id == w.pooler.pooler_id and stats.blocks == 2
    assert stats.counts == every.counts and stats.total_reward_stroops == w.reward
    assert not stats.stream_connected
    idle_stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=other.pooler_id))
    assert idle_stats.blocks == 0 and idle_stats.counts == pool_pb2.CycleCounts()


async def test_block_and_stats_bad_input(pool: PoolStage) -> None:
    op = pool.operator()
    pooler, _ = await pool.register_pooler()
    before = await pool.counts()
    unknown = "00000000-0000-4000-8000-000000000000"
    cases = [
        (op.GetBlock(pool_pb2.GetBlockRequest(block_index=7)), grpc.StatusCode.NOT_FOUND),
        (
            op.GetBlock(pool_pb2.GetBlockRequest(block_index=7, pooler_id="nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.GetBlock(pool_pb2.GetBlockRequest(block_index=7, pooler_id=unknown)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (op.ListBlocks(pool_pb2.ListBlocksRequest(status=99)), grpc.StatusCode.INVALID_ARGUMENT),
        (
            op.ListBlocks(pool_pb2.ListBlocksRequest(pooler_id=unknown)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            op.ListBlocks(
                pool_pb2.ListBlocksRequest(pagination=common_pb2.Pagination(page_size=501))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.ListBlocks(
                pool_pb2.ListBlocksRequest(pagination=common_pb2.Pagination(page_token="garbage"))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=unknown)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            op.ListCompensations(
                pool_pb2.ListCompensationsRequest(owed_by=common_pb2.FAULT_PARTY_FARMER)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.ListCompensations(pool_pb2.ListCompensationsRequest(farmer_id="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in cases:
        got, message = await code_of(call)
        assert got is code and message, (code, message)
    assert await pool.counts() == before
    # A ListCompensations token is refused with other filters.
    token_page = await op.ListCompensations(
        pool_pb2.ListCompensationsRequest(pooler_id=pooler.pooler_id)
    )
    assert list(token_page.compensations) == [] and not token_page.next_page_token


def _settled_on(pool: PoolStage, block: int) -> tuple[int, object] | None:
    """The sweep's record of a settled block: (its event count then, when)."""
    with psycopg.connect(pool.conninfo) as conn:
        row = conn.execute(
            "SELECT events, settled_at FROM settled_blocks WHERE block_index = %s", (block,)
        ).fetchone()
    return (row[0], row[1]) if row else None


def _events(pool: PoolStage, block: int) -> int:
    """The block's event rows, every pooler's, counted from the events themselves."""
    with psycopg.connect(pool.conninfo) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM plantings WHERE block_index = %(b)s)"
            " + (SELECT count(*) FROM works WHERE block_index = %(b)s)"
            " + (SELECT count(*) FROM harvests WHERE block_index = %(b)s)",
            {"b": block},
        ).fetchone()
    assert row is not None
    return int(row[0])


def _remembered(pool: PoolStage, block: int) -> list[int]:
    """The event counts the block's remembered outcome counts were computed on."""
    with psycopg.connect(pool.conninfo) as conn:
        rows = conn.execute(
            "SELECT events FROM settled_block_counts WHERE block_index = %s ORDER BY pooler_id",
            (block,),
        ).fetchall()
    return [int(r[0]) for r in rows]


async def _stats_are_the_blocks_sums(pool: PoolStage, pooler_ids: list[str]) -> None:
    """The all-time statistics (remembered counts where a block settled) equal the sums
    of the blocks as ListBlocks computes them, live from the events; the compensation
    sums (kept as they are written and paid) equal the sums of the listed ones."""
    op = pool.operator()
    for pid in ["", *pooler_ids]:
        page = common_pb2.Pagination(page_size=100)
        listed = await op.ListBlocks(pool_pb2.ListBlocksRequest(pooler_id=pid, pagination=page))
        assert not listed.next_page_token
        counts = pool_pb2.CycleCounts()
        for b in listed.blocks:
            for field in ("plants_succeeded", "plants_failed", "works_succeeded"):
                setattr(counts, field, getattr(counts, field) + getattr(b.counts, field))
            for field in ("works_failed", "harvests_succeeded", "harvests_failed"):
                setattr(counts, field, getattr(counts, field) + getattr(b.counts, field))
        rewards = sum(b.total_reward_stroops for b in listed.blocks)
        if pid:
            stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pid))
            assert (stats.blocks, stats.counts, stats.total_reward_stroops) == (
                len(listed.blocks),
                counts,
                rewards,
            )
        else:
            every = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
            staked = sum(b.total_staked_stroops for b in listed.blocks)
            assert (every.blocks, every.counts, every.total_reward_stroops) == (
                len(listed.blocks),
                counts,
                rewards,
            )
            assert every.total_staked_stroops == staked

    everything = await op.ListCompensations(
        pool_pb2.ListCompensationsRequest(pagination=common_pb2.Pagination(page_size=100))
    )
    assert not everything.next_page_token
    comps = list(everything.compensations)
    requests = [pool_pb2.ListCompensationsRequest()]
    requests += [pool_pb2.ListCompensationsRequest(pooler_id=p) for p in pooler_ids]
    requests += [pool_pb2.ListCompensationsRequest(farmer_id=c.farmer_id) for c in comps]
    requests += [
        pool_pb2.ListCompensationsRequest(owed_by=party)
        for party in (common_pb2.FAULT_PARTY_POOL, common_pb2.FAULT_PARTY_POOLER)
    ]
    for request in requests:
        got = await op.ListCompensations(request)
        mine = [
            c
            for c in comps
            if request.pooler_id in ("", c.pooler_id)
            and request.farmer_id in ("", c.farmer_id)
            and request.owed_by in (common_pb2.FAULT_PARTY_UNSPECIFIED, c.owed_by)
        ]
        assert (got.owed_stroops, got.paid_stroops) == (
            sum(c.amount_stroops for c in mine if not c.paid),
            sum(c.amount_stroops for c in mine if c.paid),
        )
    every = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert (every.compensations_unpaid_stroops, every.compensations_paid_stroops) == (
        sum(c.amount_stroops for c in comps if not c.paid),
        sum(c.amount_stroops for c in comps if c.paid),
    )
    for pid in pooler_ids:
        stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pid))
        unpaid = [c for c in comps if c.pooler_id == pid and not c.paid]
        assert (stats.compensations_owed_stroops, stats.compensations_due_stroops) == (
            sum(c.amount_stroops for c in unpaid if c.owed_by == common_pb2.FAULT_PARTY_POOLER),
            sum(c.amount_stroops for c in unpaid if c.owed_by == common_pb2.FAULT_PARTY_POOL),
        )
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_missing_work_is_compensated_once_by_the_pooler(
    pool: PoolStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = await worked_block(pool)
    op = pool.operator()
    # The harvest settled the block: the idle farmer's pail was never worked.
    listed = await op.ListCompensations(pool_pb2.ListCompensationsRequest())
    (c,) = listed.compensations
    assert (c.farmer_id, c.pooler_id, c.block_index) == (
        w.idle.farmer_id,
        w.pooler.pooler_id,
        w.block,
    )
    assert c.kind == records_pb2.COMPENSATION_KIND_WORK_FAILURE
    assert c.owed_by == common_pb2.FAULT_PARTY_POOLER and c.reason and not c.paid
    # The stake burned (half of 10 KALE) plus the block's average reward (one harvest).
    assert c.amount_stroops == 5 * KALE + w.reward
    block = await op.GetBlock(pool_pb2.GetBlockRequest(block_index=w.block))
    assert list(block.compensations) == [c]
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=w.pooler.pooler_id))
    assert (stats.compensations_owed_stroops, stats.compensations_due_stroops) == (
        c.amount_stroops,
        0,
    )
    totals = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert (totals.compensations_unpaid_stroops, totals.compensations_paid_stroops) == (
        c.amount_stroops,
        0,
    )
    # Filters.
    for request, expected in [
        (pool_pb2.ListCompensationsRequest(farmer_id=w.idle.farmer_id), [c]),
        (pool_pb2.ListCompensationsRequest(farmer_id=w.worked.farmer_id), []),
        (pool_pb2.ListCompensationsRequest(owed_by=common_pb2.FAULT_PARTY_POOL), []),
        (pool_pb2.ListCompensationsRequest(owed_by=common_pb2.FAULT_PARTY_POOLER), [c]),
        (pool_pb2.ListCompensationsRequest(pooler_id=w.pooler.pooler_id, unpaid_only=True), [c]),
    ]:
        assert list((await op.ListCompensations(request)).compensations) == expected

    # A plant that failed by the pool's fault is owed by the pool (the block's average
    # reward: nothing was burned); one that failed by the farmer's own fault is owed by
    # nobody. (Recorded here as the planter records them.)
    # The sweep remembers the settled block with its event count (so later passes skip
    # it while the count stands); the late plants below change the count.
    settled_on = _settled_on(pool, w.block)
    assert settled_on is not None and settled_on[0] == _events(pool, w.block)
    # Its outcome counts are remembered with it, and read by the statistics.
    assert _remembered(pool, w.block) == [settled_on[0]]
    await _stats_are_the_blocks_sums(pool, [w.pooler.pooler_id])
    pool_fault = await pool.funded_farmer(w.pooler.pooler_id)
    own_fault = await pool.funded_farmer(w.pooler.pooler_id)
    with psycopg.connect(pool.conninfo, autocommit=True) as conn:
        for farmer, fault, code in [
            (pool_fault, "pool", "WALLET_UNAVAILABLE"),
            (own_fault, "farmer", "INSUFFICIENT_KALE"),
        ]:
            conn.execute(
                "INSERT INTO plantings (block_index, farmer_id, pooler_id, status, fault,"
                " error_code, error_message) VALUES (%s, %s, %s, 'failed', %s, %s, 'refused')",
                (w.block, farmer.farmer_id, w.pooler.pooler_id, fault, code),
            )
    # Late events: the remembered counts no longer count (the block is summed live).
    assert _remembered(pool, w.block) == [settled_on[0]] != [_events(pool, w.block)]
    await _stats_are_the_blocks_sums(pool, [w.pooler.pooler_id])
    # Asked again, and by the background loop: each written once.
    await pool.pooler().RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=w.block), metadata=w.auth
    )
    # Several passes of the background loop, each settling the block again: counted as
    # they end, so the wait is on the passes themselves.
    passes = 0
    one_pass = Harvester.run_once

    async def counted(self: Harvester) -> None:
        nonlocal passes
        await one_pass(self)
        passes += 1

    monkeypatch.setattr(Harvester, "run_once", counted)
    await pool.start(harvest_interval=0.05)
    await until(lambda: passes >= 3, what="three passes of the harvest loop")
    # Examined again for its two new events, written once; and then passed by: more
    # passes with no new event leave its record as it was.
    resettled = _settled_on(pool, w.block)
    assert resettled is not None and resettled[0] == settled_on[0] + 2
    assert _remembered(pool, w.block) == [resettled[0]]
    seen = passes
    await until(lambda: passes >= seen + 3, what="three more passes of the harvest loop")
    assert _settled_on(pool, w.block) == resettled
    await pool.start()
    op = pool.operator()
    assert await pool.count("pooler_compensations") == 2
    owed_by_pool = await op.ListCompensations(
        pool_pb2.ListCompensationsRequest(owed_by=common_pb2.FAULT_PARTY_POOL)
    )
    (p,) = owed_by_pool.compensations
    assert (p.farmer_id, p.kind, p.amount_stroops) == (
        pool_fault.farmer_id,
        records_pb2.COMPENSATION_KIND_PLANT_FAILURE,
        w.reward,
    )
    again = await op.ListCompensations(pool_pb2.ListCompensationsRequest(farmer_id=c.farmer_id))
    assert list(again.compensations) == [c]
    # The compensation of a paid block is shown as paid once a ledger entry credits it.
    with psycopg.connect(pool.conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO balance_ledger (farmer_id, amount, kind, compensation_id)"
            " VALUES (%s, %s, 'compensation', %s)",
            (w.idle.farmer_id, c.amount_stroops, int(c.compensation_id)),
        )
    paid = await op.ListCompensations(pool_pb2.ListCompensationsRequest(farmer_id=c.farmer_id))
    assert paid.compensations[0].paid and paid.compensations[0].paid_at.seconds > 0
    unpaid = await op.ListCompensations(pool_pb2.ListCompensationsRequest(unpaid_only=True))
    assert [x.farmer_id for x in unpaid.compensations] == [pool_fault.farmer_id]
    await _stats_are_the_blocks_sums(pool, [w.pooler.pooler_id])
