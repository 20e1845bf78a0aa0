"""Shares, with the real wallet, pool and devnet: a harvest of reward R credits the farmer
R - fee - share, the fee wallet and the pooler's share wallet hold their parts on chain,
each part is swept once (a pass again changes nothing), the pooler's share is shown in
its stats and paid to its registered key (once per key), and `kale-pool check` finds the
books equal to the chain."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.amounts import share_of
from kalepool.app.books import audit_books
from kalepool.chain import build_work, current_block, kale_balance, sign, submit
from kalepool.db.consistency import check_consistency
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2, wallet_pb2
from tests.chain.stage import mine
from wallet_service.policy import PayoutLimits

from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer

FEE_BPS, SHARE_BPS = 100, 500


async def _rows(pool: PoolStage, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(query, params)
        return list(await cur.fetchall())


async def _worked_and_harvested(pool: PoolStage, auth: Any, farmer: pool_pb2.Farmer) -> int:
    """Plant, work from a pooler's account, open the next block, harvest; the reward."""
    block = await _worked(pool, auth)
    asked = await pool.pooler().RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block, farmer_ids=[farmer.farmer_id]),
        metadata=auth,
    )
    assert [h.farmer_id for h in asked.harvested] == [farmer.farmer_id], asked
    reward = asked.harvested[0].reward_stroops
    assert reward > 0
    return reward


async def _worked(pool: PoolStage, auth: Any) -> int:
    """Plant, work from a pooler's account and open the next block; the worked block."""
    stub = pool.pooler()
    block = (await current_block(pool.chain)).index
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    worker = await pool.stage.account()
    reports = []
    for a in snapshot.assignments:
        nonce, digest, zeros = mine(block, a.entropy, a.farmer_address, 1)
        tx = await build_work(pool.chain, a.farmer_address, digest, nonce, source=worker.public_key)
        outcome = await submit(pool.chain, sign(tx, worker))
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
    now = await current_block(pool.chain)
    await pool.stage.advance(now.next_block_at - (await pool.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block + 1), metadata=auth)
    return block


async def _with_fees(pool: PoolStage) -> tuple[pool_pb2.Pooler, Any, str, str]:
    """Wallet and pool restarted taking FEE_BPS and SHARE_BPS, paying the fee to an
    operator account; a pooler registered with a key of its own: (pooler, its auth, its
    key's address, the operator's address)."""
    # The operator's fee address: an account of its own that trusts KALE.
    operator = (await pool.stage.account(trust=True)).public_key
    wallet_port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    await pool.wallet.start(
        wallet_port,
        limits=PayoutLimits(
            pool_fee_bps=FEE_BPS, pooler_share_bps=SHARE_BPS, pool_fee_address=operator
        ),
    )
    await pool.start(
        pool_fee_bps=FEE_BPS,
        pooler_share_bps=SHARE_BPS,
        pool_fee_address=operator,
        share_sweep_interval_seconds=0.2,
        pooler_obligation_limit_kale=100,
    )
    # The pooler's registered key: an account of its own that trusts KALE.
    pooler_key = (await pool.stage.account(trust=True)).public_key
    pooler, key = await pool.register_pooler(public_key=pooler_key)
    return pooler, bearer(key), pooler_key, operator


async def _accounts_made(pool: PoolStage) -> dict[str, str]:
    """Once the first parts due made the fee and the share wallets: kind -> address."""

    async def made() -> bool:
        return len(await _rows(pool, "SELECT 1 FROM accounts")) == 2

    await until(made, 30)
    return dict(await _rows(pool, "SELECT kind::text, custodial_public_key FROM accounts"))


async def _funded_and_swept(pool: PoolStage, accounts: dict[str, str]) -> None:
    """Fund the wallets with XLM as the operator does; return once both parts are swept."""
    for address in accounts.values():
        await pool.stage.friendbot(address)

    async def swept() -> bool:
        rows = await _rows(pool, "SELECT status::text FROM sweeps")
        return len(rows) == 2 and all(r[0] == "success" for r in rows)

    await until(swept, 30)


