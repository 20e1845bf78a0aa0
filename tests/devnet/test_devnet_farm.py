"""The KALE farm contract on the devnet: plant, work, harvest, storage, every error."""

from __future__ import annotations

from stellar_sdk import Address, Keypair, SorobanDataBuilder, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from kale_devnet import DevnetServer
from kalepool import protocol

from .kit import KALE, Kit, fee_charged, mine, return_value, tx_error

TEMP_TTL = 17_280


def contract_error(n: int) -> str:
    return f"Error(Contract, #{n})"


def farm_args(*values: stellar_xdr.SCVal) -> list[stellar_xdr.SCVal]:
    return list(values)


async def test_plant_zero_and_stake_storage_and_burn(kit: Kit) -> None:
    zero = await kit.new_account()  # plants 0: no trustline needed
    staker = await kit.new_account(trust=True, kale=100 * KALE)

    before = await kit.balances(zero.public_key)
    assert before is not None
    got = await kit.plant(zero, 0)
    assert got.status == GetTransactionStatus.SUCCESS
    assert return_value(got) is None
    after = await kit.balances(zero.public_key)
    assert after is not None and after.xlm == before.xlm - fee_charged(got)
    plant_ledger = got.ledger
    assert plant_ledger is not None
    close_time = got.create_at

    # Storage laid out as the contract lays it out.
    block = await kit.block(0)
    assert block is not None
    assert block["timestamp"] == close_time
    assert block["entropy"] == bytes(32)
    assert block["staked_total"] == 0 and block["normalized_total"] == 0
    for field in ("min_gap", "max_gap", "min_stake", "max_stake", "min_zeros", "max_zeros"):
        assert block[field] == 0  # genesis sentinels become 0
    pail_entry = await kit.temp_entry(
        scval.to_vec(
            [scval.to_symbol("Pail"), scval.to_address(zero.public_key), scval.to_uint32(0)]
        )
    )
    assert pail_entry is not None
    pail, live_until = pail_entry
    assert pail == {"sequence": plant_ledger, "gap": None, "stake": 0, "zeros": None}
    assert live_until == plant_ledger + TEMP_TTL - 1
    instance = await kit.farm_instance()
    assert "FarmIndex" not in instance
    assert instance["FarmBlock"]["min_stake"] == 0 and instance["FarmBlock"]["max_stake"] == 0

    # A stake is burned from the farmer's trustline.
    kale_before = await kit.balances(staker.public_key)
    assert kale_before is not None
    got = await kit.plant(staker, 7 * KALE)
    assert got.status == GetTransactionStatus.SUCCESS
    kale_after = await kit.balances(staker.public_key)
    assert kale_after is not None and kale_before.kale is not None
    assert kale_after.kale == kale_before.kale - 7 * KALE
    assert kale_after.xlm == kale_before.xlm - fee_charged(got)
    block = await kit.block(0)
    assert block is not None and block["staked_total"] == 7 * KALE
    instance = await kit.farm_instance()
    assert (
        instance["FarmBlock"]["max_stake"] == 7 * KALE and instance["FarmBlock"]["min_stake"] == 0
    )
    events = await kit.rpc.get_events(start_ledger=got.ledger)
    burns = [
        e
        for e in events.events
        if scval.to_native(stellar_xdr.SCVal.from_xdr(e.topic[0])) == "burn"
    ]
    assert len(burns) == 1 and burns[0].contract_id == kit.sac
    assert scval.to_native(stellar_xdr.SCVal.from_xdr(burns[0].value)) == 7 * KALE

    # One pail per farmer per block.
    err = await kit.simulate_error(
        zero, "plant", [scval.to_address(zero.public_key), scval.to_int128(0)]
    )
    assert err.startswith(f"HostError: {contract_error(8)}")


