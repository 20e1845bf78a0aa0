"""`kale-pool check` against the chain (kalepool.app.books), on real parts: the wallet
and pool servers over mTLS, real PostgreSQL, the devnet. Books that agree with the chain
pass; a difference planted by hand (in the database, or on the chain behind the pool's
back) is named, each one; what is in flight is named apart and does not fail the check."""

from __future__ import annotations

import asyncio

import psycopg

from kalepool.app.books import BooksReport, Effect, audit_books, explained
from kalepool.chain import current_block, kale_balance
from kalepool.v1 import pool_pb2, pooler_pb2, wallet_pb2
from tests.pool.conftest import KALE, PoolStage, until
from tests.pool.test_pooler_auth import bearer


async def _planted_farm(
    pool: PoolStage, payee: str | None = None
) -> tuple[list[pool_pb2.Farmer], str, int]:
    """Three funded farmers (paying out to `payee`, else each to an account of its own),
    two planted by the pool in the current block."""
    pooler, key = await pool.register_pooler(max_farmers=10)
    farmers = [
        await pool.funded_farmer(
            pooler.pooler_id, stake_bps=5000, kale=20 * KALE, payout_address=payee
        )
        for _ in range(3)
    ]
    block = (await current_block(pool.chain)).index
    got = await pool.pooler().RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block, max_farmers=2), metadata=bearer(key)
    )
    assert len(got.planted) == 2, got
    return farmers, pooler.pooler_id, block


def _lines(report: BooksReport, farmer: str) -> list[str]:
    return [d for d in report.differences if farmer in d]


async def test_books_that_follow_the_chain_pass(pool: PoolStage) -> None:
    await _planted_farm(pool)
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert report.differences == [], report
    assert report.checked["balances"] == 3 and report.checked["pails"] >= 3
    assert report.checked["token events"] >= 3 + 2  # three deposits, two stakes burned


async def test_a_ledger_entry_the_chain_never_saw_is_named(pool: PoolStage) -> None:
    farmers, _, _ = await _planted_farm(pool)
    await pool.credit(farmers[0].farmer_id, KALE)  # an operator's mistaken adjustment
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert len(report.differences) == 1, report
    (line,) = report.differences
    assert farmers[0].farmer_id in line and "chain - ledger = -1 KALE" in line


async def test_moves_behind_the_pools_back_are_named(pool: PoolStage) -> None:
    payee = await pool.stage.account(trust=True)
    farmers, _, block = await _planted_farm(pool, payee.public_key)
    wallet = pool.wallet.stub
    # KALE sent out of a custodial account with no payout in the books (to the farmer's
    # registered address: the only one the wallet pays).
    sent = await wallet.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="not-a-payout",
            source_address=farmers[1].custodial_address,
            destination_address=payee.public_key,
            amount_stroops=KALE,
        )
    )
    assert sent.outcome.ledger > 0, sent
    # A plant the pool never asked for (the third farmer was not planted).
    planted = await wallet.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key="not-a-pool-plant",
            farmer_address=farmers[2].custodial_address,
            block_index=block,
            stake_stroops=2 * KALE,
        )
    )
    assert planted.plant_ledger > 0, planted

    report = await audit_books(pool.auditor_conninfo, pool.chain)
    moved, plant = farmers[1].farmer_id, farmers[2].farmer_id
    assert any("chain - ledger = -1 KALE" in d for d in _lines(report, moved)), report
    assert any(
        "left the custodial account; no payout, sweep or close records it" in d
        for d in _lines(report, moved)
    ), report
    assert any(
        sent.outcome.tx_hash in d and "no payout or sweep holds it" in d for d in report.differences
    )
    assert any("chain - ledger = -2 KALE" in d for d in _lines(report, plant)), report
    assert any(
        f"block {block}: a pail is on chain" in d and "no planting is recorded" in d
        for d in _lines(report, plant)
    ), report
    assert any("burned KALE; no planting records it" in d for d in _lines(report, plant))
    assert any(
        planted.outcome.tx_hash in d and "no such planting record" in d for d in report.differences
    ), report
    untouched = farmers[0].farmer_id
    assert _lines(report, untouched) == [], report


async def test_what_is_in_flight_is_named_apart(pool: PoolStage) -> None:
    _, pooler_id, _ = await _planted_farm(pool)
    payee = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(pooler_id, kale=20 * KALE, payout_address=payee.public_key)
    op = pool.operator()

    async def pay() -> pool_pb2.RequestPayoutResponse:
        return await op.RequestPayout(
            pool_pb2.RequestPayoutRequest(
                farmer_id=farmer.farmer_id, amount_stroops=3 * KALE, idempotency_key="p1"
            )
        )

    # No ledger closes: the payout is debited and its transfer sent, but not applied.
    await pool.wallet.closer.hold()
    payout = asyncio.create_task(pay())
    try:

        async def sent() -> bool:
            async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM transactions WHERE kind = 'payout' AND status = 'pending'"
                )
                return await cur.fetchone() is not None

        await until(sent)
        report = await audit_books(pool.auditor_conninfo, pool.chain)
        assert report.differences == [], report
        assert any(
            farmer.farmer_id in line and "payout" in line and "pending" in line
            for line in report.in_flight
        ), report
    finally:
        pool.wallet.closer.release()
        await payout
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert report.differences == [] and not any("payout" in i for i in report.in_flight), report


async def test_a_deposit_the_follower_has_not_read_is_in_flight(pool: PoolStage) -> None:
    farmers, _, _ = await _planted_farm(pool)
    farmer = farmers[2]  # not planted: nothing else in flight for it
    # The chain follower stops with the pool; KALE arrives meanwhile.
    assert pool.server is not None
    await pool.server.stop(0)
    pool.server = None
    await pool.stage.friendbot(farmer.custodial_address, 3 * KALE)

    async def arrived() -> bool:
        return await kale_balance(pool.chain, farmer.custodial_address) == 23 * KALE

    await until(arrived)
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert report.differences == [], report
    mine = [line for line in report.in_flight if farmer.farmer_id in line]
    assert any(
        "chain - ledger = 3 KALE" in line and "not read by the chain follower yet" in line
        for line in mine
    ), report

    # Once the follower has credited it, the farmer has no line at all.
    await pool.start()

    async def credited() -> bool:
        return await pool.deposited(farmer.farmer_id) == 23 * KALE

    await until(credited, 30)
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert report.differences == [], report
    assert [line for line in report.in_flight if farmer.farmer_id in line] == [], report


def test_a_difference_is_in_flight_only_if_what_is_pending_explains_it() -> None:
    stake = Effect("plant", -5)
    payout = Effect("payout", 7)
    harvest = Effect("harvest", None)
    assert explained(0, [])
    assert (
        explained(-5, [stake]) and explained(7, [stake, payout]) and explained(2, [stake, payout])
    )
    assert not explained(-4, [stake]) and not explained(3, [stake, payout])
    assert explained(100, [harvest]) and explained(95, [stake, harvest])
    assert not explained(-6, [stake, harvest])
    assert not explained(1, [stake])
