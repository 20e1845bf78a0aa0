"""The wallet's own payout policy, through the real server over mTLS on the devnet: the
pool's client credential (all a thief of the pool pod holds) pays a farmer's KALE to the
farmer's registered payout address only; the address moves only on the farmer's
signature of a fresh, single-use challenge; the limits hold; every refusal is recorded."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.chain import kale_balance, read_account
from kalepool.v1 import common_pb2, wallet_pb2
from kalepool.webhook import Webhook
from tests.waits import until
from tests.webhooks import Receiver
from wallet_service.policy import REFUSALS, PayoutLimits

from .conftest import WalletStage
from .test_wallet_service import KALE, funded_wallet

SUCCESS = common_pb2.TX_STATUS_SUCCESS


def refused_count(reason: str) -> float:
    value: float = REFUSALS.labels(reason)._value.get()
    return value


async def refusals(ws: WalletStage, wallet: str) -> list[tuple[str, str, str | None]]:
    """(action, reason, caller) of every refusal recorded for a wallet, oldest first."""
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT r.action, r.reason, r.caller FROM wallet.payout_refusals r"
            " JOIN wallet.custodial_wallets w ON w.id = r.wallet_id"
            " WHERE w.public_key = %s ORDER BY r.id",
            (wallet,),
        )
        return [(str(a), str(b), c) for a, b, c in await cur.fetchall()]


async def payouts_stored(ws: WalletStage, wallet: str) -> int:
    """Transfers and closes the wallet signed and stored for this account."""
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM wallet.transactions"
            " WHERE source_account = %s AND kind IN ('payout', 'merge')",
            (wallet,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def denied(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() is code, caught.value
    return caught.value.details() or ""


async def test_a_stolen_pool_credential_pays_only_the_registered_address(
    wallet: WalletStage,
) -> None:
    ws = wallet
    payee = await funded_wallet(ws)  # the farmer's own account: exists, trusts KALE
    thief = await funded_wallet(ws)  # an account of the thief's: exists, trusts KALE
    farmer = await funded_wallet(ws, kale=10 * KALE, payout=payee)
    before = refused_count("foreign_destination")

    # The stub speaks as pool-client: exactly what the pool pod's credential allows.
    message = await denied(
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="steal:1",
                source_address=farmer,
                destination_address=thief,
                amount_stroops=5 * KALE,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert payee in message and thief in message
    await denied(
        ws.stub.CloseWallet(
            wallet_pb2.CloseWalletRequest(
                idempotency_key="steal:2", public_key=farmer, destination_address=thief
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Nothing sent, nothing stored as sent; the thief got nothing, the farmer kept all.
    assert await payouts_stored(ws, farmer) == 0
    assert await kale_balance(ws.chain, thief) == 0
    assert await kale_balance(ws.chain, farmer) == 10 * KALE
    assert await refusals(ws, farmer) == [
        ("transfer", "foreign_destination", "pool-client"),
        ("close", "foreign_destination", "pool-client"),
    ]
    assert refused_count("foreign_destination") == before + 2
    # A refused key is free: the same key to the registered address pays.
    sent = await ws.stub.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="steal:1",
            source_address=farmer,
            destination_address=payee,
            amount_stroops=4 * KALE,
        )
    )
    assert sent.outcome.status == SUCCESS, sent
    closed = await ws.stub.CloseWallet(
        wallet_pb2.CloseWalletRequest(
            idempotency_key="close:1", public_key=farmer, destination_address=payee
        )
    )
    assert closed.outcome.status == SUCCESS, closed
    assert await kale_balance(ws.chain, payee) == 10 * KALE
    assert await read_account(ws.chain, farmer) is None


async def test_the_payout_address_moves_only_on_the_current_keys_signature(
    wallet: WalletStage,
) -> None:
    ws = wallet
    current, new, stranger = Keypair.random(), Keypair.random(), Keypair.random()
    farmer = await funded_wallet(ws, kale=2 * KALE, payout=current.public_key)
    other = await funded_wallet(ws)

    async def challenge(wallet: str, address: str) -> wallet_pb2.NewPayoutChallengeResponse:
        return await ws.stub.NewPayoutChallenge(
            wallet_pb2.NewPayoutChallengeRequest(public_key=wallet, new_payout_address=address)
        )

    def change(
        wallet: str, challenge_id: str, address: str, signature: bytes
    ) -> grpc.aio.UnaryUnaryCall[Any, wallet_pb2.ChangePayoutAddressResponse]:
        return ws.stub.ChangePayoutAddress(
            wallet_pb2.ChangePayoutAddressRequest(
                public_key=wallet,
                challenge_id=challenge_id,
                new_payout_address=address,
                signature=signature,
            )
        )

    issued = await challenge(farmer, new.public_key)
    assert issued.signer_address == current.public_key
    for part in (farmer, current.public_key, new.public_key, "nonce: "):
        assert part in issued.message
    assert issued.expires_at.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)
    right = current.sign_message(issued.message)

    # Bad input: INVALID_ARGUMENT, nothing recorded.
    await denied(change(farmer, "nope", new.public_key, right), grpc.StatusCode.INVALID_ARGUMENT)
    await denied(
        change(farmer, issued.challenge_id, new.public_key, right[:10]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await denied(challenge(farmer, "GABC"), grpc.StatusCode.INVALID_ARGUMENT)
    # Wrong proofs: PERMISSION_DENIED, each recorded.
    wrong_signer = new.sign_message(issued.message)
    await denied(
        change(farmer, issued.challenge_id, new.public_key, wrong_signer),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await denied(
        change(farmer, issued.challenge_id, stranger.public_key, right),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    others = await challenge(other, new.public_key)
    await denied(
        change(farmer, others.challenge_id, new.public_key, current.sign_message(others.message)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await denied(
        change(farmer, str(uuid.uuid4()), new.public_key, right),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    info = await ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=farmer))
    assert info.wallet.payout_address == current.public_key  # unchanged by any of them

    # The right signature moves it, once; the same call again answers the same change.
    changed = await change(farmer, issued.challenge_id, new.public_key, right)
    assert changed.wallet.payout_address == new.public_key and not changed.replayed
    assert changed.previous_payout_address == current.public_key
    again = await change(farmer, issued.challenge_id, new.public_key, right)
    assert again.replayed and again.wallet.payout_address == new.public_key
    # Used: a second use (even signed by the new key) is refused.
    await denied(
        change(farmer, issued.challenge_id, new.public_key, new.sign_message(issued.message)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert await refusals(ws, farmer) == [
        ("change_payout_address", "bad_signature", "pool-client"),
        ("change_payout_address", "challenge_address_mismatch", "pool-client"),
        ("change_payout_address", "challenge_wrong_wallet", "pool-client"),
        ("change_payout_address", "challenge_unknown", "pool-client"),
        ("change_payout_address", "challenge_used", "pool-client"),
    ]
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT c.old_address, c.new_address, c.source, c.signature"
            " FROM wallet.payout_address_changes c"
            " JOIN wallet.custodial_wallets w ON w.id = c.wallet_id WHERE w.public_key = %s",
            (farmer,),
        )
        assert await cur.fetchall() == [(current.public_key, new.public_key, "signed", right)]
    # Payouts follow the new address; the old one is foreign now.
    await denied(
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="old",
                source_address=farmer,
                destination_address=current.public_key,
                amount_stroops=KALE,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_limits_and_expiry(wallet: WalletStage) -> None:
    ws = wallet
    await ws.server.stop(0)
    await ws.start(
        limits=PayoutLimits(max_kale_per_day=3, max_transfers_per_hour=2, challenge_seconds=1)
    )
    payee = await funded_wallet(ws)
    farmer = await funded_wallet(ws, kale=10 * KALE, payout=payee)
    daily, hourly = refused_count("daily_amount"), refused_count("hourly_transfers")

    def pay(key: str, amount: int) -> grpc.aio.UnaryUnaryCall[Any, wallet_pb2.TransferResponse]:
        return ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key=key,
                source_address=farmer,
                destination_address=payee,
                amount_stroops=amount,
            )
        )

    assert (await pay("p1", 2 * KALE)).outcome.status == SUCCESS
    over = await denied(pay("p2", 2 * KALE), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "24 hours" in over and "3 KALE" in over
    assert (await pay("p3", KALE)).outcome.status == SUCCESS  # exactly the day's limit
    often = await denied(pay("p4", 1), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "2 payouts in the last hour" in often
    assert await kale_balance(ws.chain, payee) == 3 * KALE
    assert await payouts_stored(ws, farmer) == 2
    assert refused_count("daily_amount") == daily + 1
    assert refused_count("hourly_transfers") == hourly + 1

    # A challenge is refused once its time is up.
    current, new = Keypair.random(), Keypair.random()
    signer_wallet = await funded_wallet(ws, payout=current.public_key)
    issued = await ws.stub.NewPayoutChallenge(
        wallet_pb2.NewPayoutChallengeRequest(
            public_key=signer_wallet, new_payout_address=new.public_key
        )
    )
    expires = issued.expires_at.ToDatetime(dt.UTC)
    await until(lambda: dt.datetime.now(dt.UTC) > expires, seconds=5)
    late = await denied(
        ws.stub.ChangePayoutAddress(
            wallet_pb2.ChangePayoutAddressRequest(
                public_key=signer_wallet,
                challenge_id=issued.challenge_id,
                new_payout_address=new.public_key,
                signature=current.sign_message(issued.message),
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "expired" in late
    assert await refusals(ws, farmer) == [
        ("transfer", "daily_amount", "pool-client"),
        ("transfer", "hourly_transfers", "pool-client"),
    ]
    assert await refusals(ws, signer_wallet) == [
        ("change_payout_address", "challenge_expired", "pool-client")
    ]


async def test_a_refused_attempt_is_posted_to_the_operators_webhook(
    wallet: WalletStage, receiver: Receiver
) -> None:
    ws = wallet
    await ws.server.stop(0)
    await ws.start(webhook=Webhook(receiver.url, attempts=2, first_delay=0.01))
    payee = await funded_wallet(ws)
    thief = await funded_wallet(ws)
    farmer = await funded_wallet(ws, kale=3 * KALE, payout=payee)
    await denied(
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="steal:hook",
                source_address=farmer,
                destination_address=thief,
                amount_stroops=KALE,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    def posted() -> list[str]:
        return receiver.texts("payout_policy")

    await until(lambda: bool(posted()), 10, what="the refusal's alert")
    [text] = posted()
    assert text.startswith("[kale-pool] REFUSED payout_policy: transfer of wallet")
    assert farmer in text and "foreign_destination" in text