async def test_work_records_gap_zeros_and_entropy(kit: Kit) -> None:
    farmer = await kit.new_account(trust=True, kale=10 * KALE)
    pooler = await kit.new_account()
    planted = await kit.plant(farmer, 3 * KALE)
    await kit.close(2)  # work lands three ledgers after the plant
    block = await kit.block(0)
    assert block is not None
    nonce, digest, zeros = mine(0, block["entropy"], farmer.public_key, 2)
    got = await kit.work(pooler, farmer.public_key, digest, nonce)  # anyone may submit work
    assert got.status == GetTransactionStatus.SUCCESS
    assert planted.ledger is not None and got.ledger is not None
    gap = got.ledger - planted.ledger
    assert gap == 3 and return_value(got) == gap
    pail = await kit.pail(farmer.public_key, 0)
    assert pail == {"sequence": planted.ledger, "gap": gap, "stake": 3 * KALE, "zeros": zeros}
    block = await kit.block(0)
    assert block is not None
    bounds = protocol.BlockBounds(0, 0, 0, 0, 0, 0)
    first = protocol.normalise(bounds, gap, 3 * KALE, zeros)
    assert block["normalized_total"] == first.total
    assert block["staked_total"] == 0  # a worked pail's stake leaves the pot
    farm_block = (await kit.farm_instance())["FarmBlock"]
    assert farm_block["entropy"] == digest
    assert farm_block["min_gap"] == farm_block["max_gap"] == gap
    assert farm_block["min_zeros"] == farm_block["max_zeros"] == zeros

    # Resubmitting needs strictly more zeros.
    err = await kit.simulate_error(
        pooler,
        "work",
        [scval.to_address(farmer.public_key), scval.to_bytes(digest), scval.to_uint64(nonce)],
    )
    assert err.startswith(f"HostError: {contract_error(7)}")
    nonce2, digest2, zeros2 = mine(0, bytes(32), farmer.public_key, zeros + 1, start=nonce + 1)
    got = await kit.work(pooler, farmer.public_key, digest2, nonce2)
    assert got.status == GetTransactionStatus.SUCCESS
    new_gap = got.ledger - planted.ledger  # type: ignore[operator]
    pail = await kit.pail(farmer.public_key, 0)
    assert pail is not None and pail["gap"] == new_gap and pail["zeros"] == zeros2
    block = await kit.block(0)
    assert block is not None
    # The resubmission swaps the zeros term, computed with the new gap on both sides.
    expected = (
        first.total
        + protocol.normalise(bounds, new_gap, 3 * KALE, zeros2).total
        - protocol.normalise(bounds, new_gap, 3 * KALE, zeros).total
    )
    assert block["normalized_total"] == expected


async def test_work_errors(kit: Kit) -> None:
    farmer, other = await kit.new_accounts(2)
    args = [scval.to_address(farmer.public_key), scval.to_bytes(bytes(32)), scval.to_uint64(1)]
    # Before any plant there is no Block(0).
    assert contract_error(11) in await kit.simulate_error(other, "work", args)
    await kit.plant(other, 0)
    assert contract_error(9) in await kit.simulate_error(other, "work", args)  # no pail
    await kit.plant(farmer, 0)
    # A hash that is not the recomputed one.
    nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 1)
    wrong = [
        scval.to_address(farmer.public_key),
        scval.to_bytes(digest),
        scval.to_uint64(nonce + 1),
    ]
    assert contract_error(13) in await kit.simulate_error(other, "work", wrong)
    # Bad argument types fail as the host fails a conversion.
    bad = [scval.to_address(farmer.public_key), scval.to_bytes(b"short"), scval.to_uint64(1)]
    assert "Error(Value, UnexpectedSize)" in await kit.simulate_error(other, "work", bad)
    bad = [scval.to_address(farmer.public_key), scval.to_bytes(digest)]
    assert "HostError: Error(WasmVm" in await kit.simulate_error(other, "work", bad)


