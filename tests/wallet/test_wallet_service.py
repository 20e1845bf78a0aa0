"""WalletService end to end: the real server over mTLS, real PostgreSQL, the devnet."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import pytest
from stellar_sdk import Keypair

from kalepool import protocol
from kalepool.chain import (
    build_work,
    current_block,
    kale_balance,
    read_account,
    read_block,
    read_pail,
    sign,
    submit,
)
from kalepool.v1 import common_pb2, wallet_pb2, wallet_pb2_grpc
from tests.chain.stage import mine
from tests.waits import until

from .conftest import WalletStage

KALE = 10_000_000
PAYEE = Keypair.random()  # a payout address for wallets that never pay out
SUCCESS = common_pb2.TX_STATUS_SUCCESS


async def funded_wallet(
    ws: WalletStage,
    kale: int = 0,
    payout: str | None = None,
    purpose: wallet_pb2.WalletPurpose.ValueType = wallet_pb2.WALLET_PURPOSE_UNSPECIFIED,
) -> str:
    """A wallet created through the service (paying out to `payout`, else to a fresh
    account nobody uses; made for `purpose`), funded by friendbot, trusting KALE."""
    made = await ws.stub.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            owner_id=str(uuid.uuid4()),
            payout_address=payout or Keypair.random().public_key,
            purpose=purpose,
        )
    )
    address = made.wallet.public_key
    await ws.stage.friendbot(address)

    async def exists() -> bool:
        return await read_account(ws.chain, address) is not None

    await until(exists)
    trust = await ws.stub.EnsureTrustline(
        wallet_pb2.EnsureTrustlineRequest(
            idempotency_key=f"trustline:{address}", public_key=address
        )
    )
    assert trust.outcome.status == SUCCESS, trust
    # The account as read after the trustline applied: the caller needs no GetWallet.
    assert trust.account.exists and trust.account.kale_trustline, trust
    assert trust.account.observed_ledger >= trust.outcome.ledger
    if kale:
        await ws.stage.friendbot(address, kale)

        async def minted() -> bool:
            return (await kale_balance(ws.chain, address) or 0) >= kale

        await until(minted)
    return address


async def test_cycle_plant_work_harvest_returns_the_chains_reward(
    wallet: WalletStage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ws = wallet
    other = await funded_wallet(ws)
    farmer = await funded_wallet(ws, kale=50 * KALE, payout=other)
    got = await ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=farmer))
    assert got.account.exists and got.account.kale_trustline
    assert got.account.kale_balance_stroops == 50 * KALE
    again = await ws.stub.EnsureTrustline(
        wallet_pb2.EnsureTrustlineRequest(idempotency_key="t2", public_key=farmer)
    )
    assert again.already_present and not again.HasField("outcome")
    assert again.account.kale_trustline and again.account.kale_balance_stroops == 50 * KALE

    block = (await current_block(ws.chain)).index
    stake = 5 * KALE
    request = wallet_pb2.PlantRequest(
        idempotency_key=f"plant:f:{block}",
        farmer_address=farmer,
        block_index=block,
        stake_stroops=stake,
    )
    planted = await ws.stub.Plant(request)
    assert planted.outcome.status == SUCCESS, planted
    assert not planted.outcome.replayed and planted.plant_ledger == planted.outcome.ledger
    assert (await kale_balance(ws.chain, farmer)) == 45 * KALE

    # The same key answers the stored outcome; other parameters are refused.
    replay = await ws.stub.Plant(request)
    assert replay.outcome.replayed and replay.outcome.tx_hash == planted.outcome.tx_hash
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await ws.stub.Plant(
            wallet_pb2.PlantRequest(
                idempotency_key=request.idempotency_key,
                farmer_address=farmer,
                block_index=block,
                stake_stroops=1,
            )
        )
    assert reused.value.code() is grpc.StatusCode.ALREADY_EXISTS

    # A pooler works the pail from its own account.
    pooler = Keypair.random()
    await ws.stage.friendbot(pooler.public_key)
    await until(lambda: _exists(ws, pooler.public_key))
    chain_block = await read_block(ws.chain, block)
    assert chain_block is not None
    nonce, digest, zeros = mine(block, chain_block.entropy, farmer, 2)
    work = await build_work(ws.chain, farmer, digest, nonce, source=pooler.public_key)
    worked = await submit(ws.chain, sign(work, pooler))
    assert worked.ok, worked.describe()

    # Too early: the contract refuses; nothing is signed, the key stays free.
    early = await ws.stub.Harvest(
        wallet_pb2.HarvestRequest(idempotency_key="h0", farmer_address=farmer, block_index=block)
    )
    assert early.outcome.status == common_pb2.TX_STATUS_REJECTED
    assert early.outcome.failure.code == common_pb2.FAILURE_CODE_HARVEST_NOT_READY

    # The next block opens with another wallet's plant.
    now = await current_block(ws.chain)
    await ws.stage.advance(now.next_block_at - (await ws.chain.latest_ledger()).close_time)
    await until(lambda: _can_open_next(ws))
    opened = await ws.stub.Plant(
        wallet_pb2.PlantRequest(idempotency_key="open", farmer_address=other, block_index=block + 1)
    )
    assert opened.outcome.status == SUCCESS, opened

    finished = await read_block(ws.chain, block)
    assert finished is not None
    norm = protocol.normalise(finished.bounds(), worked.value or 0, stake, zeros)
    expected = protocol.harvest_reward(
        norm.total, 0, finished.staked_total, finished.normalized_total
    )
    before = await kale_balance(ws.chain, farmer)
    harvested = await ws.stub.Harvest(
        wallet_pb2.HarvestRequest(idempotency_key="h0", farmer_address=farmer, block_index=block)
    )
    assert harvested.outcome.status == SUCCESS, harvested
    assert harvested.reward_stroops == expected > 0
    assert harvested.outcome.contract_return_value == expected
    assert await kale_balance(ws.chain, farmer) == (before or 0) + expected + stake
    assert await read_pail(ws.chain, farmer, block) is None

    # Transfer, then close: all KALE and XLM go to the destination.
    sent = await ws.stub.Transfer(
        wallet_pb2.TransferRequest(
            idempotency_key="payout:1",
            source_address=farmer,
            destination_address=other,
            amount_stroops=KALE,
        )
    )
    assert sent.outcome.status == SUCCESS, sent
    left = await kale_balance(ws.chain, farmer)
    closed = await ws.stub.CloseWallet(
        wallet_pb2.CloseWalletRequest(
            idempotency_key="close:1", public_key=farmer, destination_address=other
        )
    )
    assert closed.outcome.status == SUCCESS, closed
    assert closed.kale_sent_stroops == left and closed.xlm_merged_stroops > 0
    assert await read_account(ws.chain, farmer) is None
    info = await ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=farmer))
    assert info.wallet.closed and not info.account.exists
    by_hash = await ws.stub.GetTransaction(
        wallet_pb2.GetTransactionRequest(tx_hash=closed.outcome.tx_hash)
    )
    assert by_hash.outcome.kind == wallet_pb2.TX_KIND_CLOSE

    # Secrets: no seed of any wallet in any log line (responses carry no such field).
    rows = await _seeds(ws)
    text = "\n".join(r.getMessage() for r in caplog.records) + repr(planted) + repr(closed)
    assert rows and not any(seed in text for seed in rows)


async def _exists(ws: WalletStage, address: str) -> bool:
    return await read_account(ws.chain, address) is not None


async def _can_open_next(ws: WalletStage) -> bool:
    now = await current_block(ws.chain)
    return now.can_open_next((await ws.chain.latest_ledger()).close_time)


async def _seeds(ws: WalletStage) -> list[str]:
    """Every stored wallet's secret seed, decrypted here only to look for leaks."""
    import psycopg

    from wallet_service.keystore import Sealed

    found = []
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT public_key, ciphertext, nonce, key_id, key_version FROM custodial_wallets"
        )
        for public_key, ct, nonce, key_id, version in await cur.fetchall():
            with ws.keyring.signer(Sealed(ct, nonce, key_id, version), public_key) as kp:
                found.append(kp.secret)
    return found


