"""WalletService.PlantBatch end to end (the real server over mTLS, real PostgreSQL, the
devnet): each item planted exactly once and answered on its own, the same keys as Plant,
replays, refusals of one item that leave the others planted, and a crash mid-batch
reconciled to exactly one transaction per item."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.chain import current_block, read_account, read_pail
from kalepool.v1 import common_pb2, wallet_pb2
from tests.waits import until

from .conftest import WalletStage
from .test_wallet_service import KALE, funded_wallet

SUCCESS = common_pb2.TX_STATUS_SUCCESS
PENDING = common_pb2.TX_STATUS_PENDING


def item(
    farmer: str, block: int, *, key: str | None = None, stake: int = 0
) -> wallet_pb2.PlantItem:
    return wallet_pb2.PlantItem(
        idempotency_key=key or f"plant:{farmer}:{block}",
        farmer_address=farmer,
        block_index=block,
        stake_stroops=stake,
    )


async def rows(ws: WalletStage) -> dict[str, tuple[str, str]]:
    """(status, hash) of every stored transaction, by idempotency key."""
    async with await psycopg.AsyncConnection.connect(ws.conninfo) as conn:
        cur = await conn.execute(
            "SELECT idempotency_key, status::text, tx_hash FROM transactions WHERE NOT rejected"
        )
        return {str(k): (str(s), str(h)) for k, s, h in await cur.fetchall()}


async def test_a_batch_plants_each_item_once_and_a_repeat_replays(wallet: WalletStage) -> None:
    ws = wallet
    farmers = await asyncio.gather(*(funded_wallet(ws, kale=10 * KALE) for _ in range(6)))
    before = {f: (await read_account(ws.chain, f)).sequence for f in farmers}  # type: ignore[union-attr]
    block = (await current_block(ws.chain)).index
    request = wallet_pb2.PlantBatchRequest(
        plants=[item(f, block, stake=i * KALE // 10) for i, f in enumerate(farmers)]
    )
    got = await ws.stub.PlantBatch(request)
    assert [r.idempotency_key for r in got.results] == [p.idempotency_key for p in request.plants]
    hashes = set()
    for farmer, result in zip(farmers, got.results, strict=True):
        assert result.WhichOneof("result") == "plant", result
        out = result.plant.outcome
        assert out.status == SUCCESS and not out.replayed, result
        pail = await read_pail(ws.chain, farmer, block)
        assert pail is not None
        assert (result.plant.block_index, result.plant.plant_ledger) == (block, pail.sequence)
        hashes.add(out.tx_hash)
    assert len(hashes) == len(farmers)
    stored = await rows(ws)
    assert {stored[p.idempotency_key][1] for p in request.plants} == hashes

    again = await ws.stub.PlantBatch(request)
    assert all(r.plant.outcome.replayed for r in again.results), again
    assert {r.plant.outcome.tx_hash for r in again.results} == hashes
    assert [(r.plant.block_index, r.plant.plant_ledger) for r in again.results] == [
        (r.plant.block_index, r.plant.plant_ledger) for r in got.results
    ]
    # A Plant with one of the keys replays the same transaction: one path, one key.
    single = await ws.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key=request.plants[2].idempotency_key,
            farmer_address=farmers[2],
            block_index=block,
            stake_stroops=request.plants[2].stake_stroops,
        )
    )
    assert (
        single.outcome.replayed and single.outcome.tx_hash == got.results[2].plant.outcome.tx_hash
    )
    assert await rows(ws) == stored  # nothing new signed
    for farmer in farmers:
        after = await read_account(ws.chain, farmer)
        assert after is not None and after.sequence == before[farmer] + 1  # exactly one each


async def test_a_bad_item_is_answered_alone_and_the_others_are_planted(
    wallet: WalletStage,
) -> None:
    ws = wallet
    good, late, reused, other = await asyncio.gather(*(funded_wallet(ws) for _ in range(4)))
    unfunded = (
        await ws.stub.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                owner_id=str(uuid.uuid4()), payout_address=Keypair.random().public_key
            )
        )
    ).wallet.public_key
    stranger = Keypair.random().public_key  # no wallet of this service
    block = (await current_block(ws.chain)).index
    # The key is used first for a plant of `reused` with a stake of 0 ...
    first = await ws.stub.Plant(
        wallet_pb2.PlantRequest(
            idempotency_key="plant:reused", farmer_address=reused, block_index=block
        )
    )
    assert first.outcome.status == SUCCESS
    stored = await rows(ws)
    got = await ws.stub.PlantBatch(
        wallet_pb2.PlantBatchRequest(
            plants=[
                item(good, block),
                item(late, block + 5),  # not the block to plant
                item(stranger, block),
                item(reused, block, key="plant:reused", stake=1),  # ... asked again otherwise
                item(unfunded, block),  # no account on chain
                item(other, block),
            ]
        )
    )
    by_key = {r.idempotency_key: r for r in got.results}
    assert by_key[f"plant:{good}:{block}"].plant.outcome.status == SUCCESS
    assert by_key[f"plant:{other}:{block}"].plant.outcome.status == SUCCESS
    mismatch = by_key[f"plant:{late}:{block + 5}"].plant.outcome
    assert mismatch.status == common_pb2.TX_STATUS_REJECTED
    assert mismatch.failure.code == common_pb2.FAILURE_CODE_BLOCK_MISMATCH
    assert str(block) in mismatch.failure.message and not mismatch.tx_hash

    def error(key: str) -> tuple[grpc.StatusCode, str]:
        result = by_key[key]
        assert result.WhichOneof("result") == "error", result
        codes = {c.value[0]: c for c in grpc.StatusCode}
        return codes[result.error.code], result.error.message

    code, message = error(f"plant:{stranger}:{block}")
    assert code is grpc.StatusCode.NOT_FOUND and stranger in message
    code, message = error("plant:reused")
    assert code is grpc.StatusCode.ALREADY_EXISTS and "another request" in message
    code, message = error(f"plant:{unfunded}:{block}")
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "does not exist on chain" in message
    # Only the two good items were signed; the reused key still holds its first plant.
    now = await rows(ws)
    assert set(now) - set(stored) == {f"plant:{good}:{block}", f"plant:{other}:{block}"}
    assert now["plant:reused"] == stored["plant:reused"]
    assert await read_pail(ws.chain, late, block) is None


async def test_a_batch_answered_when_sent_is_followed_and_answered_settled_once_asked_again(
    wallet: WalletStage,
) -> None:
    ws = wallet
    farmers = await asyncio.gather(*(funded_wallet(ws) for _ in range(4)))
    block = (await current_block(ws.chain)).index
    request = wallet_pb2.PlantBatchRequest(
        plants=[item(f, block) for f in farmers], answer_when_sent=True
    )
    await ws.closer.hold()  # no ledger closes: the plants can only be sent
    sent = await ws.stub.PlantBatch(request)
    assert all(r.plant.outcome.status == PENDING for r in sent.results), sent
    assert all(r.plant.outcome.tx_hash and not r.plant.plant_ledger for r in sent.results)
    # Asked again while they are followed: the call waits for each to settle.
    settled_call = asyncio.ensure_future(
        ws.stub.PlantBatch(wallet_pb2.PlantBatchRequest(plants=request.plants))
    )
    await asyncio.sleep(0.2)
    assert not settled_call.done()
    ws.closer.release()
    settled = await settled_call
    for farmer, before, after in zip(farmers, sent.results, settled.results, strict=True):
        out = after.plant.outcome
        assert out.status == SUCCESS and out.replayed, after
        assert out.tx_hash == before.plant.outcome.tx_hash
        pail = await read_pail(ws.chain, farmer, block)
        assert pail is not None and after.plant.plant_ledger == pail.sequence


async def test_a_malformed_batch_is_refused_whole_and_changes_nothing(wallet: WalletStage) -> None:
    ws = wallet
    farmer = await funded_wallet(ws)
    block = (await current_block(ws.chain)).index
    stored = await rows(ws)
    bad = {
        "no plants": [],
        "1001 plants": [item(Keypair.random().public_key, block) for _ in range(1001)],
        "a key twice": [
            item(farmer, block, key="k"),
            item(Keypair.random().public_key, block, key="k"),
        ],
        "a farmer twice": [item(farmer, block), item(farmer, block, key="plant:again")],
        "a malformed item": [item(farmer, block), item("not-an-address", block)],
        "a negative stake": [item(farmer, block, stake=-1)],
    }
    for why, plants in bad.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ws.stub.PlantBatch(wallet_pb2.PlantBatchRequest(plants=plants))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, why
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ws.stub.PlantBatch(wallet_pb2.PlantBatchRequest(plants=bad["a malformed item"]))
    assert "plants[1]" in (caught.value.details() or "")
    assert await rows(ws) == stored
    assert await read_pail(ws.chain, farmer, block) is None


async def test_a_crash_mid_batch_is_reconciled_to_exactly_one_each(wallet: WalletStage) -> None:
    ws = wallet
    farmers = await asyncio.gather(*(funded_wallet(ws) for _ in range(3)))
    before = {f: (await read_account(ws.chain, f)).sequence for f in farmers}  # type: ignore[union-attr]
    block = (await current_block(ws.chain)).index
    request = wallet_pb2.PlantBatchRequest(plants=[item(f, block) for f in farmers])
    keys = [p.idempotency_key for p in request.plants]
    await ws.closer.hold()  # the chain stands still: nothing applies
    await ws.stage.faults(lose_next_sends=1)  # one send's answer never comes back
    call = asyncio.ensure_future(ws.stub.PlantBatch(request))

    async def all_recorded() -> bool:
        # stored and sent (one of them with its answer lost), none applied
        stored = await rows(ws)
        return all(stored.get(k, ("",))[0] in ("submitted", "pending") for k in keys)

    await until(all_recorded)
    await ws.server.stop(0)  # the crash
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert all([await read_pail(ws.chain, f, block) is None for f in farmers])

    ws.closer.release()
    server = await ws.start()
    assert await asyncio.wait_for(server.reconciled, 20) == len(farmers)
    assert all(status == "success" for k, (status, _) in (await rows(ws)).items() if k in keys)
    for farmer in farmers:
        assert await read_pail(ws.chain, farmer, block) is not None
        after = await read_account(ws.chain, farmer)
        assert after is not None and after.sequence == before[farmer] + 1  # exactly one
    replay = await ws.stub.PlantBatch(request)
    assert all(
        r.plant.outcome.replayed and r.plant.outcome.status == SUCCESS for r in replay.results
    ), replay
