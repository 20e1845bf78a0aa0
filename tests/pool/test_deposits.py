"""The chain follower: KALE sent to a custodial account is credited once, by a classic
payment or the friendbot's mint, across restarts and with two pool servers on one
database; a harvest made by someone else is recorded once with the contract's reward; a
transfer of 0 stops nothing; a pool upgraded from books kept by hand starts following at
the latest ledger."""

from __future__ import annotations

import logging

import psycopg
import pytest
from stellar_sdk import scval

from kalepool.chain import (
    TxKind,
    build_harvest,
    build_payment,
    current_block,
    kale_balance,
    read_token_events,
)
from kalepool.chain.calls import invoke
from kalepool.db.consistency import check_consistency
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2

from .conftest import KALE, PoolStage, until
from .test_harvest import _open_next_block
from .test_pooler_auth import bearer
from .test_stream_and_work import submit_work


async def _deposits(pool: PoolStage, farmer_id: str) -> list[tuple[str, int, str | None]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT event_id, amount, from_address FROM deposits WHERE farmer_id = %s"
            " ORDER BY event_id",
            (farmer_id,),
        )
        return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


async def _credits(pool: PoolStage, farmer_id: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT amount FROM balance_ledger WHERE farmer_id = %s AND kind = 'deposit'"
            " ORDER BY id",
            (farmer_id,),
        )
        return [r[0] for r in await cur.fetchall()]


async def _follower_ledger(pool: PoolStage) -> int:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute("SELECT ledger FROM chain_cursors WHERE name = 'kale-events'")
        row = await cur.fetchone()
        return -1 if row is None else int(row[0])