async def test_gap_zero_fails_in_the_plant_ledger(kit: Kit) -> None:
    """#15: work that lands in the plant's own ledger (a hand-built footprint, since
    simulation always sees the next ledger)."""
    first, farmer, pooler = await kit.new_accounts(3)
    await kit.plant(first, 0)  # Block(0) exists, entropy zero
    plant = await kit.prepare_invoke(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(0)]
    )
    nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 1)

    def data_key(
        key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
    ) -> stellar_xdr.LedgerKey:
        return stellar_xdr.LedgerKey(
            stellar_xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=stellar_xdr.LedgerKeyContractData(
                scval.to_address(kit.farm).address,
                key,
                durability,  # type: ignore[arg-type]
            ),
        )

    temp = stellar_xdr.ContractDataDurability.TEMPORARY
    wasm_hash = (await kit.rpc._get_contract_instance(kit.farm)).executable.wasm_hash
    assert wasm_hash is not None
    code_key = stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.CONTRACT_CODE,
        contract_code=stellar_xdr.LedgerKeyContractCode(wasm_hash),
    )
    read_write = [
        data_key(
            stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            stellar_xdr.ContractDataDurability.PERSISTENT,
        ),
        data_key(scval.to_vec([scval.to_symbol("Block"), scval.to_uint32(0)]), temp),
        data_key(
            scval.to_vec(
                [scval.to_symbol("Pail"), scval.to_address(farmer.public_key), scval.to_uint32(0)]
            ),
            temp,
        ),
    ]
    resource_fee = 5_000_000
    soroban_data = (
        SorobanDataBuilder()
        .set_read_only([code_key])
        .set_read_write(read_write)
        .set_resources(50_000_000, 20_000, 20_000)
        .set_resource_fee(resource_fee)
        .build()
    )
    work = (
        TransactionBuilder(
            await kit.rpc.load_account(pooler.public_key), kit.passphrase, base_fee=100
        )
        .append_invoke_contract_function_op(
            kit.farm,
            "work",
            [scval.to_address(farmer.public_key), scval.to_bytes(digest), scval.to_uint64(nonce)],
        )
        .set_soroban_data(soroban_data)
        .set_timeout(300)
        .build()
    )
    work.sign(pooler)
    assert (await kit.send(plant)).status == SendTransactionStatus.PENDING
    assert (await kit.send(work)).status == SendTransactionStatus.PENDING
    closed = await kit.close()
    assert closed["applied"] == [plant.hash_hex(), work.hash_hex()]
    failed = await kit.rpc.get_transaction(work.hash_hex())
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed) == contract_error(15)
    assert fee_charged(failed) == 100 + resource_fee  # a failed call still pays
    assert (await kit.rpc.get_transaction(plant.hash_hex())).status == GetTransactionStatus.SUCCESS


async def test_plant_errors_and_the_asset_contract_errors(kit: Kit) -> None:
    farmer = await kit.new_account()
    assert contract_error(6) in await kit.simulate_error(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(-1)]
    )
    # A stake without a trustline: the KALE contract's TrustlineMissing (#13).
    err = await kit.simulate_error(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(1)]
    )
    assert contract_error(13) in err and kit.sac in err
    # More than the balance: the KALE contract's BalanceError (#10).
    poor = await kit.new_account(trust=True, kale=5)
    err = await kit.simulate_error(
        poor, "plant", [scval.to_address(poor.public_key), scval.to_int128(6)]
    )
    assert contract_error(10) in err
    assert (await kit.plant(poor, 5)).status == GetTransactionStatus.SUCCESS


async def test_pause_and_unpause(kit: Kit) -> None:
    from kale_devnet.network import homesteader_keypair

    homesteader = homesteader_keypair()
    farmer = await kit.new_account()
    # Only the homesteader may pause: another signer's simulation records its auth, but
    # the transaction cannot be signed for the homesteader.
    err = await kit.simulate_error(farmer, "unpause", [])
    assert contract_error(5) in err
    assert (await kit.invoke(homesteader, "pause", [])).status == GetTransactionStatus.SUCCESS
    assert (await kit.farm_instance())["FarmPaused"] is True
    assert contract_error(4) in await kit.simulate_error(homesteader, "pause", [])
    assert contract_error(4) in await kit.simulate_error(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(0)]
    )
    # A pause by someone else fails: the homesteader never signed it.
    stranger = await kit.new_account()
    assert (await kit.invoke(homesteader, "unpause", [])).status == GetTransactionStatus.SUCCESS
    tx = (
        (await kit.builder(stranger))
        .append_invoke_contract_function_op(kit.farm, "pause", [])
        .build()
    )
    prepared = await kit.rpc.prepare_transaction(tx)
    prepared.sign(stranger)
    failed = await kit.submit(prepared)
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed).startswith("Error(SCE_AUTH")
    assert (await kit.plant(farmer, 0)).status == GetTransactionStatus.SUCCESS