async def test_a_harvest_pays_the_fee_and_the_share_on_chain_and_the_books_follow(
    pool: PoolStage,
) -> None:
    pooler, auth, pooler_key, operator = await _with_fees(pool)
    # No wallet before the first part is due: no address to fund yet.
    before = await pool.operator().GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert before.fee_account_address == "" and before.fee_earned_stroops == 0

    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    reward = await _worked_and_harvested(pool, auth, farmer)
    fee, share = share_of(reward, FEE_BPS), share_of(reward, SHARE_BPS)
    assert fee > 0 and share > 0

    # The first parts due make the fee and share wallets; the operator funds them with
    # XLM (nothing is swept into a wallet that does not exist on chain).
    accounts = await _accounts_made(pool)
    assert await _rows(pool, "SELECT 1 FROM sweeps") == []
    fee_wallet, share_wallet = accounts["pool_fee"], accounts["pooler_share"]
    assert await _rows(
        pool, "SELECT pooler_id::text, payout_address FROM accounts WHERE kind = 'pooler_share'"
    ) == [(pooler.pooler_id, pooler.public_key)]
    await _funded_and_swept(pool, accounts)
    # On chain: the parts left the farmer's account into the two wallets.
    stake = 5 * KALE
    assert await kale_balance(pool.chain, fee_wallet) == fee
    assert await kale_balance(pool.chain, share_wallet) == share
    # In the books: the farmer credited R - fee - share (its balance is its account's KALE
    # on chain), the accounts their parts.
    entries = await _rows(
        pool,
        "SELECT kind::text, amount FROM balance_ledger WHERE farmer_id = %s"
        " AND kind::text IN ('harvest', 'pool_fee', 'pooler_share') ORDER BY id",
        farmer.farmer_id,
    )
    assert entries == [("harvest", reward + stake), ("pool_fee", -fee), ("pooler_share", -share)]
    got = (
        await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    ).farmer
    assert got.balance_stroops == await kale_balance(pool.chain, farmer.custodial_address)
    listed = await pool.operator().ListFarmerLedger(
        pool_pb2.ListFarmerLedgerRequest(farmer_id=farmer.farmer_id)
    )
    swept_entries = {e.kind: e for e in listed.entries if e.amount_stroops in (-fee, -share)}
    assert swept_entries[records_pb2.LEDGER_ENTRY_KIND_POOL_FEE].amount_stroops == -fee
    shared = swept_entries[records_pb2.LEDGER_ENTRY_KIND_POOLER_SHARE]
    assert shared.amount_stroops == -share and len(shared.tx_hash) == 64
    assert dict(await _rows(pool, "SELECT kind::text, current_balance FROM accounts")) == {
        "pool_fee": fee,
        "pooler_share": share,
    }

    # Once: more passes sweep nothing again.
    before = await _rows(pool, "SELECT id, status::text FROM sweeps ORDER BY id")
    entries_before = await _rows(pool, "SELECT count(*) FROM balance_ledger")
    assert pool.server is not None
    for _ in range(2):
        assert await pool.server.shares.run_once() == 0
    assert await _rows(pool, "SELECT id, status::text FROM sweeps ORDER BY id") == before
    assert await _rows(pool, "SELECT count(*) FROM balance_ledger") == entries_before
    assert await kale_balance(pool.chain, fee_wallet) == fee

    # The pooler's share: earned, then paid to its registered key (once per key).
    op = pool.operator()
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pooler.pooler_id))
    assert (stats.share_earned_stroops, stats.share_pending_stroops) == (share, 0)
    assert (stats.share_paid_stroops, stats.share_balance_stroops) == (0, share)
    # The wallets' addresses too: how `kale-pool up` finds the ones to fund on the devnet.
    assert stats.share_account_address == share_wallet
    totals = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert totals.fee_account_address == fee_wallet
    assert (totals.fee_earned_stroops, totals.fee_pending_stroops) == (fee, 0)
    assert totals.fee_balance_stroops == fee
    ask = pool_pb2.RequestPoolerPayoutRequest(pooler_id=pooler.pooler_id, idempotency_key="p1")
    paid = await op.RequestPoolerPayout(ask)
    assert paid.transaction.status == common_pb2.TX_STATUS_SUCCESS, paid
    assert paid.amount_stroops == share and paid.destination_address == pooler_key
    assert await kale_balance(pool.chain, pooler_key) == share
    assert await kale_balance(pool.chain, share_wallet) == 0
    again = await op.RequestPoolerPayout(ask)
    assert (
        again.payout_id == paid.payout_id and again.transaction.tx_hash == paid.transaction.tx_hash
    )
    assert await kale_balance(pool.chain, pooler_key) == share
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await op.RequestPoolerPayout(
            pool_pb2.RequestPoolerPayoutRequest(pooler_id=pooler.pooler_id, amount_stroops=1)
        )
    assert empty.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await op.RequestPoolerPayout(
            pool_pb2.RequestPoolerPayoutRequest(pooler_id=str(uuid.uuid4()))
        )
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pooler.pooler_id))
    assert (stats.share_earned_stroops, stats.share_paid_stroops) == (share, share)
    assert stats.share_balance_stroops == 0

    # Compensations (written here as the block settlement writes them, tested in
    # test_blocks.py): one the pool owes, paid from the fee account into the farmer's
    # account once; one the pooler owes, past its share balance (paid out above): it
    # stays owed, the pooler is flagged and given no new farmers.
    comp, big = fee // 2, 200 * KALE
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        await conn.execute(
            "INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index,"
            " compensation_type, owed_by, amount, reason) VALUES"
            " (%s, %s, 4000000, 'plant_failure', 'pool', %s, 'the pool failed a plant'),"
            " (%s, %s, 4000000, 'work_failure', 'pooler', %s, 'the pooler missed a work')",
            (pooler.pooler_id, farmer.farmer_id, comp, pooler.pooler_id, farmer.farmer_id, big),
        )
    held = await kale_balance(pool.chain, farmer.custodial_address) or 0
    deposits = await pool.deposited(farmer.farmer_id)

    async def compensated() -> bool:
        rows = await _rows(pool, "SELECT owed_by::text, is_paid FROM compensation_status")
        return dict(rows) == {"pool": True, "pooler": False}

    await until(compensated, 30)
    assert await kale_balance(pool.chain, farmer.custodial_address) == held + comp
    assert await kale_balance(pool.chain, fee_wallet) == fee - comp
    for _ in range(2):  # once: more passes pay nothing again
        await pool.server.shares.run_once()
    assert await _rows(pool, "SELECT count(*), min(status::text) FROM compensation_payments") == [
        (1, "success")
    ]
    assert await kale_balance(pool.chain, farmer.custodial_address) == held + comp
    assert await pool.deposited(farmer.farmer_id) == deposits  # not taken for a deposit
    credited = await _rows(
        pool,
        "SELECT amount FROM balance_ledger WHERE farmer_id = %s AND kind = 'compensation'",
        farmer.farmer_id,
    )
    assert credited == [(comp,)]
    listed = await op.ListCompensations(
        pool_pb2.ListCompensationsRequest(pooler_id=pooler.pooler_id)
    )
    assert (listed.owed_stroops, listed.paid_stroops) == (big, comp)
    assert sorted(c.paid for c in listed.compensations) == [False, True]
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pooler.pooler_id))
    assert stats.compensations_owed_stroops == big
    assert stats.obligations_exceed_earnings and stats.closed_to_farmers
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler.pooler_id, payout_address=Keypair.random().public_key
            )
        )
    assert closed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "takes no new farmers" in (closed.value.details() or "")

    # The fee left after the compensation: paid to the operator's address, once per key.
    fee_left = fee - comp
    ask_fee = pool_pb2.RequestFeePayoutRequest(idempotency_key="fee-1")
    fee_paid = await op.RequestFeePayout(ask_fee)
    assert fee_paid.transaction.status == common_pb2.TX_STATUS_SUCCESS, fee_paid
    assert (fee_paid.amount_stroops, fee_paid.destination_address) == (fee_left, operator)
    assert await kale_balance(pool.chain, operator) == fee_left
    assert await kale_balance(pool.chain, fee_wallet) == 0
    assert (await op.RequestFeePayout(ask_fee)).payout_id == fee_paid.payout_id
    assert await kale_balance(pool.chain, operator) == fee_left
    with pytest.raises(grpc.aio.AioRpcError) as nothing_left:
        await op.RequestFeePayout(pool_pb2.RequestFeePayoutRequest(amount_stroops=1))
    assert nothing_left.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    # The books agree with themselves and with the chain.
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []
    report = await audit_books(pool.auditor_conninfo, pool.chain)
    assert report.ok, report.differences
    assert not report.in_flight, report.in_flight


