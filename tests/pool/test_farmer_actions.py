"""The farmer action rule: a join, payout or leave from the farmers' web page (farmer-web)
is taken only with the payout key's own SEP-53 signature of a matching, unexpired action
message whose nonce was never used; every refusal says why and writes nothing. An
operator still acts without one. And the farmer's blocks (ListFarmerBlocks)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool import farmer_actions
from kalepool.farmer_actions import Action, ActionError
from kalepool.tls import FARMER_WEB
from kalepool.v1 import common_pb2, pool_pb2

from .conftest import KALE, PoolStage


def _passphrase(pool: PoolStage) -> str:
    return pool.chain.config.network_passphrase


def _signed(
    stage: PoolStage, key: Keypair, action: Action, *, signer: Keypair | None = None, **fields: Any
) -> pool_pb2.FarmerSignature:
    """`action` built by the shared module, signed by `signer` (default: `key`)."""
    fields.setdefault("pool", _passphrase(stage))
    fields.setdefault("seconds", 300)
    made = farmer_actions.build(action, payout_address=key.public_key, **fields)
    text = made.text()
    return pool_pb2.FarmerSignature(message=text, signature=(signer or key).sign_message(text))


async def _refused(call: Any, request: Any, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request)
    assert refused.value.code() == code, refused.value.details()
    assert words in (refused.value.details() or ""), refused.value.details()


def test_the_message_round_trips_and_refuses_malformed_text() -> None:
    key = Keypair.random()
    pooler = str(uuid.uuid4())
    made = farmer_actions.build(
        "join",
        pool="P",
        payout_address=key.public_key,
        pooler_id=pooler,
        stake_bps=2500,
        seconds=60,
    )
    assert farmer_actions.parse(made.text()) == made
    assert made.text().splitlines()[:2] == ["kale-pool farmer action", "action: join"]
    for bad, words in (
        (made.text().replace("action: join", "action: steal"), "action must be one of"),
        (made.text().replace("stake bps: 2500", "stake bps: 10001"), "stake bps"),
        (made.text().replace(f"nonce: {made.nonce}", "nonce: xyz"), "nonce"),
        (made.text() + "\namount stroops: 5", "exactly the lines"),
        (made.text().replace("farmer: new", f"farmer: {uuid.uuid4()}"), "farmer: new"),
        ("hello", "must start with"),
    ):
        with pytest.raises(ActionError, match=words):
            farmer_actions.parse(bad)
    # The one SEP-53 check: another key's signature, a plain ed25519 one, a short one.
    text = made.text()
    assert farmer_actions.signed_by(key.public_key, text, key.sign_message(text))
    assert not farmer_actions.signed_by(key.public_key, text, Keypair.random().sign_message(text))
    assert not farmer_actions.signed_by(key.public_key, text, key.sign(text.encode()))
    assert not farmer_actions.signed_by(key.public_key, text, b"\x00" * 10)


async def test_web_join_needs_the_payout_keys_signed_join(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler("web-join-rig")
    web = pool.operator(FARMER_WEB)
    key = Keypair.random()
    fields = {"pooler_id": pooler.pooler_id, "stake_bps": 5000}

    def request(signed: pool_pb2.FarmerSignature | None) -> pool_pb2.RegisterFarmerRequest:
        return pool_pb2.RegisterFarmerRequest(
            pooler_id=pooler.pooler_id,
            payout_address=key.public_key,
            stake_bps=5000,
            farmer_signature=signed,
        )

    before = await pool.counts()
    denied = grpc.StatusCode.PERMISSION_DENIED
    await _refused(web.RegisterFarmer, request(None), denied, "farmer's signed join")
    await _refused(
        web.RegisterFarmer,
        request(_signed(pool, key, "join", signer=Keypair.random(), **fields)),
        denied,
        f"not {key.public_key}'s SEP-53 signature",
    )
    await _refused(
        web.RegisterFarmer,
        request(_signed(pool, key, "join", pooler_id=pooler.pooler_id, stake_bps=100)),
        denied,
        "stake bps is 100, but the request asks for 5000",
    )
    await _refused(
        web.RegisterFarmer,
        request(_signed(pool, key, "join", **fields, pool="Another Network ; 2020")),
        denied,
        "signed pool",
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    await _refused(
        web.RegisterFarmer,
        request(_signed(pool, key, "join", **fields, now=past)),
        denied,
        "expired",
    )
    await _refused(
        web.RegisterFarmer,
        request(pool_pb2.FarmerSignature(message="kale-pool farmer action\n", signature=b"x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "farmer_signature",
    )
    # A payout message offered for a join.
    payout = _signed(pool, key, "payout", farmer=str(uuid.uuid4()), amount_stroops=1)
    await _refused(web.RegisterFarmer, request(payout), denied, "signed action is payout")
    assert await pool.counts() == before
    assert await pool.count("action_nonces") == 0

    good = _signed(pool, key, "join", **fields)
    made = await web.RegisterFarmer(request(good))
    assert made.farmer.payout_address == key.public_key and made.farmer.stake_bps == 5000
    assert await pool.count("action_nonces") == 1
    # The same signed join again: refused, nothing more registered.
    await _refused(web.RegisterFarmer, request(good), denied, "used already")
    assert await pool.count("farmers") == before["farmers"] + 1

    # An operator registers without a signature, as before.
    op = pool.operator()
    plain = await op.RegisterFarmer(
        pool_pb2.RegisterFarmerRequest(
            pooler_id=pooler.pooler_id, payout_address=Keypair.random().public_key
        )
    )
    assert plain.farmer.farmer_id


async def test_web_payout_and_leave_need_the_farmers_signature(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler("web-payout-rig")
    key = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=5 * KALE, payout_address=key.public_key
    )
    fid = farmer.farmer_id
    web = pool.operator(FARMER_WEB)
    denied = grpc.StatusCode.PERMISSION_DENIED

    def payout(signed: pool_pb2.FarmerSignature | None, stroops: int = 2 * KALE) -> Any:
        return pool_pb2.RequestPayoutRequest(
            farmer_id=fid, amount_stroops=stroops, idempotency_key="w1", farmer_signature=signed
        )

    before = await pool.counts()
    await _refused(web.RequestPayout, payout(None), denied, "farmer's signed payout")
    stranger = Keypair.random()
    # Signed by another key for its own address: the farmer's payout address must sign.
    await _refused(
        web.RequestPayout,
        payout(_signed(pool, stranger, "payout", farmer=fid, amount_stroops=2 * KALE)),
        denied,
        f"not {key.public_key}'s SEP-53 signature",
    )
    await _refused(
        web.RequestPayout,
        payout(_signed(pool, key, "payout", farmer=fid, amount_stroops=1 * KALE)),
        denied,
        f"amount stroops is {KALE}, but the request asks for {2 * KALE}",
    )
    other = str(uuid.uuid4())
    await _refused(
        web.RequestPayout,
        payout(_signed(pool, key, "payout", farmer=other, amount_stroops=2 * KALE)),
        denied,
        f"signed farmer is {other}",
    )
    await _refused(
        web.LeavePool,
        pool_pb2.LeavePoolRequest(
            farmer_id=fid,
            farmer_signature=_signed(pool, key, "payout", farmer=fid, amount_stroops=2 * KALE),
        ),
        denied,
        "signed action is payout, not leave",
    )
    await _refused(web.LeavePool, pool_pb2.LeavePoolRequest(farmer_id=fid), denied, "leave")
    assert await pool.counts() == before

    good = _signed(pool, key, "payout", farmer=fid, amount_stroops=2 * KALE)
    paid = (await web.RequestPayout(payout(good))).payout
    assert paid.amount_stroops == 2 * KALE and paid.destination_address == key.public_key
    await _refused(web.RequestPayout, payout(good), denied, "used already")
    assert await pool.count("payouts") == before["payouts"] + 1

    left = await web.LeavePool(
        pool_pb2.LeavePoolRequest(
            farmer_id=fid, farmer_signature=_signed(pool, key, "leave", farmer=fid)
        )
    )
    assert left.farmer.status in (
        common_pb2.FARMER_STATUS_LEAVING,
        common_pb2.FARMER_STATUS_DEPARTED,
    )


async def test_farmer_web_is_refused_everything_else(pool: PoolStage) -> None:
    web = pool.operator(FARMER_WEB)
    for call, request in (
        (web.RegisterPooler, pool_pb2.RegisterPoolerRequest()),
        (web.UpdatePooler, pool_pb2.UpdatePoolerRequest()),
        (web.ChangeFarmerPayoutAddress, pool_pb2.ChangeFarmerPayoutAddressRequest()),
        (web.RequestFeePayout, pool_pb2.RequestFeePayoutRequest()),
        (web.GetBlock, pool_pb2.GetBlockRequest()),
    ):
        await _refused(
            call,
            request,
            grpc.StatusCode.PERMISSION_DENIED,
            "'farmer-web' may not call kalepool.v1.PoolService.",
        )


async def test_list_farmer_blocks_from_the_books(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler("history-rig")
    farmer = await pool.funded_farmer(pooler.pooler_id)
    fid, pid, custodial = farmer.farmer_id, pooler.pooler_id, farmer.custodial_address
    web = pool.operator(FARMER_WEB)
    empty = await web.ListFarmerBlocks(pool_pb2.ListFarmerBlocksRequest(farmer_id=fid))
    assert list(empty.blocks) == [] and not empty.next_page_token
    # The books of three blocks, as the pool writes them: block 10 planted (700),
    # worked (7 zeros) and harvested (reward 900); block 11 a plant that failed; block
    # 12 planted, a work that failed, and a compensation of 50 for it.
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        for block, stake in ((10, 700), (12, 300)):
            await conn.execute(
                "INSERT INTO plantings (block_index, farmer_id, pooler_id, custodial_public_key,"
                " stake_amount, tx_hash, ledger, status) VALUES (%s, %s, %s, %s, %s, %s, 5,"
                " 'success')",
                (block, fid, pid, custodial, stake, f"{block:064x}"),
            )
        await conn.execute(
            "INSERT INTO plantings (block_index, farmer_id, pooler_id, custodial_public_key,"
            " status, fault, error_message) VALUES (11, %s, %s, %s, 'failed', 'chain',"
            " 'the plant transaction expired')",
            (fid, pid, custodial),
        )
        await conn.execute(
            "INSERT INTO works (block_index, farmer_id, pooler_id, custodial_public_key, zeros,"
            " gap, nonce, hash, tx_hash, ledger, status) VALUES"
            " (10, %s, %s, %s, 7, 1, 42, %s, %s, 6, 'success')",
            (fid, pid, custodial, b"\x00" * 32, "b" * 64),
        )
        await conn.execute(
            "INSERT INTO works (block_index, farmer_id, pooler_id, custodial_public_key,"
            " status, fault, error_message) VALUES (12, %s, %s, %s, 'failed', 'pooler',"
            " 'no work came')",
            (fid, pid, custodial),
        )
        await conn.execute(
            "INSERT INTO harvests (block_index, farmer_id, pooler_id, custodial_public_key,"
            " reward_amount, stake_amount, tx_hash, ledger, status) VALUES"
            " (10, %s, %s, %s, 900, 700, %s, 9, 'success')",
            (fid, pid, custodial, "c" * 64),
        )
        # The pool's fee (60) and the pooler's share (30) of block 10's reward.
        fee_account = uuid.uuid4()
        await conn.execute(
            "INSERT INTO accounts (id, kind, custodial_public_key, payout_address)"
            " VALUES (%s, 'pool_fee', %s, %s)",
            (fee_account, Keypair.random().public_key, Keypair.random().public_key),
        )
        await conn.execute(
            "INSERT INTO accounts (id, kind, pooler_id, custodial_public_key, payout_address)"
            " VALUES (%s, 'pooler_share', %s, %s, %s)",
            (pid, pid, Keypair.random().public_key, Keypair.random().public_key),
        )
        for part, account, stroops, status, key in (
            ("fee", fee_account, 60, "pending", "fee:" + "c" * 64),
            ("share", pid, 30, "pending", "share:" + "c" * 64),
        ):
            await conn.execute(
                "INSERT INTO sweeps (harvest_id, part, farmer_id, account_id, amount, wallet_key,"
                " status) SELECT id, %s, %s, %s, %s, %s, %s FROM harvests WHERE block_index = 10"
                " AND farmer_id = %s",
                (part, fid, account, stroops, key, status, fid),
            )
        await conn.execute(
            "INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index,"
            " compensation_type, owed_by, amount, reason) VALUES"
            " (%s, %s, 12, 'work_failure', 'pooler', 50, 'no work came')",
            (pid, fid),
        )
    listed = await web.ListFarmerBlocks(pool_pb2.ListFarmerBlocksRequest(farmer_id=fid))
    got = [
        (
            b.block_index,
            b.planted,
            b.stake_stroops,
            b.worked,
            b.zeros,
            b.harvested,
            b.reward_stroops,
            b.compensation_stroops,
            b.fees_stroops,
            b.failure,
        )
        for b in listed.blocks
    ]
    assert got == [
        (12, True, 300, False, 0, False, 0, 50, 0, "no work came"),
        (11, False, 0, False, 0, False, 0, 0, 0, "the plant transaction expired"),
        (10, True, 700, True, 7, True, 900, 0, 90, ""),
    ]
    # Pages of two, newest first.
    first = await web.ListFarmerBlocks(
        pool_pb2.ListFarmerBlocksRequest(
            farmer_id=fid, pagination=common_pb2.Pagination(page_size=2)
        )
    )
    assert [b.block_index for b in first.blocks] == [12, 11] and first.next_page_token
    rest = await web.ListFarmerBlocks(
        pool_pb2.ListFarmerBlocksRequest(
            farmer_id=fid,
            pagination=common_pb2.Pagination(page_size=2, page_token=first.next_page_token),
        )
    )
    assert [b.block_index for b in rest.blocks] == [10] and not rest.next_page_token
    await _refused(
        web.ListFarmerBlocks,
        pool_pb2.ListFarmerBlocksRequest(
            farmer_id=fid, pagination=common_pb2.Pagination(page_size=501)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size must be at most 500",
    )
    await _refused(
        web.ListFarmerBlocks,
        pool_pb2.ListFarmerBlocksRequest(farmer_id=str(uuid.uuid4())),
        grpc.StatusCode.NOT_FOUND,
        "no farmer",
    )