async def test_next_block_opens_and_harvest_pays(kit: Kit) -> None:
    a = await kit.new_account(trust=True, kale=50 * KALE)
    b = await kit.new_account(trust=True)
    lazy = await kit.new_account(trust=True, kale=50 * KALE)
    pooler = await kit.new_account()
    planted_a = await kit.plant(a, 10 * KALE)
    planted_b = await kit.plant(b, 0)
    await kit.plant(lazy, 4 * KALE)  # plants, never works
    await kit.close(3)
    na, ha, za = mine(0, bytes(32), a.public_key, 2)
    work_a = await kit.work(pooler, a.public_key, ha, na)
    nb, hb, zb = mine(0, bytes(32), b.public_key, 1)
    work_b = await kit.work(pooler, b.public_key, hb, nb)
    # Harvest before the block ends.
    args = [scval.to_address(a.public_key), scval.to_uint32(0)]
    assert contract_error(14) in await kit.simulate_error(pooler, "harvest", args)

    # Nothing advances without a plant: 300 s later the first plant opens block 1.
    await kit.advance(300)
    opener = await kit.new_account()
    opened = await kit.plant(opener, 0)
    instance = await kit.farm_instance()
    assert instance["FarmIndex"] == 1
    new_block = await kit.block(1)
    assert new_block is not None
    assert new_block["entropy"] == hb  # the last successful work of block 0
    gap_a = work_a.ledger - planted_a.ledger  # type: ignore[operator]
    gap_b = work_b.ledger - planted_b.ledger  # type: ignore[operator]
    assert new_block["min_gap"] == min(gap_a, gap_b) and new_block["max_gap"] == max(gap_a, gap_b)
    assert new_block["min_stake"] == 0 and new_block["max_stake"] == 10 * KALE
    assert new_block["min_zeros"] == min(za, zb) and new_block["max_zeros"] == max(za, zb)
    assert new_block["timestamp"] == opened.create_at
    fb = instance["FarmBlock"]
    assert fb["timestamp"] == opened.create_at and fb["entropy"] == bytes(32)
    assert fb["max_gap"] == 0 and fb["min_gap"] == 2**32 - 1

    # Work for the old block is now lost.
    err = await kit.simulate_error(
        pooler, "work", [scval.to_address(a.public_key), scval.to_bytes(ha), scval.to_uint64(na)]
    )
    assert contract_error(9) in err

    # Harvest: reward by the normalisation formula, stake returned, pail removed.
    block0 = await kit.block(0)
    assert block0 is not None
    bounds = protocol.BlockBounds(0, 0, 0, 0, 0, 0)
    norm_a = protocol.normalise(bounds, gap_a, 10 * KALE, za)
    norm_b = protocol.normalise(bounds, gap_b, 0, zb)
    assert block0["normalized_total"] == norm_a.total + norm_b.total
    assert block0["staked_total"] == 4 * KALE  # only the stake of the pail never worked
    expected_a = protocol.harvest_reward(norm_a.total, 0, 4 * KALE, norm_a.total + norm_b.total)
    before = await kit.balances(a.public_key)
    got = await kit.harvest(pooler, a.public_key, 0)  # anyone may harvest for the farmer
    assert got.status == GetTransactionStatus.SUCCESS
    assert return_value(got) == expected_a
    after = await kit.balances(a.public_key)
    assert before is not None and after is not None and before.kale is not None
    assert after.kale == before.kale + expected_a + 10 * KALE
    assert after.xlm == before.xlm  # the pooler paid the fee
    assert await kit.pail(a.public_key, 0) is None
    assert contract_error(9) in await kit.simulate_error(pooler, "harvest", args)
    # The lazy farmer planted but never worked.
    assert contract_error(10) in await kit.simulate_error(
        pooler, "harvest", [scval.to_address(lazy.public_key), scval.to_uint32(0)]
    )
    events = await kit.rpc.get_events(start_ledger=got.ledger)
    mints = [
        e
        for e in events.events
        if scval.to_native(stellar_xdr.SCVal.from_xdr(e.topic[0])) == "mint"
    ]
    assert len(mints) == 1
    assert scval.to_native(stellar_xdr.SCVal.from_xdr(mints[0].value)) == expected_a + 10 * KALE


