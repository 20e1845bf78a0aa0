"""What a farm transaction did, read back by hash (`read_farm_call`), whoever sent it."""

from __future__ import annotations

import pytest
from stellar_sdk import TransactionBuilder, TransactionEnvelope
from stellar_sdk.soroban_rpc import SendTransactionStatus

from kalepool.chain import (
    ChainDataError,
    ChainUnavailableError,
    FarmCall,
    build_harvest,
    build_payment,
    build_plant,
    build_trustline,
    build_work,
    current_block,
    read_block,
    read_farm_call,
    read_pail,
    sign,
)

from .stage import KALE, Stage, mine


async def test_plant_work_and_harvest_read_back_by_hash(stage: Stage) -> None:
    client = stage.client
    config = client.config
    farmer, other = await stage.accounts(2, kale=50 * KALE)
    # A pooler's channel account, a rival pooler, and someone who is not the pool.
    pooler, rival, stranger = await stage.accounts(3)

    stake = 5 * KALE
    planted = await stage.run(await build_plant(client, farmer.public_key, stake), farmer)
    assert planted.ok and planted.ledger is not None
    assert await read_farm_call(client, planted.hash) == FarmCall(
        tx_hash=planted.hash,
        ledger=planted.ledger,
        succeeded=True,
        source=farmer.public_key,
        function="plant",
        farmer=farmer.public_key,
        amount=stake,
        hash=None,
        nonce=None,
        index=None,
        returned=None,
    )

    block = await read_block(client, 0)
    assert block is not None
    nonce, digest, _ = mine(0, block.entropy, farmer.public_key, 2)
    await stage.close(2)
    # Two poolers send the same work into one ledger: the first lands; the second, which the
    # stranger's fee bump pays for, fails on chain (#7: no more zeros than the work there).
    work = await build_work(client, farmer.public_key, digest, nonce, source=pooler.public_key)
    first = sign(work, pooler)
    rivals = sign(
        await build_work(client, farmer.public_key, digest, nonce, source=rival.public_key), rival
    )
    bump = TransactionBuilder.build_fee_bump_transaction(
        stranger.public_key,
        200,
        TransactionEnvelope.from_xdr(rivals.envelope_xdr, config.network_passphrase),
        config.network_passphrase,
    )
    bump.sign(stranger)
    for envelope in (first.envelope_xdr, bump.to_xdr()):
        sent = await client.rpc.send_transaction(envelope)
        assert sent.status == SendTransactionStatus.PENDING, sent
    await stage.close()

    worked = await read_farm_call(client, first.hash)
    assert worked is not None
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and pail.gap is not None
    assert worked == FarmCall(
        tx_hash=first.hash,
        ledger=planted.ledger + pail.gap,
        succeeded=True,
        source=pooler.public_key,
        function="work",
        farmer=farmer.public_key,
        amount=None,
        hash=digest,
        nonce=nonce,
        index=None,
        returned=pail.gap,  # the gap the contract returned: the ledgers since the plant
    )
    failed = await read_farm_call(client, bump.hash_hex())
    assert failed == FarmCall(
        tx_hash=bump.hash_hex(),
        ledger=worked.ledger,
        succeeded=False,
        source=rival.public_key,  # the inner transaction's source, not the fee bump's payer
        function="work",
        farmer=farmer.public_key,
        amount=None,
        hash=digest,
        nonce=nonce,
        index=None,
        returned=None,
    )

    # The next block opens; someone other than the pool harvests the farmer's pail.
    now = await current_block(client)
    latest = await client.latest_ledger()
    await stage.advance(now.next_block_at - latest.close_time)
    await stage.close()
    assert (await stage.run(await build_plant(client, other.public_key, 0), other)).ok
    harvested = await stage.run(
        await build_harvest(client, farmer.public_key, 0, source=stranger.public_key), stranger
    )
    assert harvested.ok and harvested.value is not None and harvested.value > 0
    assert await read_farm_call(client, harvested.hash) == FarmCall(
        tx_hash=harvested.hash,
        ledger=harvested.ledger or 0,
        succeeded=True,
        source=stranger.public_key,
        function="harvest",
        farmer=farmer.public_key,
        amount=None,
        hash=None,
        nonce=None,
        index=0,
        returned=harvested.value,  # the reward, stake excluded
    )


async def test_unknown_foreign_and_unreadable(stage: Stage) -> None:
    client = stage.client
    (a,) = await stage.accounts(1, kale=10 * KALE)
    (b,) = await stage.accounts(1)
    # Never applied (or beyond the server's history): None.
    assert await read_farm_call(client, "00" * 32) is None
    # Transactions that are not farm calls.
    paid = await stage.run(
        await build_payment(client, a.public_key, client.config.farm_contract_id, KALE), a
    )
    classic = await stage.run(await build_trustline(client, b.public_key), b)
    assert paid.ok and classic.ok
    with pytest.raises(ChainDataError, match=f"transfer on {client.config.sac_contract_id}"):
        await read_farm_call(client, paid.hash)
    with pytest.raises(ChainDataError, match="not one contract call"):
        await read_farm_call(client, classic.hash.upper())  # any case of hex will do
    with pytest.raises(ValueError, match="not a transaction hash"):
        await read_farm_call(client, "xyz")
    await stage.faults(fail_next={"getTransaction": 100}, error_kind="http")
    with pytest.raises(ChainUnavailableError, match="getTransaction"):
        await read_farm_call(client, paid.hash)