async def test_bad_input_and_callers(wallet: WalletStage) -> None:
    ws = wallet
    cases = [
        ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(owner_id="nope", payout_address=PAYEE.public_key)
        ),
        ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(owner_id=str(uuid.uuid4()), payout_address="")
        ),
        ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(owner_id=str(uuid.uuid4()), payout_address="GABC")
        ),
        ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key="GABC")),
        ws.stub.Plant(
            wallet_pb2.PlantRequest(
                idempotency_key="k", farmer_address=Keypair.random().public_key, stake_stroops=-1
            )
        ),
        ws.stub.Transfer(
            wallet_pb2.TransferRequest(
                idempotency_key="k",
                source_address=Keypair.random().public_key,
                destination_address=Keypair.random().public_key,
                amount_stroops=0,
            )
        ),
        ws.stub.Plant(wallet_pb2.PlantRequest(idempotency_key="", farmer_address="x")),
        ws.stub.GetTransaction(wallet_pb2.GetTransactionRequest(tx_hash="ABC")),
    ]
    for call in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, caught.value
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ws.stub.GetWallet(wallet_pb2.GetWalletRequest(public_key=Keypair.random().public_key))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    made = await ws.stub.CreateWallet(
        wallet_pb2.CreateWalletRequest(owner_id=str(uuid.uuid4()), payout_address=PAYEE.public_key)
    )
    again = await ws.stub.CreateWallet(
        wallet_pb2.CreateWalletRequest(
            owner_id=made.wallet.owner_id, payout_address=PAYEE.public_key
        )
    )
    assert made.created and not again.created
    assert again.wallet.public_key == made.wallet.public_key
    assert again.wallet.payout_address == PAYEE.public_key
    # Asking again with another payout address never moves the payouts.
    with pytest.raises(grpc.aio.AioRpcError) as moved:
        await ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                owner_id=made.wallet.owner_id, payout_address=Keypair.random().public_key
            )
        )
    assert moved.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert PAYEE.public_key in moved.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unfunded:
        await ws.stub.EnsureTrustline(
            wallet_pb2.EnsureTrustlineRequest(
                idempotency_key="t", public_key=made.wallet.public_key
            )
        )
    assert unfunded.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    async with await _count(ws) as count:
        assert count == 0  # nothing was signed or stored

    other = wallet_pb2_grpc.WalletServiceStub(ws.channel("operator"))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await other.GetWallet(wallet_pb2.GetWalletRequest(public_key=made.wallet.public_key))
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    anonymous = wallet_pb2_grpc.WalletServiceStub(ws.channel(None))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await anonymous.GetWallet(
            wallet_pb2.GetWalletRequest(public_key=made.wallet.public_key), timeout=5
        )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


