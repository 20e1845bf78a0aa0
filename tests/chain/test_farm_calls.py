"""Reading farm state, and plant / work / harvest through the chain client on the devnet."""

from __future__ import annotations

import asyncio

import pytest
from stellar_sdk import Keypair

from kalepool import protocol
from kalepool.chain import (
    ContractError,
    ContractKind,
    FarmError,
    Fault,
    TxKind,
    TxStatus,
    attribute_fault,
    authorize,
    build_harvest,
    build_plant,
    build_work,
    current_block,
    kale_balance,
    read_account,
    read_block,
    read_farm,
    read_pail,
    read_pails,
    sign,
)
from kalepool.protocol import AssetError

from .stage import KALE, Stage, mine

U32_MAX = protocol.U32_MAX


async def test_state_before_and_after_plant(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=100 * KALE)

    farm = await read_farm(client)
    assert farm.index == 0 and not farm.paused
    assert farm.asset_contract == client.config.sac_contract_id
    assert farm.farm_block is not None
    # A fresh farm holds the sentinels: nothing observed yet.
    assert (farm.farm_block.min_gap, farm.farm_block.max_gap) == (U32_MAX, 0)
    assert (farm.farm_block.min_stake, farm.farm_block.max_stake) == (
        protocol.I128_MAX,
        protocol.I128_MIN,
    )
    assert farm.farm_block.entropy == bytes(32)
    now = await current_block(client)
    assert (now.index, now.block, now.entropy) == (0, None, None)
    assert now.next_block_at == farm.farm_block.timestamp + client.config.block_seconds
    assert await read_pail(client, farmer.public_key, 0) is None
    before = await read_account(client, farmer.public_key)
    assert before is not None and before.kale is not None
    assert before.kale.balance == 100 * KALE and before.kale.authorized
    assert await kale_balance(client, farmer.public_key) == 100 * KALE

    stake = 7 * KALE
    tx = await build_plant(client, farmer.public_key, stake)
    assert tx.needs_auth == ()  # the farmer pays: its envelope signature is its authorization
    outcome = await stage.run(tx, farmer)
    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    assert outcome.value is None and outcome.fee_charged is not None

    block = await read_block(client, 0)
    assert block is not None and block.index == 0
    assert block.staked_total == stake and block.normalized_total == 0
    assert block.entropy == bytes(32)
    assert block.live_until_ledger is not None and block.live_until_ledger > outcome.ledger
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None
    assert (pail.sequence, pail.stake, pail.gap, pail.zeros) == (outcome.ledger, stake, None, None)
    assert not pail.worked
    farm = await read_farm(client)
    assert farm.farm_block is not None
    assert farm.farm_block.min_stake == farm.farm_block.max_stake == stake
    now = await current_block(client)
    assert now.block == block and now.entropy == bytes(32)
    after = await read_account(client, farmer.public_key)
    assert after is not None and after.kale is not None
    assert after.kale.balance == before.kale.balance - stake  # the stake is burned
    assert after.xlm_balance == before.xlm_balance - outcome.fee_charged
    assert after.sequence == before.sequence + 1 == tx.sequence


