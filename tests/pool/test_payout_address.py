"""The pool relays a payout-address change to the wallet, which decides (the farmer's
signature, never the pool's word), and keeps its own copy in step; a pool whose copy
was tampered with still cannot send a payout anywhere but the wallet's address."""

from __future__ import annotations

import uuid

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.chain import kale_balance
from kalepool.v1 import common_pb2, pool_pb2, wallet_pb2

from .conftest import KALE, PoolStage


async def _refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() is code, caught.value
    return caught.value.details() or ""


async def test_a_farmer_moves_its_payouts_with_its_signature(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    current = Keypair.random()  # the farmer's key; the pool never sees it
    new = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=5 * KALE, payout_address=current.public_key
    )
    op = pool.operator()
    wallet = await pool.wallet.stub.GetWallet(
        wallet_pb2.GetWalletRequest(public_key=farmer.custodial_address)
    )
    assert wallet.wallet.payout_address == current.public_key  # registered by RegisterFarmer

    issued = await op.NewFarmerPayoutChallenge(
        pool_pb2.NewFarmerPayoutChallengeRequest(
            farmer_id=farmer.farmer_id, new_payout_address=new.public_key
        )
    )
    assert issued.signer_address == current.public_key
    assert farmer.custodial_address in issued.message and new.public_key in issued.message

    def change(signature: bytes, address: str = new.public_key) -> object:
        return op.ChangeFarmerPayoutAddress(
            pool_pb2.ChangeFarmerPayoutAddressRequest(
                farmer_id=farmer.farmer_id,
                challenge_id=issued.challenge_id,
                new_payout_address=address,
                signature=signature,
            )
        )

    # The pool's word (or anyone's signature but the current key's) moves nothing.
    message = await _refused(
        change(new.sign_message(issued.message)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert current.public_key in message
    await _refused(change(b"x" * 64, "GABC"), grpc.StatusCode.INVALID_ARGUMENT)
    await _refused(
        op.NewFarmerPayoutChallenge(
            pool_pb2.NewFarmerPayoutChallengeRequest(
                farmer_id=str(uuid.uuid4()), new_payout_address=new.public_key
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert got.farmer.payout_address == current.public_key

    changed = await change(current.sign_message(issued.message))  # type: ignore[misc]
    assert isinstance(changed, pool_pb2.ChangeFarmerPayoutAddressResponse)
    assert changed.farmer.payout_address == new.public_key
    assert changed.previous_payout_address == current.public_key
    got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert got.farmer.payout_address == new.public_key

    # Payouts follow: the pool's copy and the wallet's address agree.
    paid = await op.RequestPayout(
        pool_pb2.RequestPayoutRequest(
            farmer_id=farmer.farmer_id, amount_stroops=2 * KALE, idempotency_key="after"
        )
    )
    assert paid.payout.transaction.status == common_pb2.TX_STATUS_SUCCESS, paid
    assert paid.payout.destination_address == new.public_key
    assert await kale_balance(pool.chain, new.public_key) == 2 * KALE


async def test_a_tampered_pool_record_cannot_redirect_a_payout(pool: PoolStage) -> None:
    pooler, _ = await pool.register_pooler()
    payee = await pool.stage.account(trust=True)
    thief = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=5 * KALE, payout_address=payee.public_key
    )
    # Someone with the pool's database rewrites the farmer's payout address.
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        await conn.execute(
            "UPDATE farmers SET payout_address = %s WHERE id = %s",
            (thief.public_key, farmer.farmer_id),
        )
    op = pool.operator()
    asked = await op.RequestPayout(
        pool_pb2.RequestPayoutRequest(
            farmer_id=farmer.farmer_id, amount_stroops=2 * KALE, idempotency_key="stolen"
        )
    )
    # The wallet refused before signing: the payout failed, the balance is whole again.
    assert asked.payout.transaction.status == common_pb2.TX_STATUS_FAILED, asked
    assert payee.public_key in asked.payout.failure.message
    assert await kale_balance(pool.chain, thief.public_key) == 0
    got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
    assert got.farmer.balance_stroops == 5 * KALE
    # Leaving closes into the wallet's registered address only: refused as well.
    await _refused(
        op.LeavePool(pool_pb2.LeavePoolRequest(farmer_id=farmer.farmer_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert await kale_balance(pool.chain, thief.public_key) == 0
