"""What a transaction did to the farm's pails, read from its result meta
(`read_pail_changes`): on real devnet transactions (a plant creates a pail, a stranger's
harvest removes one, a payment touches none), and on crafted meta for what the devnet
cannot run (a harvest made from inside another contract's call, meta v3, malformed meta).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from stellar_sdk import Keypair, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import farm as devnet_farm
from kalepool.chain import (
    ChainClient,
    ChainDataError,
    NotAFarmCallError,
    Pail,
    PailChanges,
    build_harvest,
    build_payment,
    build_plant,
    build_trustline,
    build_work,
    current_block,
    pail_changes_of,
    read_block,
    read_farm_call,
    read_pail,
    read_pail_changes,
)
from kalepool.chain.farm_calls import pail_changes

from . import crafted
from .stage import KALE, Stage, mine

CT = stellar_xdr.LedgerEntryChangeType


async def test_a_plant_creates_a_pail_and_a_strangers_harvest_removes_it(stage: Stage) -> None:
    client = stage.client
    farmer, other = await stage.accounts(2, kale=50 * KALE)
    pooler, stranger = await stage.accounts(2)

    stake = 5 * KALE
    planted = await stage.run(await build_plant(client, farmer.public_key, stake), farmer)
    assert planted.ok and planted.ledger is not None
    opened = Pail(farmer.public_key, 0, planted.ledger, None, stake, None)
    assert await read_pail_changes(client, planted.hash) == PailChanges(
        planted.hash, planted.ledger, True, farmer.public_key, (opened,), ()
    )
    # The same from the meta the outcome it was followed to holds, with no request.
    assert pail_changes_of(planted, client.config.farm_contract_id) == PailChanges(
        planted.hash, planted.ledger, True, farmer.public_key, (opened,), ()
    )

    block = await read_block(client, 0)
    assert block is not None
    nonce, digest, zeros = mine(0, block.entropy, farmer.public_key, 2)
    await stage.close(2)
    work = await build_work(client, farmer.public_key, digest, nonce, source=pooler.public_key)
    worked = await stage.run(work, pooler)
    assert worked.ok and worked.ledger is not None
    # Work updates the pail: neither created nor removed.
    assert await read_pail_changes(client, worked.hash) == PailChanges(
        worked.hash, worked.ledger, True, pooler.public_key, (), ()
    )
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and pail.gap is not None and pail.zeros is not None

    # The next block opens with another farmer's plant; a stranger harvests the pail.
    now = await current_block(client)
    await stage.advance(now.next_block_at - (await client.latest_ledger()).close_time)
    await stage.close()
    next_plant = await stage.run(await build_plant(client, other.public_key, 0), other)
    assert next_plant.ok and next_plant.ledger is not None
    changes = await read_pail_changes(client, next_plant.hash)
    assert changes is not None
    assert changes.created == (Pail(other.public_key, 1, next_plant.ledger, None, 0, None),)
    harvested = await stage.run(
        await build_harvest(client, farmer.public_key, 0, source=stranger.public_key), stranger
    )
    assert harvested.ok and harvested.ledger is not None
    changes = await read_pail_changes(client, harvested.hash)
    # The pail as it was just before the harvest: what the reward was computed from.
    gone = Pail(farmer.public_key, 0, planted.ledger, pail.gap, stake, zeros)
    assert changes == PailChanges(
        harvested.hash, harvested.ledger, True, stranger.public_key, (), (gone,)
    )
    assert changes.removed_for(farmer.public_key) == [gone]
    assert changes.removed_for(other.public_key) == []
    assert await read_pail(client, farmer.public_key, 0) is None


async def test_payments_touch_no_pail_and_unknown_transactions_are_none(stage: Stage) -> None:
    client = stage.client
    (a,) = await stage.accounts(1, kale=10 * KALE)
    (b,) = await stage.accounts(1, trust=True)
    (c,) = await stage.accounts(1)
    classic = await stage.run(await build_payment(client, a.public_key, b.public_key, KALE), a)
    contract = await stage.run(
        await build_payment(client, a.public_key, client.config.farm_contract_id, KALE), a
    )
    trustline = await stage.run(await build_trustline(client, c.public_key), c)
    for outcome in (classic, contract, trustline):
        assert outcome.ok and outcome.ledger is not None
        assert await read_pail_changes(client, outcome.hash.upper()) == PailChanges(
            outcome.hash, outcome.ledger, True, outcome.tx.source, (), ()
        )
        farm = client.config.farm_contract_id
        assert pail_changes_of(outcome, farm) == PailChanges(
            outcome.hash, outcome.ledger, True, outcome.tx.source, (), ()
        )
    # An outcome without meta (never applied) says nothing.
    assert pail_changes_of(dataclasses.replace(classic, meta=None), farm) is None
    assert await read_pail_changes(client, "00" * 32) is None
    with pytest.raises(ValueError, match="not a transaction hash"):
        await read_pail_changes(client, "xyz")
    # A payment is not a farm call: a fact about the transaction, its own error.
    with pytest.raises(NotAFarmCallError, match="not one contract call"):
        await read_farm_call(client, classic.hash)
    with pytest.raises(NotAFarmCallError, match=f"transfer on {client.config.sac_contract_id}"):
        await read_farm_call(client, contract.hash)


# --- crafted meta: what the devnet cannot produce -------------------------------------------


@pytest.mark.parametrize("version", [crafted.meta_v4, crafted.meta_v3])
def test_a_harvest_nested_in_another_contracts_call_is_read_from_storage(version: Any) -> None:
    farmer, planter = Keypair.random().public_key, Keypair.random().public_key
    worked = devnet_farm.Pail(100, 7, 3 * KALE, 6)
    meta = version(crafted.nested_harvest(farmer, 41, worked, planter=planter))
    created, removed = pail_changes(meta, crafted.FARM)
    assert removed == (Pail(farmer, 41, 100, 7, 3 * KALE, 6),)
    assert created == (Pail(planter, 42, 160, None, KALE, None),)
    # Seen from the router's side, only its own lookalike entry is its "pail".
    assert pail_changes(meta, crafted.ROUTER) == ((), (Pail(farmer, 41, 100, 7, 3 * KALE, 6),))


def test_a_pail_restored_then_removed_and_unreadable_pails() -> None:
    farmer = Keypair.random().public_key
    worked = crafted.pail_entry(crafted.FARM, farmer, 5, devnet_farm.Pail(100, 7, KALE, 6))
    restored = [
        crafted.change(CT.LEDGER_ENTRY_RESTORED, worked),
        crafted.change(CT.LEDGER_ENTRY_REMOVED, worked),
    ]
    assert pail_changes(crafted.meta_v4(restored), crafted.FARM) == (
        (),
        (Pail(farmer, 5, 100, 7, KALE, 6),),
    )
    # A removal without the state before cannot say what was harvested.
    alone = [crafted.change(CT.LEDGER_ENTRY_REMOVED, worked)]
    with pytest.raises(ChainDataError, match=r"removed without its state before"):
        pail_changes(crafted.meta_v4(alone), crafted.FARM)
    # A pail that is not the farm's struct.
    broken = crafted.pail_entry(crafted.FARM, farmer, 6, devnet_farm.Pail(100, 7, KALE, 6))
    assert broken.data.contract_data is not None
    broken.data.contract_data.val = scval.to_uint32(3)
    created = [crafted.change(CT.LEDGER_ENTRY_CREATED, broken)]
    with pytest.raises(ChainDataError, match=r"Pail\(.*, 6\) is not a struct"):
        pail_changes(crafted.meta_v4(created), crafted.FARM)


async def test_a_router_transaction_is_read_by_its_storage_not_its_call() -> None:
    farmer, planter = Keypair.random().public_key, Keypair.random().public_key
    envelope = crafted.router_call("harvest_all", scval.to_address(farmer), scval.to_uint32(41))
    tx_hash = crafted.tx_hash_of(envelope)
    worked = devnet_farm.Pail(100, 7, 3 * KALE, 6)
    meta = crafted.meta_v4(crafted.nested_harvest(farmer, 41, worked, planter=planter)).to_xdr()
    rpc = crafted.StubRpc([], {tx_hash: crafted.answer(tx_hash, envelope, meta)})
    client = ChainClient(crafted.config(), rpc=rpc)  # type: ignore[arg-type]
    assert await read_pail_changes(client, tx_hash) == PailChanges(
        tx_hash,
        161,
        True,
        TransactionBuilder.from_xdr(envelope, crafted.PASSPHRASE).transaction.source.account_id,
        (Pail(planter, 42, 160, None, KALE, None),),
        (Pail(farmer, 41, 100, 7, 3 * KALE, 6),),
    )
    # Its top-level call is the router's: not a farm call.
    with pytest.raises(NotAFarmCallError, match=f"harvest_all on {crafted.ROUTER}"):
        await read_farm_call(client, tx_hash)

    # Answers that cannot be read are a plain ChainDataError, never "not a farm call".
    for got, match in (
        (crafted.answer(tx_hash, None, meta), "lacks the envelope"),
        (crafted.answer(tx_hash, "AAAA", meta), "envelope does not decode"),
        (crafted.answer(tx_hash, envelope, None), "lacks the result meta"),
        (crafted.answer(tx_hash, envelope, "AAAA"), "meta does not decode"),
    ):
        rpc.transactions[tx_hash] = got
        with pytest.raises(ChainDataError, match=match) as raised:
            await read_pail_changes(client, tx_hash)
        assert not isinstance(raised.value, NotAFarmCallError)
        if got.result_meta_xdr == meta:
            with pytest.raises(ChainDataError) as raised:
                await read_farm_call(client, tx_hash)
            assert not isinstance(raised.value, NotAFarmCallError)