async def test_harvest_without_trustline_fails_in_the_asset_contract(kit: Kit) -> None:
    farmer = await kit.new_account()
    pooler = await kit.new_account()
    planted = await kit.plant(farmer, 0)
    await kit.close()
    nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 1)
    assert (
        await kit.work(pooler, farmer.public_key, digest, nonce)
    ).status == GetTransactionStatus.SUCCESS
    await kit.advance(300)
    await kit.plant(pooler, 0)
    err = await kit.simulate_error(
        pooler, "harvest", [scval.to_address(farmer.public_key), scval.to_uint32(0)]
    )
    assert contract_error(13) in err and kit.sac in err
    assert planted.status == GetTransactionStatus.SUCCESS


async def test_remove_block_then_block_missing(kit: Kit) -> None:
    from kale_devnet.network import homesteader_keypair

    farmer, pooler = await kit.new_accounts(2)
    await kit.plant(farmer, 0)
    got = await kit.invoke(homesteader_keypair(), "remove_block", [scval.to_uint32(0)])
    assert got.status == GetTransactionStatus.SUCCESS
    assert await kit.block(0) is None
    nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 1)
    err = await kit.simulate_error(
        pooler,
        "work",
        [scval.to_address(farmer.public_key), scval.to_bytes(digest), scval.to_uint64(nonce)],
    )
    assert contract_error(11) in err
    # At index 0 a missing block is simply created again (genesis)...
    await kit.plant(pooler, 0)
    assert await kit.farm_index() == 0 and await kit.block(0) is not None
    # ...but past genesis a missing Block(index) moves the index (the eviction branch).
    await kit.advance(300)
    await kit.plant(farmer, 0)
    assert await kit.farm_index() == 1
    await kit.invoke(homesteader_keypair(), "remove_block", [scval.to_uint32(1)])
    await kit.plant(pooler, 0)
    assert await kit.farm_index() == 2
    farm_block = (await kit.farm_instance())["FarmBlock"]
    block2 = await kit.block(2)
    assert block2 is not None and block2["timestamp"] > farm_block["timestamp"]


async def test_fee_payer_with_farmer_authorization(kit: Kit) -> None:
    """The pool pays the fee; the farmer signs only its authorization entry."""
    farmer = await kit.new_account(trust=True, kale=10 * KALE)
    payer = await kit.new_account()
    args = [scval.to_address(farmer.public_key), scval.to_int128(2 * KALE)]

    # Without the farmer's signature the transaction fails on chain.
    unsigned = await kit.prepare_invoke(payer, "plant", args)
    op = unsigned.transaction.operations[0]
    assert op.auth[0].credentials.address is not None  # type: ignore[attr-defined]
    failed = await kit.submit(unsigned)
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed).startswith("Error(SCE_AUTH")

    # Signed by the farmer (authorize_entry): the plant and its nested burn are covered.
    before_farmer, before_payer = (
        await kit.balances(farmer.public_key),
        await kit.balances(payer.public_key),
    )
    signed = await kit.prepare_invoke(payer, "plant", args, signers=[farmer])
    got = await kit.submit(signed)
    assert got.status == GetTransactionStatus.SUCCESS
    after_farmer, after_payer = (
        await kit.balances(farmer.public_key),
        await kit.balances(payer.public_key),
    )
    assert before_farmer is not None and after_farmer is not None and before_farmer.kale is not None
    assert (
        after_farmer.kale == before_farmer.kale - 2 * KALE and after_farmer.xlm == before_farmer.xlm
    )
    assert before_payer is not None and after_payer is not None
    assert after_payer.xlm == before_payer.xlm - fee_charged(got)