async def test_the_pools_own_harvest_read_first_by_the_chain_follower_is_swept(
    pool: PoolStage,
) -> None:
    """The harvest loop and the chain follower race to record the pool's own harvest (both
    see its ledger within a poll). Read first by the follower, it is recorded as the
    pool's own (the farmer's custodial account sent it, with the key only the wallet
    holds), so its fee and share are swept all the same; the harvest loop asking again
    finds the same harvest, recorded once."""
    pooler, auth, _, _ = await _with_fees(pool)
    farmer = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    block = await _worked(pool, auth)
    # The harvest as the pool's harvest loop asks the wallet for it, its answer never
    # recorded (a pool gone after asking): the chain follower alone records it.
    made = await pool.wallet.stub.Harvest(
        wallet_pb2.HarvestRequest(
            idempotency_key=f"harvest:{farmer.farmer_id}:{block}",
            farmer_address=farmer.custodial_address,
            block_index=block,
        )
    )
    assert made.outcome.status == common_pb2.TX_STATUS_SUCCESS, made

    async def recorded() -> bool:
        return bool(await _rows(pool, "SELECT 1 FROM harvests"))

    await until(recorded, 30)
    assert await _rows(pool, "SELECT tx_hash, observed_on_chain, reward_amount FROM harvests") == [
        (made.outcome.tx_hash, False, made.reward_stroops)
    ]
    accounts = await _accounts_made(pool)
    await _funded_and_swept(pool, accounts)
    assert await kale_balance(pool.chain, accounts["pool_fee"]) == share_of(
        made.reward_stroops, FEE_BPS
    )
    assert await kale_balance(pool.chain, accounts["pooler_share"]) == share_of(
        made.reward_stroops, SHARE_BPS
    )
    asked = await pool.pooler().RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block, farmer_ids=[farmer.farmer_id]),
        metadata=auth,
    )
    assert [(h.farmer_id, h.transaction.tx_hash) for h in asked.harvested] == [
        (farmer.farmer_id, made.outcome.tx_hash)
    ]
    assert len(await _rows(pool, "SELECT 1 FROM harvests")) == 1