async def test_plant_work_harvest_round_trip(stage: Stage) -> None:
    """Returned gap and reward equal what kalepool.protocol computes from the chain's state."""
    client = stage.client
    farmer, other = await stage.accounts(2, kale=50 * KALE)
    pooler, pool = await stage.accounts(2)  # fee sources for work and harvest
    stake = 5 * KALE
    planted = await stage.run(await build_plant(client, farmer.public_key, stake), farmer)
    assert planted.ok, planted.describe()
    block = await read_block(client, 0)
    assert block is not None

    nonce, digest, zeros = mine(0, block.entropy, farmer.public_key, 2)
    await stage.close(3)  # let the gap grow
    work = await build_work(client, farmer.public_key, digest, nonce, source=pooler.public_key)
    assert work.needs_auth == ()  # work needs nobody's authorization
    worked = await stage.run(work, pooler)
    assert worked.status is TxStatus.SUCCESS, worked.describe()
    gap = worked.ledger - planted.ledger
    assert worked.value == gap
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and (pail.gap, pail.zeros) == (gap, zeros) and pail.worked

    # Harvesting the current block is refused, by the farm, as not ready.
    with pytest.raises(ContractError) as early:
        await build_harvest(client, farmer.public_key, 0, source=pool.public_key)
    assert early.value.farm_error is FarmError.HARVEST_NOT_READY
    assert attribute_fault(TxKind.HARVEST, early.value) is Fault.POOL

    # The next block opens with the first plant at least block_seconds after this one.
    now = await current_block(client)
    latest = await client.latest_ledger()
    assert not now.can_open_next(latest.close_time)
    # (The jump shows at the next close; bounds are taken from the latest close.)
    await stage.advance(now.next_block_at - latest.close_time)
    await stage.close()
    assert now.can_open_next((await client.latest_ledger()).close_time)
    opened = await stage.run(await build_plant(client, other.public_key, 0), other)
    assert opened.ok, opened.describe()
    now = await current_block(client)
    assert now.index == 1 and now.entropy == digest  # the last work's hash seeds the block

    finished = await read_block(client, 0)
    assert finished is not None
    norm = protocol.normalise(finished.bounds(), gap, stake, zeros)
    expected = protocol.harvest_reward(
        norm.total, 0, finished.staked_total, finished.normalized_total
    )
    balance = await kale_balance(client, farmer.public_key)
    assert balance is not None
    harvested = await stage.run(
        await build_harvest(client, farmer.public_key, 0, source=pool.public_key), pool
    )
    assert harvested.status is TxStatus.SUCCESS, harvested.describe()
    assert harvested.value == expected and expected > 0
    assert await kale_balance(client, farmer.public_key) == balance + expected + stake
    pails = await read_pails(client, [(farmer.public_key, 0), (other.public_key, 1)])
    assert pails[(farmer.public_key, 0)] is None  # harvested pails are removed
    assert pails[(other.public_key, 1)] is not None


async def test_plant_paid_by_another_account_needs_the_farmers_authorization(
    stage: Stage,
) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=10 * KALE)
    (payer,) = await stage.accounts(1)
    farmer_before = await read_account(client, farmer.public_key)
    payer_before = await read_account(client, payer.public_key)
    assert farmer_before is not None and payer_before is not None

    tx = await build_plant(client, farmer.public_key, 2 * KALE, source=payer.public_key)
    assert tx.source == payer.public_key
    assert tx.needs_auth == (farmer.public_key,)
    with pytest.raises(ValueError, match="needs authorization"):
        sign(tx, payer)
    with pytest.raises(ValueError, match="needs no authorization"):
        await authorize(client, tx, Keypair.random())
    authorized = await authorize(client, tx, farmer)
    assert authorized.needs_auth == ()
    with pytest.raises(ValueError, match="fee source"):
        sign(authorized, farmer)  # the farmer's key does not pay the fee

    outcome = await stage.run(authorized, payer)
    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and pail.stake == 2 * KALE
    farmer_after = await read_account(client, farmer.public_key)
    payer_after = await read_account(client, payer.public_key)
    assert farmer_after is not None and payer_after is not None
    assert farmer_after.kale is not None and farmer_before.kale is not None
    # The farmer's stake burned, its XLM and sequence untouched; the payer paid the fee.
    assert farmer_after.kale.balance == farmer_before.kale.balance - 2 * KALE
    assert (farmer_after.xlm_balance, farmer_after.sequence) == (
        farmer_before.xlm_balance,
        farmer_before.sequence,
    )
    assert outcome.fee_charged is not None
    assert payer_after.xlm_balance == payer_before.xlm_balance - outcome.fee_charged


