"""Payouts (debited before the transfer, idempotent, reversed when the transfer fails,
settled after a restart) and leaving the pool (paid out, account merged)."""

from __future__ import annotations

import uuid

import grpc
import psycopg

from kalepool.chain import current_block, kale_balance, read_account
from kalepool.db.consistency import check_consistency
from kalepool.tls import WALLET_SERVER
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, records_pb2
from wallet_service.server import start_wallet_server

from .conftest import KALE, PoolStage, until
from .test_pooler_auth import bearer, code_of


async def _ledger(pool: PoolStage, farmer_id: str) -> list[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT kind::text, amount FROM balance_ledger WHERE farmer_id = %s"
            " AND kind IN ('payout', 'payout_reversal') ORDER BY id",
            (farmer_id,),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def _balance(pool: PoolStage, farmer_id: str) -> int:
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer_id))
    return got.farmer.balance_stroops


async def test_payout_once_under_retry_and_after_a_restart(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    dest = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=10 * KALE, payout_address=dest.public_key
    )
    op = pool.operator()
    ask = pool_pb2.RequestPayoutRequest(
        farmer_id=farmer.farmer_id, amount_stroops=3 * KALE, idempotency_key="first"
    )
    paid = (await op.RequestPayout(ask)).payout
    assert paid.transaction.status == common_pb2.TX_STATUS_SUCCESS and paid.transaction.tx_hash
    assert (paid.amount_stroops, paid.destination_address) == (3 * KALE, dest.public_key)
    assert paid.completed_at.seconds > 0 and not paid.HasField("failure")
    assert await kale_balance(pool.chain, dest.public_key) == 3 * KALE
    assert await _balance(pool, farmer.farmer_id) == 7 * KALE

    # A retry (also one asking "the whole balance") returns the same payout; nothing moves.
    again = (await op.RequestPayout(ask)).payout
    assert again == paid
    whole = pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, idempotency_key="first")
    assert (await op.RequestPayout(whole)).payout == paid
    assert await kale_balance(pool.chain, dest.public_key) == 3 * KALE
    assert await _ledger(pool, farmer.farmer_id) == [("payout", -3 * KALE)]

    # Bad requests change nothing.
    before = await pool.counts()
    unknown = str(uuid.uuid4())
    for call, code in [
        (
            op.RequestPayout(
                pool_pb2.RequestPayoutRequest(
                    farmer_id=farmer.farmer_id, amount_stroops=KALE, idempotency_key="first"
                )
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (
            op.RequestPayout(
                pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, amount_stroops=8 * KALE)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            op.RequestPayout(
                pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, amount_stroops=-1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.RequestPayout(pool_pb2.RequestPayoutRequest(farmer_id="nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            op.RequestPayout(pool_pb2.RequestPayoutRequest(farmer_id=unknown)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            op.RequestPayout(
                pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, idempotency_key="x" * 201)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (op.ListPayouts(pool_pb2.ListPayoutsRequest(farmer_id=unknown)), grpc.StatusCode.NOT_FOUND),
        (
            op.ListPayouts(
                pool_pb2.ListPayoutsRequest(
                    farmer_id=farmer.farmer_id,
                    pagination=common_pb2.Pagination(page_token="bad"),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        got, message = await code_of(call)
        assert got is code and message, (code, got, message)
    assert await pool.counts() == before
    assert await kale_balance(pool.chain, dest.public_key) == 3 * KALE

    # The pool stopped after recording and debiting a payout, before asking the wallet:
    # at start-up it sends it, once.
    await pool.server.stop(0)  # type: ignore[union-attr]
    crashed = uuid.uuid4()
    with psycopg.connect(pool.conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO payouts (id, farmer_id, destination, amount, wallet_key)"
            " VALUES (%s, %s, %s, %s, %s)",
            (crashed, farmer.farmer_id, dest.public_key, 2 * KALE, f"payout:{crashed}"),
        )
        conn.execute(
            "INSERT INTO balance_ledger (farmer_id, amount, kind, payout_id)"
            " VALUES (%s, %s, 'payout', %s)",
            (farmer.farmer_id, -2 * KALE, crashed),
        )
    await pool.start()

    async def settled() -> bool:
        return await kale_balance(pool.chain, dest.public_key) == 5 * KALE

    await until(settled)
    op = pool.operator()
    listed = await op.ListPayouts(
        pool_pb2.ListPayoutsRequest(
            farmer_id=farmer.farmer_id, pagination=common_pb2.Pagination(page_size=1)
        )
    )
    assert [p.payout_id for p in listed.payouts] == [str(crashed)] and listed.next_page_token

    async def recorded() -> bool:
        page = await op.ListPayouts(pool_pb2.ListPayoutsRequest(farmer_id=farmer.farmer_id))
        return page.payouts[0].transaction.status == common_pb2.TX_STATUS_SUCCESS

    await until(recorded)
    rest = await op.ListPayouts(
        pool_pb2.ListPayoutsRequest(
            farmer_id=farmer.farmer_id,
            pagination=common_pb2.Pagination(page_size=1, page_token=listed.next_page_token),
        )
    )
    assert list(rest.payouts) == [paid] and not rest.next_page_token
    await pool.start()  # a second start finds nothing pending: nothing sent again
    assert await kale_balance(pool.chain, dest.public_key) == 5 * KALE
    assert await _balance(pool, farmer.farmer_id) == 5 * KALE
    balance = await pool.operator().GetFarmerBalance(
        pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer.farmer_id)
    )
    assert balance.total_paid_out_stroops == 5 * KALE
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_a_failed_transfer_is_reversed(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    # The payout address does not exist on chain: the payment cannot land.
    farmer = await pool.funded_farmer(pooler.pooler_id, kale=5 * KALE)
    op = pool.operator()
    ask = pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, idempotency_key="k")
    failed = (await op.RequestPayout(ask)).payout
    assert failed.amount_stroops == 5 * KALE
    assert failed.HasField("failure") and failed.failure.message
    assert failed.transaction.status == common_pb2.TX_STATUS_FAILED
    assert await _balance(pool, farmer.farmer_id) == 5 * KALE
    assert await kale_balance(pool.chain, farmer.custodial_address) == 5 * KALE
    assert await _ledger(pool, farmer.farmer_id) == [
        ("payout", -5 * KALE),
        ("payout_reversal", 5 * KALE),
    ]
    # Asked again: the same failed payout, reversed once.
    assert (await op.RequestPayout(ask)).payout == failed
    assert len(await _ledger(pool, farmer.farmer_id)) == 2
    # The farmer's ledger shows the reversal as a reversal, not as another payout.
    entries = await op.ListFarmerLedger(
        pool_pb2.ListFarmerLedgerRequest(farmer_id=farmer.farmer_id)
    )
    assert [(e.kind, e.amount_stroops, e.source_id) for e in entries.entries[:2]] == [
        (records_pb2.LEDGER_ENTRY_KIND_PAYOUT_REVERSAL, 5 * KALE, failed.payout_id),
        (records_pb2.LEDGER_ENTRY_KIND_PAYOUT, -5 * KALE, failed.payout_id),
    ]


async def test_a_pending_payout_settles_by_itself(pool: PoolStage) -> None:
    """A payout left pending because the wallet service was unreachable is sent by the
    pool's periodic pass once the wallet is back: no request, no restart."""
    await pool.start(payout_settle_interval_seconds=0.2)
    pooler, _ = await pool.register_pooler()
    dest = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=4 * KALE, payout_address=dest.public_key
    )
    op = pool.operator()
    wallet_port = pool.wallet.server.port
    await pool.wallet.server.stop(0)
    asked = await op.RequestPayout(
        pool_pb2.RequestPayoutRequest(farmer_id=farmer.farmer_id, amount_stroops=3 * KALE)
    )
    assert asked.payout.transaction.status == common_pb2.TX_STATUS_PENDING
    assert await _balance(pool, farmer.farmer_id) == KALE  # debited while on its way

    pool.wallet.server = await start_wallet_server(
        address=f"127.0.0.1:{wallet_port}",
        conninfo=pool.wallet.service_conninfo,
        keyring=pool.wallet.keyring,
        chain=pool.wallet.chain,
        identity=pool.pki.server(WALLET_SERVER),
        ca_pem=pool.pki.ca_pem,
    )

    async def paid() -> bool:
        page = await op.ListPayouts(pool_pb2.ListPayoutsRequest(farmer_id=farmer.farmer_id))
        return page.payouts[0].transaction.status == common_pb2.TX_STATUS_SUCCESS

    await until(paid, 30)
    assert await kale_balance(pool.chain, dest.public_key) == 3 * KALE
    assert await _ledger(pool, farmer.farmer_id) == [("payout", -3 * KALE)]
    with psycopg.connect(pool.conninfo) as conn:
        assert check_consistency(conn) == []


async def test_leave_pool_pays_out_and_merges_the_account(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    dest = await pool.stage.account(trust=True)
    leaver = await pool.funded_farmer(
        pooler.pooler_id, kale=4 * KALE, payout_address=dest.public_key
    )
    planted = await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=2 * KALE)
    op = pool.operator()
    dest_before = await read_account(pool.chain, dest.public_key)
    assert dest_before is not None
    left = await op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id=leaver.farmer_id))
    assert left.farmer.status == common_pb2.FARMER_STATUS_DEPARTED, left
    assert left.farmer.HasField("funded_at") and left.farmer.HasField("left_at")
    assert left.farmer.left_at.ToDatetime() >= left.farmer.funded_at.ToDatetime()
    assert left.close_transaction.status == common_pb2.TX_STATUS_SUCCESS
    assert await read_account(pool.chain, leaver.custodial_address) is None
    assert await kale_balance(pool.chain, dest.public_key) == 4 * KALE
    after = await read_account(pool.chain, dest.public_key)
    assert after is not None and after.xlm_balance > dest_before.xlm_balance
    assert left.farmer.balance_stroops == 0
    payouts = await op.ListPayouts(pool_pb2.ListPayoutsRequest(farmer_id=leaver.farmer_id))
    assert [(p.amount_stroops, p.transaction.status) for p in payouts.payouts] == [
        (4 * KALE, common_pb2.TX_STATUS_SUCCESS)
    ]

    # A farmer holding a pail of the current block waits for its harvest; the departed
    # one is planted no more.
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    auth = bearer(key)
    plant = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth
    )
    assert [p.farmer_id for p in plant.planted] == [planted.farmer_id]
    waiting = await op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id=planted.farmer_id))
    assert waiting.farmer.status == common_pb2.FARMER_STATUS_LEAVING
    assert waiting.farmer.HasField("left_at")
    assert waiting.pending_harvests == 1 and not waiting.HasField("close_transaction")
    assert await read_account(pool.chain, planted.custodial_address) is not None

    # Safe to repeat; a departed farmer gets no payout and is planted no more.
    again = await op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id=leaver.farmer_id))
    assert again.farmer.status == common_pb2.FARMER_STATUS_DEPARTED
    assert again.farmer.left_at == left.farmer.left_at  # from leaving, not departing
    assert again.close_transaction.tx_hash == left.close_transaction.tx_hash
    code, _ = await code_of(
        op.RequestPayout(pool_pb2.RequestPayoutRequest(farmer_id=leaver.farmer_id))
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    before = await pool.counts()
    for call, want in [
        (op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id="x")), grpc.StatusCode.INVALID_ARGUMENT),
        (
            op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id=str(uuid.uuid4()))),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]:
        assert (await code_of(call))[0] is want
    assert await pool.counts() == before
    stats = await op.GetPoolStats(pool_pb2.GetPoolStatsRequest())
    assert (stats.farmers_leaving, stats.farmers_departed) == (1, 1)
    assert stats.total_paid_out_stroops == 4 * KALE
