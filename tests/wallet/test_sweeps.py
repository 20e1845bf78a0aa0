"""Sweeps, through the real server over mTLS on the devnet: the pool's client credential
(all a thief of the pool pod holds) moves at most the wallet's own fraction of a reward
the wallet itself harvested, once per harvest and part, and only into the fee wallet or a
pooler share wallet the service holds; the fee wallet pays only the operator's address
of the wallet's own settings (or a farmer's custodial wallet: a compensation); a share
wallet pays its pooler's registered key."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
from stellar_sdk import Keypair

from kalepool.amounts import share_of
from kalepool.chain import build_work, current_block, kale_balance, read_block, sign, submit
from kalepool.v1 import common_pb2, wallet_pb2
from tests.chain.stage import mine
from tests.waits import until
from wallet_service.policy import PayoutLimits

from .conftest import WalletStage
from .test_payout_policy import denied, refusals, refused_count
from .test_wallet_service import KALE, _can_open_next, _exists, funded_wallet

SUCCESS = common_pb2.TX_STATUS_SUCCESS
FEE_BPS, SHARE_BPS = 100, 500


async def harvest(ws: WalletStage, farmer: str, opener: str) -> wallet_pb2.HarvestResponse:
    """Plant (with a stake), work from a pooler's account, let the next block open (the
    `opener` wallet plants it) and harvest `farmer`'s pail through the service."""
    done = await ws.stub.Harvest(await ready_to_harvest(ws, farmer, opener))
    assert done.outcome.status == SUCCESS and done.reward_stroops > 0, done
    return done


async def ready_to_harvest(ws: WalletStage, farmer: str, opener: str) -> wallet_pb2.HarvestRequest:
    """Plant, work and open the next block as `harvest` does; the harvest to ask for."""
    block = (await current_block(ws.chain)).index
    planted = await ws.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=f"plant:{farmer}:{block}",
            farmer_address=farmer,
            block_index=block,
            stake_stroops=KALE,
        )
    )
    assert planted.outcome.status == SUCCESS, planted
    pooler = Keypair.random()
    await ws.stage.friendbot(pooler.public_key)
    await until(lambda: _exists(ws, pooler.public_key))
    chain_block = await read_block(ws.chain, block)
    assert chain_block is not None
    nonce, digest, _ = mine(block, chain_block.entropy, farmer, 2)
    worked = await submit(
        ws.chain,
        sign(await build_work(ws.chain, farmer, digest, nonce, source=pooler.public_key), pooler),
    )
    assert worked.ok, worked.describe()
    now = await current_block(ws.chain)
    await ws.stage.advance(now.next_block_at - (await ws.chain.latest_ledger()).close_time)
    await until(lambda: _can_open_next(ws))
    opened = await ws.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=f"open:{block}", farmer_address=opener, block_index=block + 1
        )
    )
    assert opened.outcome.status == SUCCESS, opened
    return wallet_pb2.HarvestRequest(
        idempotency_key=f"harvest:{farmer}:{block}", farmer_address=farmer, block_index=block
    )