class _Count:
    def __init__(self, value: int) -> None:
        self.value = value

    async def __aenter__(self) -> int:
        return self.value

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _count(ws: WalletStage) -> _Count:
    import psycopg

    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute("SELECT count(*) FROM transactions")
        row = await cur.fetchone()
    assert row is not None
    return _Count(int(row[0]))


async def test_twenty_parallel_plants(wallet: WalletStage) -> None:
    ws = wallet
    farmers = await asyncio.gather(*(funded_wallet(ws) for _ in range(20)))
    block = (await current_block(ws.chain)).index
    answers = await asyncio.gather(
        *(
            ws.stub.Plant(
                wallet_pb2.PlantRequest(
                    idempotency_key=f"plant:{f}:{block}", farmer_address=f, block_index=block
                )
            )
            for f in farmers
        )
    )
    assert all(a.outcome.status == SUCCESS for a in answers), answers
    assert len({a.outcome.tx_hash for a in answers}) == 20


async def test_a_plant_answered_when_sent_is_followed_to_its_pail(wallet: WalletStage) -> None:
    ws = wallet
    farmer = await funded_wallet(ws, kale=10 * KALE)
    block = (await current_block(ws.chain)).index
    request = wallet_pb2.PlantRequest(
        idempotency_key=f"plant:{farmer}:{block}",
        farmer_address=farmer,
        block_index=block,
        stake_stroops=KALE,
        answer_when_sent=True,
    )
    await ws.closer.hold()  # no ledger closes: the plant can only be sent
    sent = await ws.stub.Plant(request)
    assert sent.outcome.status == common_pb2.TX_STATUS_PENDING, sent
    assert sent.outcome.tx_hash and not sent.plant_ledger
    assert await read_pail(ws.chain, farmer, block) is None
    ws.closer.release()

    # The wallet follows it by itself: its pail opens without another call.
    async def landed() -> bool:
        return await read_pail(ws.chain, farmer, block) is not None

    await until(landed)
    # Asked again (the same key and parameters), the answer is the settled plant, where
    # its pail is; nothing second is signed.
    again = await ws.stub.Plant(request)
    assert again.outcome.status == SUCCESS and again.outcome.replayed, again
    assert again.outcome.tx_hash == sent.outcome.tx_hash
    pail = await read_pail(ws.chain, farmer, block)
    assert pail is not None
    assert (again.block_index, again.plant_ledger) == (block, pail.sequence)
    # A request refused before anything is sent is answered as without the flag.
    wrong = await ws.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=f"plant:{farmer}:{block + 5}",
            farmer_address=farmer,
            block_index=block + 5,
            answer_when_sent=True,
        )
    )
    assert wrong.outcome.status == common_pb2.TX_STATUS_REJECTED
    assert wrong.outcome.failure.code == common_pb2.FAILURE_CODE_BLOCK_MISMATCH