async def test_authorization_replay_and_expiry_fail(kit: Kit) -> None:
    from stellar_sdk.auth import authorize_entry

    farmer = await kit.new_account()
    payer, payer2 = await kit.new_accounts(2)
    args = [scval.to_address(farmer.public_key), scval.to_int128(0)]
    signed = await kit.prepare_invoke(payer, "plant", args, signers=[farmer])
    entry = signed.transaction.operations[0].auth[0]  # type: ignore[attr-defined]
    assert (await kit.submit(signed)).status == GetTransactionStatus.SUCCESS

    # The same signed entry in a second transaction, prepared (enforcing simulation)
    # before the first applied: on chain the nonce is already spent.
    await kit.advance(300)
    first = await kit.prepare_invoke(payer, "plant", args, signers=[farmer])
    entry = first.transaction.operations[0].auth[0]  # type: ignore[attr-defined]
    second = (
        (await kit.builder(payer2))
        .append_invoke_contract_function_op(kit.farm, "plant", args)
        .build()
    )
    second.transaction.operations[0].auth = [entry]  # type: ignore[attr-defined]
    second = await kit.rpc.prepare_transaction(second)
    second.sign(payer2)
    assert (await kit.send(first)).status == SendTransactionStatus.PENDING
    assert (await kit.send(second)).status == SendTransactionStatus.PENDING
    await kit.close()
    assert (await kit.rpc.get_transaction(first.hash_hex())).status == GetTransactionStatus.SUCCESS
    failed = await kit.rpc.get_transaction(second.hash_hex())
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed) == "Error(SCE_AUTH, SCEC_EXISTING_VALUE)"
    # Simulating it now fails the same way, so prepare_transaction raises.
    third = (
        (await kit.builder(payer2))
        .append_invoke_contract_function_op(kit.farm, "plant", args)
        .build()
    )
    third.transaction.operations[0].auth = [entry]  # type: ignore[attr-defined]
    sim = await kit.rpc.simulate_transaction(third)
    assert sim.error is not None and sim.error.startswith("HostError: Error(Auth, ExistingValue)")

    # An authorization that expired before the transaction applied.
    await kit.advance(300)
    expiring = await kit.prepare_invoke(payer2, "plant", args)
    op = expiring.transaction.operations[0]
    latest = await kit.rpc.get_latest_ledger()
    op.auth = [authorize_entry(op.auth[0], farmer, latest.sequence, kit.passphrase)]  # type: ignore[attr-defined]
    expiring.signatures = []
    expiring.sign(payer2)
    await kit.close()  # now the signature's last ledger has passed
    failed = await kit.submit(expiring)
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed) == "Error(SCE_AUTH, SCEC_INVALID_INPUT)"


async def test_rollover_race_breaks_the_footprint(kit: Kit) -> None:
    """A plant simulated before the block ends but applied after it opens the next block:
    its footprint lacks the new keys, so it fails on chain as it does on mainnet."""
    first, farmer = await kit.new_accounts(2)
    await kit.plant(first, 0)
    plant = await kit.prepare_invoke(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(0)]
    )
    await kit.advance(300)
    failed = await kit.submit(plant)
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed) == "Error(SCE_STORAGE, SCEC_EXCEEDED_LIMIT)"
    # Re-simulated, the same plant opens block 1.
    assert (await kit.plant(farmer, 0)).status == GetTransactionStatus.SUCCESS
    assert await kit.farm_index() == 1


async def test_temporary_entries_expire(kit: Kit) -> None:
    from .kit import devnet_config

    async with DevnetServer(devnet_config(temp_ttl_ledgers=4)) as server:
        short = Kit(server, kit.http)
        try:
            a, b = await short.new_accounts(2)
            planted = await short.plant(a, 0)
            entry = await short.temp_entry(
                scval.to_vec(
                    [scval.to_symbol("Pail"), scval.to_address(a.public_key), scval.to_uint32(0)]
                )
            )
            assert entry is not None and entry[1] == planted.ledger + 3  # type: ignore[operator]
            await short.close(4)
            assert await short.pail(a.public_key, 0) is None
            assert await short.block(0) is None
            # Past genesis, an evicted Block(index) inside the block's time moves the index.
            await short.advance(300)
            await short.plant(b, 0)
            assert await short.farm_index() == 1
            await short.close(4)
            assert await short.block(1) is None
            await short.plant(a, 0)
            assert await short.farm_index() == 2
        finally:
            await short.aclose()