async def test_a_stolen_pool_credential_sweeps_at_most_the_fraction_once(
    wallet: WalletStage,
) -> None:
    ws = wallet
    operator = await funded_wallet(ws)  # the operator's own account
    await ws.server.stop(0)
    await ws.start(
        limits=PayoutLimits(
            pool_fee_bps=FEE_BPS,
            pooler_share_bps=SHARE_BPS,
            pool_fee_address=operator,
            max_transfers_per_hour=1,  # sweeps are not counted against it
        )
    )
    thief = Keypair.random().public_key
    before = refused_count("fee_address")

    # A fee wallet paying anyone but the wallet's own operator address is refused.
    await denied(
        ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                owner_id=str(uuid.uuid4()),
                payout_address=thief,
                purpose=wallet_pb2.WALLET_PURPOSE_POOL_FEE,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert refused_count("fee_address") == before + 1
    fee = await funded_wallet(ws, payout=operator, purpose=wallet_pb2.WALLET_PURPOSE_POOL_FEE)
    info = await ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=fee))
    assert info.wallet.purpose == wallet_pb2.WALLET_PURPOSE_POOL_FEE
    # One fee wallet: a second owner cannot make another.
    await denied(
        ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                owner_id=str(uuid.uuid4()),
                payout_address=operator,
                purpose=wallet_pb2.WALLET_PURPOSE_POOL_FEE,
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    pooler_key = await funded_wallet(ws)  # the pooler's registered key: exists, trusts KALE
    share = await funded_wallet(
        ws, payout=pooler_key, purpose=wallet_pb2.WALLET_PURPOSE_POOLER_SHARE
    )
    payee = await funded_wallet(ws)  # the farmer's own account
    farmer = await funded_wallet(ws, kale=10 * KALE, payout=payee)
    other_farmer = await funded_wallet(ws, kale=10 * KALE)
    opener = await funded_wallet(ws)

    harvested = await harvest(ws, farmer, opener)
    reward, h = harvested.reward_stroops, harvested.outcome.tx_hash
    most_fee, most_share = share_of(reward, FEE_BPS), share_of(reward, SHARE_BPS)
    assert most_fee > 0
    held = await kale_balance(ws.chain, farmer)
    assert held is not None

    def sweep(
        key: str, source: str, destination: str, harvest_hash: str, amount: int
    ) -> grpc.aio.UnaryUnaryCall[Any, wallet_pb2.SweepResponse]:
        return ws.stub.Sweep(
            wallet_pb2.SweepRequest(
                idempotency_key=key,
                source_address=source,
                destination_address=destination,
                harvest_tx_hash=harvest_hash,
                amount_stroops=amount,
            )
        )

    # Bad input: INVALID_ARGUMENT, nothing recorded.
    for bad in (
        sweep(f"steal:{h}", farmer, fee, h, most_fee),
        sweep(f"fee:{'0' * 64}", farmer, fee, h, most_fee),
        sweep(f"fee:{h}", farmer, fee, h, 0),
        sweep(f"fee:{h}", farmer, fee, "nothex", most_fee),
    ):
        await denied(bad, grpc.StatusCode.INVALID_ARGUMENT)
    # The policy: PERMISSION_DENIED, recorded, nothing signed.
    refused = [
        # more than the wallet's fraction
        sweep(f"fee:{h}", farmer, fee, h, most_fee + 1),
        sweep(f"share:{h}", farmer, share, h, most_share + 1),
        # into a wallet not made for the part, or one the service does not hold
        sweep(f"fee:{h}", farmer, share, h, most_fee),
        sweep(f"share:{h}", farmer, other_farmer, h, most_share),
        sweep(f"fee:{h}", farmer, thief, h, most_fee),
        # a harvest the wallet did not make for this source
        sweep(f"fee:{h}", other_farmer, fee, h, most_fee),
        sweep(f"fee:{'a' * 64}", farmer, fee, "a" * 64, 1),
    ]
    for call in refused:
        await denied(call, grpc.StatusCode.PERMISSION_DENIED)
    # (The calls above run at once: their refusals are recorded in any order.)
    assert sorted(r[1] for r in await refusals(ws, farmer)) == [
        "sweep_amount",
        "sweep_amount",
        "sweep_destination",
        "sweep_destination",
        "sweep_destination",
        "sweep_harvest",
    ]
    assert [r[1] for r in await refusals(ws, other_farmer)] == ["sweep_harvest"]
    assert await kale_balance(ws.chain, farmer) == held
    assert await kale_balance(ws.chain, fee) == 0

    # The fraction moves, once; asking again replays; another amount is refused.
    took_fee = await sweep(f"fee:{h}", farmer, fee, h, most_fee)
    assert took_fee.outcome.status == SUCCESS, took_fee
    took_share = await sweep(f"share:{h}", farmer, share, h, most_share)
    assert took_share.outcome.status == SUCCESS, took_share
    again = await sweep(f"fee:{h}", farmer, fee, h, most_fee)
    assert again.outcome.replayed and again.outcome.tx_hash == took_fee.outcome.tx_hash
    await denied(sweep(f"fee:{h}", farmer, fee, h, 1), grpc.StatusCode.ALREADY_EXISTS)
    assert await kale_balance(ws.chain, fee) == most_fee
    assert await kale_balance(ws.chain, share) == most_share
    assert await kale_balance(ws.chain, farmer) == held - most_fee - most_share
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM wallet.transactions s"
            " JOIN wallet.transactions h ON h.id = s.sweep_of"
            " WHERE h.tx_hash = %s AND s.kind = 'payout'",
            (h,),
        )
        row = await cur.fetchone()
    assert row is not None and row[0] == 2

    # Sweeps are not payouts: the farmer's one payout an hour is still free.
    paid = await ws.stub.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="payout:farmer",
            source_address=farmer,
            destination_address=payee,
            amount_stroops=1,
        )
    )
    assert paid.outcome.status == SUCCESS, paid
    # A fee or share wallet pays a farmer's custodial wallet (a compensation, still in
    # custody), but no other wallet of its kind and no foreign account.
    await denied(
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="fee:to-share",
                source_address=fee,
                destination_address=share,
                amount_stroops=1,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    compensated = await ws.stub.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="compensation:1",
            source_address=fee,
            destination_address=other_farmer,
            amount_stroops=most_fee,
        )
    )
    assert compensated.outcome.status == SUCCESS, compensated
    assert await kale_balance(ws.chain, other_farmer) == 10 * KALE + most_fee
    # The share wallet pays its pooler's registered key, and no one else.
    await denied(
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="share:steal",
                source_address=share,
                destination_address=thief,
                amount_stroops=most_share,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    out = await ws.stub.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="share:payout",
            source_address=share,
            destination_address=pooler_key,
            amount_stroops=most_share,
        )
    )
    assert out.outcome.status == SUCCESS, out
    assert await kale_balance(ws.chain, pooler_key) == most_share