async def test_deposits_are_credited_once_across_restarts_and_replicas(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    # The friendbot's KALE is a mint from the issuer: credited as a deposit (the fixture
    # waits for it).
    farmer = await pool.funded_farmer(pooler.pooler_id, kale=3 * KALE)
    assert farmer.balance_stroops == 3 * KALE
    address, farmer_id = farmer.custodial_address, farmer.farmer_id
    payer = await pool.stage.account(kale=20 * KALE)

    async def pay(amount: int) -> None:
        tx = await build_payment(pool.chain, payer.public_key, address, amount)
        assert (await pool.stage.run(tx, payer)).ok

    async def credited(total: int) -> None:
        async def done() -> bool:
            return sum(await _credits(pool, farmer_id)) >= total

        await until(done, 30)

    # A classic payment from the farmer's own account.
    await pay(2 * KALE)
    await credited(5 * KALE)
    minted, paid = await _deposits(pool, farmer_id)
    assert (minted[1], minted[2]) == (3 * KALE, None)
    assert (paid[1], paid[2]) == (2 * KALE, payer.public_key)
    op = pool.operator()
    ledger = await op.ListFarmerLedger(pool_pb2.ListFarmerLedgerRequest(farmer_id=farmer_id))
    newest = ledger.entries[0]
    assert (newest.kind, newest.amount_stroops) == (records_pb2.LEDGER_ENTRY_KIND_DEPOSIT, 2 * KALE)
    assert len(newest.tx_hash) == 64 and newest.source_id

    # Deposits made while the pool is down are credited once it is back, once.
    assert pool.server is not None
    await pool.server.stop(0)
    await pool.stage.friendbot(address, KALE)
    await pay(KALE)
    await pool.start()
    await credited(7 * KALE)

    # Two pool servers on one database: each deposit is credited once.
    await pool.start_replica()
    await pool.stage.friendbot(address, KALE)
    await pay(KALE)
    await pool.stage.friendbot(address, 2 * KALE)
    await credited(11 * KALE)

    # A second pass over every event (the cursor rewound, as after a crash between the
    # writes and the cursor) credits nothing again.
    caught_up = await _follower_ledger(pool)
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        await conn.execute("UPDATE chain_cursors SET cursor = NULL, ledger = 0")

    async def reread() -> bool:
        return await _follower_ledger(pool) > caught_up

    await until(reread, 30)
    assert len(await _deposits(pool, farmer_id)) == 7
    assert sorted(await _credits(pool, farmer_id)) == [x * KALE for x in (1, 1, 1, 1, 2, 2, 3)]
    # The books and the chain agree.
    op = pool.operator()
    now = (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer_id))).farmer
    assert now.balance_stroops == 11 * KALE == await kale_balance(pool.chain, address)
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_a_harvest_made_by_someone_else_is_recorded_once(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    farmer, silent = [
        await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE) for _ in range(2)
    ]
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    by_farmer = {a.farmer_id: a for a in snapshot.assignments}
    fee = await pool.stage.account()
    worked = await submit_work(pool, by_farmer[farmer.farmer_id], fee)
    # The other farmer's work lands on chain but is never reported.
    await submit_work(pool, by_farmer[silent.farmer_id], fee)
    reported = await stub.ReportWork(
        pooler_pb2.ReportWorkRequest(block_index=block, results=[worked.report]), metadata=auth
    )
    assert reported.recorded == 1
    await _open_next_block(pool, stub, auth, block)

    # From here the follower reads the chain only when the pool starts (once it did).
    assert pool.server is not None
    await pool.server.stop(0)
    before = await _follower_ledger(pool)
    await pool.start(deposit_poll_interval_seconds=3600)

    async def first_pass() -> bool:
        return await _follower_ledger(pool) > before

    await until(first_pass)
    stub = pool.pooler()
    third = await pool.stage.account()
    outcomes = {}
    for f in (farmer, silent):
        tx = await build_harvest(pool.chain, f.custodial_address, block, source=third.public_key)
        outcome = await pool.stage.run(tx, third)
        assert outcome.ok and outcome.value is not None and outcome.value > 0
        outcomes[f.farmer_id] = outcome

    # The pool finds the pails gone; until the follower has read that far it cannot know
    # whether someone harvested them: pending, nothing recorded, nothing owed.
    early = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth
    )
    assert [p.farmer_id for p in early.pending] == [farmer.farmer_id]
    assert not early.harvested and not early.failed
    assert await pool.count("harvests") == 0
    assert await pool.count("works") == 1  # the silent pail is not recorded gone

    # The follower reads the chain: the harvests are recorded, with the contract's reward.
    await pool.start()
    stub = pool.pooler()

    async def recorded() -> bool:
        return await pool.count("harvests") == 2

    await until(recorded, 30)
    # Seen on chain, not made through the wallet: the pool's rows say so themselves.
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute("SELECT bool_and(observed_on_chain) FROM harvests")
        assert await cur.fetchone() == (True,)
    asked = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth
    )
    got = {h.farmer_id: h for h in asked.harvested}
    assert set(got) == {farmer.farmer_id, silent.farmer_id}
    for farmer_id, outcome in outcomes.items():
        h = got[farmer_id]
        assert (h.reward_stroops, h.stake_returned_stroops) == (outcome.value, 5 * KALE)
        assert h.transaction.tx_hash == outcome.hash
        assert h.status == records_pb2.EVENT_STATUS_SUCCEEDED
    assert not asked.failed and not asked.pending
    await pool.start(harvest_interval=0.05)
    stub = pool.pooler()
    await stub.RequestHarvest(pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth)
    assert await pool.count("harvests") == 2
    assert await pool.count("works") == 1  # a harvested pail needs no work row to be owed nothing
    op = pool.operator()
    for f in (farmer, silent):
        # Credited once, as a harvest (no deposit); the books equal the chain.
        assert await _credits(pool, f.farmer_id) == [10 * KALE]
        entries = await op.ListFarmerLedger(pool_pb2.ListFarmerLedgerRequest(farmer_id=f.farmer_id))
        rewards = [e for e in entries.entries if e.kind == records_pb2.LEDGER_ENTRY_KIND_REWARD]
        outcome = outcomes[f.farmer_id]
        assert outcome.value is not None
        assert [(e.amount_stroops, e.tx_hash) for e in rewards] == [
            (outcome.value + 5 * KALE, outcome.hash)
        ]
        now = (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=f.farmer_id))).farmer
        assert now.balance_stroops == await kale_balance(pool.chain, f.custodial_address)
    # Nothing is owed: both pails were worked on chain.
    comps = await op.ListCompensations(pool_pb2.ListCompensationsRequest())
    assert list(comps.compensations) == []
    block_view = await op.GetBlock(pool_pb2.GetBlockRequest(block_index=block))
    assert block_view.block.status == pool_pb2.BLOCK_STATUS_COMPLETED
    assert (block_view.block.counts.harvests_succeeded, block_view.block.counts.works_failed) == (
        2,
        0,
    )
    assert block_view.harvests[0].transaction.status == common_pb2.TX_STATUS_SUCCESS
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_a_transfer_of_nothing_stops_nothing(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    farmer = await pool.funded_farmer(pooler.pooler_id, kale=KALE)
    address = farmer.custodial_address
    payer = await pool.stage.account(kale=5 * KALE)
    chain = pool.chain
    # The asset contract accepts a transfer of 0 (a classic payment of 0 is malformed):
    # anyone can send one to a custodial account, and the chain reports it as a movement.
    zero = await invoke(
        chain,
        TxKind.TRANSFER,
        payer.public_key,
        chain.config.sac_contract_id,
        "transfer",
        [scval.to_address(payer.public_key), scval.to_address(address), scval.to_int128(0)],
    )
    sent = await pool.stage.run(zero, payer)
    assert sent.ok and sent.ledger is not None
    page = await read_token_events(chain, start_ledger=sent.ledger)
    assert [(e.kind, e.to_address, e.amount) for e in page.events if e.tx_hash == sent.hash] == [
        ("transfer", address, 0)
    ]
    # A real deposit after it is credited: the follower went past the 0.
    paid = await pool.stage.run(
        await build_payment(chain, payer.public_key, address, 2 * KALE), payer
    )
    assert paid.ok

    async def credited() -> bool:
        return await pool.deposited(farmer.farmer_id) == 3 * KALE

    await until(credited, 30)
    deposits = await _deposits(pool, farmer.farmer_id)
    assert [d[1] for d in deposits] == [KALE, 2 * KALE]
    now = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert now.farmer.balance_stroops == 3 * KALE == await kale_balance(chain, address)


async def test_an_upgraded_pool_starts_following_at_the_latest_ledger(
    pool: PoolStage, caplog: pytest.LogCaptureFixture
) -> None:
    pooler, _ = await pool.register_pooler()
    fresh = await pool.funded_farmer(pooler.pooler_id)
    old = await pool.funded_farmer(pooler.pooler_id)

    async def forget_the_follower() -> None:
        """The pool as it was before the follower existed: no cursor row."""
        assert pool.server is not None
        await pool.server.stop(0)
        pool.server = None
        async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as c:
            await c.execute("DELETE FROM chain_cursors")

    # No ledger entry yet: a first start reads from the oldest ledger served, and so
    # credits what was sent before it started.
    await forget_the_follower()
    await pool.stage.friendbot(fresh.custodial_address, 3 * KALE)
    await pool.start()

    async def fresh_credited() -> bool:
        return await pool.deposited(fresh.farmer_id) == 3 * KALE

    await until(fresh_credited, 30)

    # Books kept before the follower: the operator credited a deposit by hand. A first
    # start on them reads from the latest ledger, so that deposit is not credited again.
    await forget_the_follower()
    await pool.stage.friendbot(old.custodial_address, 5 * KALE)
    await pool.credit(old.farmer_id, 5 * KALE)
    with caplog.at_level(logging.INFO, logger="pool_service.deposits"):
        await pool.start()
        payer = await pool.stage.account(kale=5 * KALE)
        paid = await pool.stage.run(
            await build_payment(pool.chain, payer.public_key, old.custodial_address, KALE), payer
        )
        assert paid.ok

        async def paid_credited() -> bool:
            return any(d[2] == payer.public_key for d in await _deposits(pool, old.farmer_id))

        await until(paid_credited, 30)
    assert [d[1] for d in await _deposits(pool, old.farmer_id)] == [KALE]
    said = [r for r in caplog.records if "latest" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "kale-pool check" in said[0].getMessage()
    op = pool.operator()
    for farmer, kale in ((old, 6 * KALE), (fresh, 3 * KALE)):
        now = (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))).farmer
        assert (
            now.balance_stroops == kale == await kale_balance(pool.chain, farmer.custodial_address)
        )