async def test_unknown_function_and_wrong_contract(kit: Kit) -> None:
    farmer = await kit.new_account()
    err = await kit.simulate_error(farmer, "steal", [])
    assert err.startswith("HostError: Error(WasmVm, MissingValue)")
    ghost = "CAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"[
        :56
    ]
    from stellar_sdk import StrKey

    ghost = StrKey.encode_contract(bytes(32))
    err = await kit.simulate_error(farmer, "plant", [], contract=ghost)
    assert err.startswith("HostError: Error(Storage, MissingValue)")
    assert Keypair  # keep the import used


async def test_only_the_admin_mints(kit: Kit) -> None:
    """The KALE contract's admin is the farm: nobody else can mint."""
    thief = await kit.new_account(trust=True)
    tx = (
        (await kit.builder(thief))
        .append_invoke_contract_function_op(
            kit.sac, "mint", [scval.to_address(thief.public_key), scval.to_int128(1000 * KALE)]
        )
        .build()
    )
    prepared = await kit.rpc.prepare_transaction(tx)
    entry = prepared.transaction.operations[0].auth[0]  # type: ignore[attr-defined]
    assert entry.credentials.address is not None
    # Simulation records the admin's (the farm's) authorization, which only it can give.
    assert Address.from_xdr_sc_address(entry.credentials.address.address).address == kit.farm
    prepared.sign(thief)
    failed = await kit.submit(prepared)
    assert failed.status == GetTransactionStatus.FAILED
    assert tx_error(failed).startswith("Error(SCE_AUTH")
    balances = await kit.balances(thief.public_key)
    assert balances is not None and balances.kale == 0
    err = await kit.simulate_error(
        thief, "burn", [scval.to_address(thief.public_key), scval.to_int128(-1)], contract=kit.sac
    )
    assert contract_error(8) in err  # negative amount


async def test_soroban_transaction_validity(kit: Kit) -> None:
    """A contract call must pay for what it declares and declare what it may use."""
    from .kit import result_code

    farmer = await kit.new_account()
    args = [scval.to_address(farmer.public_key), scval.to_int128(0)]
    prepared = await kit.prepare_invoke(farmer, "plant", args)
    data = prepared.transaction.soroban_data
    assert data is not None
    # Half the resource fee the simulation asked for does not cover the declared resources.
    half = data.resource_fee.int64 // 2
    prepared.transaction.fee -= data.resource_fee.int64 - half
    data.resource_fee = stellar_xdr.Int64(half)
    prepared.signatures = []
    prepared.sign(farmer)
    sent = await kit.send(prepared)
    assert sent.status == SendTransactionStatus.ERROR and sent.error_result_xdr is not None
    assert result_code(sent.error_result_xdr) == "txSOROBAN_INVALID"  # as stellar-core says
    # A footprint beyond the network's limits is invalid.
    prepared = await kit.prepare_invoke(farmer, "plant", args)
    data = prepared.transaction.soroban_data
    assert data is not None
    extra = [
        stellar_xdr.LedgerKey(
            stellar_xdr.LedgerEntryType.ACCOUNT,
            account=stellar_xdr.LedgerKeyAccount(Keypair.random().xdr_account_id()),
        )
        for _ in range(101)
    ]
    data.resources.footprint.read_only.extend(extra)
    prepared.signatures = []
    prepared.sign(farmer)
    sent = await kit.send(prepared)
    assert (
        sent.error_result_xdr is not None
        and result_code(sent.error_result_xdr) == "txSOROBAN_INVALID"
    )
    # Too small an instruction budget fails on chain, and the fee is still paid.
    prepared = await kit.prepare_invoke(farmer, "plant", args)
    data = prepared.transaction.soroban_data
    assert data is not None
    data.resources.instructions = stellar_xdr.Uint32(1000)
    prepared.signatures = []
    prepared.sign(farmer)
    failed = await kit.submit(prepared)
    assert failed.status == GetTransactionStatus.FAILED
    assert failed.result_xdr is not None
    op = stellar_xdr.TransactionResult.from_xdr(failed.result_xdr).result.results[0]  # type: ignore[index]
    assert op.tr is not None and op.tr.invoke_host_function_result is not None
    assert (
        op.tr.invoke_host_function_result.code.name
        == "INVOKE_HOST_FUNCTION_RESOURCE_LIMIT_EXCEEDED"
    )
    assert await kit.pail(farmer.public_key, 0) is None