async def test_contract_errors_are_typed_with_number_and_contract(stage: Stage) -> None:
    client = stage.client
    farmer, poor = await stage.accounts(2, kale=3 * KALE)
    (untrusted,) = await stage.accounts(1)
    config = client.config

    # More stake than the farmer holds: the asset contract's #10, raised under the farm's plant.
    with pytest.raises(ContractError) as broke:
        await build_plant(client, poor.public_key, 4 * KALE)
    err = broke.value
    assert (err.number, err.kind, err.contract_id) == (
        10,
        ContractKind.ASSET,
        config.sac_contract_id,
    )
    assert err.asset_error is AssetError.INSUFFICIENT_BALANCE and err.farm_error is None
    assert err.name == "InsufficientBalance" and err.function == "plant"
    assert attribute_fault(TxKind.PLANT, err) is Fault.FARMER

    # No trustline: the asset contract's #13 (the farm's #13 would be HashInvalid).
    with pytest.raises(ContractError) as no_line:
        await build_plant(client, untrusted.public_key, 1)
    assert (no_line.value.number, no_line.value.kind) == (13, ContractKind.ASSET)
    assert no_line.value.name == "TrustlineMissing"

    # A second plant in the same block: the farm's #8.
    assert (await stage.run(await build_plant(client, farmer.public_key, 0), farmer)).ok
    with pytest.raises(ContractError) as twice:
        await build_plant(client, farmer.public_key, 0)
    err = twice.value
    assert (err.number, err.kind, err.contract_id) == (
        8,
        ContractKind.FARM,
        config.farm_contract_id,
    )
    assert err.farm_error is FarmError.PAIL_EXISTS and err.name == "PailExists"
    assert "PailExists" in str(err) and "#8" in str(err)

    # A wrong hash: the farm's #13, blamed on the pooler.
    with pytest.raises(ContractError) as bad_hash:
        await build_work(client, farmer.public_key, bytes(32), 1, source=poor.public_key)
    assert bad_hash.value.farm_error is FarmError.HASH_INVALID
    assert attribute_fault(TxKind.WORK, bad_hash.value) is Fault.POOLER


async def test_contract_error_of_an_applied_transaction(stage: Stage) -> None:
    """Two plants simulated in one block, applied in one ledger: the second fails on chain."""
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=3 * KALE)
    (payer,) = await stage.accounts(1)
    first = sign(await build_plant(client, farmer.public_key, 0), farmer)
    second_tx = await build_plant(client, farmer.public_key, 0, source=payer.public_key)
    second = sign(await authorize(client, second_tx, farmer), payer)
    sent = await client.rpc.send_transaction(first.envelope_xdr)
    assert sent.status.value == "PENDING"
    outcome = await stage.settle(second)
    assert stage.applied[-2:] == [first.hash, second.hash]
    assert outcome.status is TxStatus.FAILED, outcome.describe()
    assert outcome.result_code == "txFAILED"
    assert outcome.operation_code == "INVOKE_HOST_FUNCTION_TRAPPED"
    assert outcome.contract_error is not None
    assert outcome.contract_error.farm_error is FarmError.PAIL_EXISTS
    assert outcome.error_code == "farm#8"
    assert outcome.fee_charged and outcome.fee_charged > 0  # a failed transaction still pays
    assert outcome.value is None
    assert attribute_fault(TxKind.PLANT, outcome) is Fault.POOL


async def test_parallel_work_from_channel_accounts(stage: Stage) -> None:
    """A pooler submits many farmers' work at once, one channel account per transaction."""
    client = stage.client
    farmers = await stage.accounts(4, kale=KALE)
    channels = await stage.accounts(4)
    planted = [await build_plant(client, f.public_key, 0) for f in farmers]
    for tx, farmer in zip(planted, farmers, strict=True):
        assert (await client.rpc.send_transaction(sign(tx, farmer).envelope_xdr)).hash
    await stage.close()
    block = await read_block(client, 0)
    assert block is not None
    mined = [mine(0, block.entropy, f.public_key, 1) for f in farmers]
    works = [
        await build_work(client, f.public_key, digest, nonce, source=ch.public_key)
        for f, ch, (nonce, digest, _) in zip(farmers, channels, mined, strict=True)
    ]
    outcomes = await asyncio.gather(
        *(stage.run(tx, ch) for tx, ch in zip(works, channels, strict=True))
    )
    assert all(o.status is TxStatus.SUCCESS for o in outcomes), [o.describe() for o in outcomes]
    pails = await read_pails(client, [(f.public_key, 0) for f in farmers])
    for farmer, outcome, (_, _, zeros) in zip(farmers, outcomes, mined, strict=True):
        pail = pails[(farmer.public_key, 0)]
        assert pail is not None and pail.worked
        assert (pail.gap, pail.zeros) == (outcome.value, zeros)
        assert outcome.value == outcome.ledger - pail.sequence