async def test_a_harvest_left_pending_is_settled_from_the_chain_before_its_sweep(
    wallet: WalletStage,
) -> None:
    """The pool's chain follower may record a harvest from the chain while the wallet's
    own row of it is still pending (its caller went away before the outcome): a sweep of
    it settles the harvest from the chain first, where it refused it before."""
    ws = wallet
    operator = await funded_wallet(ws)
    await ws.server.stop(0)
    await ws.start(limits=PayoutLimits(pool_fee_bps=FEE_BPS, pool_fee_address=operator))
    fee = await funded_wallet(ws, payout=operator, purpose=wallet_pb2.WALLET_PURPOSE_POOL_FEE)
    farmer = await funded_wallet(ws, kale=10 * KALE)
    opener = await funded_wallet(ws)
    request = await ready_to_harvest(ws, farmer, opener)

    async def row() -> tuple[str, str] | None:
        async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
            cur = await conn.execute(
                "SELECT status::text, tx_hash FROM transactions WHERE idempotency_key = %s",
                (request.idempotency_key,),
            )
            got = await cur.fetchone()
        return None if got is None else (str(got[0]), str(got[1]))

    async def sent() -> bool:
        return (await row() or ("",))[0] == "pending"

    await ws.closer.hold()  # the harvest can only be sent
    call = ws.stub.Harvest(request)
    await until(sent)
    call.cancel()  # its caller goes away: nobody follows it now
    ws.closer.release()

    async def applied() -> bool:
        return await kale_balance(ws.chain, farmer) != 9 * KALE

    await until(applied)  # the harvest is on chain ...
    status, harvest_hash = await row() or ("", "")
    assert status == "pending"  # ... and the wallet's row does not know it yet

    amount = 1
    swept = await ws.stub.Sweep(
        wallet_pb2.SweepRequest(
            idempotency_key=f"fee:{harvest_hash}",
            source_address=farmer,
            destination_address=fee,
            harvest_tx_hash=harvest_hash,
            amount_stroops=amount,
        )
    )
    assert swept.outcome.status == SUCCESS, swept
    assert (await row() or ("",))[0] == "success"
    assert await kale_balance(ws.chain, fee) == amount