async def test_crash_after_record_is_reconciled_to_exactly_one(wallet: WalletStage) -> None:
    import psycopg

    ws = wallet
    farmer = await funded_wallet(ws)
    sequence = (await read_account(ws.chain, farmer)).sequence  # type: ignore[union-attr]
    block = (await current_block(ws.chain)).index
    request = wallet_pb2.PlantRequest(
        idempotency_key="plant:crash", farmer_address=farmer, block_index=block
    )
    await ws.closer.hold()  # the chain stands still: no close under way
    await ws.stage.faults(lose_next_sends=1)
    call = asyncio.ensure_future(ws.stub.Plant(request))

    async def row_status() -> str | None:
        async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
            cur = await conn.execute(
                "SELECT status::text FROM transactions WHERE idempotency_key = %s",
                (request.idempotency_key,),
            )
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def recorded() -> bool:
        # stored, sent, answer lost (then perhaps resent: DUPLICATE), not applied
        return await row_status() in ("submitted", "pending")

    await until(recorded)
    await ws.server.stop(0)  # the crash: the answer of the send never came back
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert await _pail(ws, farmer, block) is None  # nothing applied yet

    ws.closer.release()
    server = await ws.start()
    assert await asyncio.wait_for(server.reconciled, 20) == 1
    assert await row_status() == "success"
    assert await _pail(ws, farmer, block) is not None
    after = await read_account(ws.chain, farmer)
    assert after is not None and after.sequence == sequence + 1  # exactly one applied
    replay = await ws.stub.Plant(request)
    assert replay.outcome.replayed and replay.outcome.status == SUCCESS


async def _pail(ws: WalletStage, farmer: str, block: int) -> object:
    return await read_pail(ws.chain, farmer, block)
