"""Errors a correctly deployed farm never reaches by itself (#2, #3, #12): the farm's
storage is rewritten in place, then driven through stellar-sdk as usual."""

from __future__ import annotations

from dataclasses import replace

from stellar_sdk import scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import GetTransactionStatus

from kale_devnet import farm
from kale_devnet.ledger import StateView, contract_data_key, instance_key
from kale_devnet.server import DevnetServer

from .kit import Kit, mine


def rewrite_farm(
    server: DevnetServer, keep: set[str], farm_block: farm.Block | None = None
) -> None:
    """Replace the farm's instance storage with the named entries only."""
    chain = server.chain
    ident = chain.identity
    key = instance_key(ident.farm_contract_id)
    current = chain.get_entry(key)
    assert current is not None and current.data.contract_data is not None
    instance = current.data.contract_data.val.instance
    assert instance is not None and instance.storage is not None
    storage = []
    for item in instance.storage.sc_map:
        name = scval.to_native(item.key)[0]
        if name not in keep:
            continue
        if name == "FarmBlock" and farm_block is not None:
            storage.append((item.key, farm_block.to_scval()))
        else:
            storage.append((item.key, item.val))
    view = StateView(chain.state, chain.latest.seq)
    chain._put_instance(
        view, ident.farm_contract_id, instance.executable, storage, current.live_until or 0
    )
    view.commit()


def rewrite_block(server: DevnetServer, index: int, block: farm.Block) -> None:
    chain = server.chain
    key = contract_data_key(
        chain.identity.farm_contract_id,
        farm.block_key(index),
        stellar_xdr.ContractDataDurability.TEMPORARY,
    )
    current = chain.get_entry(key)
    assert current is not None and current.data.contract_data is not None
    data = current.data.contract_data
    view = StateView(chain.state, chain.latest.seq)
    view.put(
        key,
        stellar_xdr.LedgerEntryData(
            stellar_xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=stellar_xdr.ContractDataEntry(
                data.ext, data.contract, data.key, data.durability, block.to_scval()
            ),
        ),
    )
    view.commit()


ALL = {"Homesteader", "HomesteadAsset", "FarmBlock", "FarmIndex", "FarmPaused"}


async def test_homestead_missing_is_2(kit: Kit) -> None:
    farmer = await kit.new_account()
    rewrite_farm(kit.server, ALL - {"HomesteadAsset"})
    args = [scval.to_address(farmer.public_key), scval.to_int128(0)]
    assert "Error(Contract, #2)" in await kit.simulate_error(farmer, "plant", args)
    harvest = [scval.to_address(farmer.public_key), scval.to_uint32(0)]
    assert "Error(Contract, #2)" in await kit.simulate_error(farmer, "harvest", harvest)
    rewrite_farm(kit.server, ALL - {"Homesteader"})
    assert "Error(Contract, #2)" in await kit.simulate_error(farmer, "pause", [])


async def test_farm_block_missing_is_3(kit: Kit) -> None:
    farmer = await kit.new_account()
    rewrite_farm(kit.server, ALL - {"FarmBlock"})
    args = [scval.to_address(farmer.public_key), scval.to_int128(0)]
    assert "Error(Contract, #3)" in await kit.simulate_error(farmer, "plant", args)
    work = [scval.to_address(farmer.public_key), scval.to_bytes(bytes(32)), scval.to_uint64(0)]
    assert "Error(Contract, #3)" in await kit.simulate_error(farmer, "work", work)


async def test_block_invalid_is_12(kit: Kit) -> None:
    a, b, pooler = await kit.new_accounts(3)
    # A FarmBlock whose observed gaps are inconsistent (max < min) seeds an invalid block.
    start = (await kit.rpc.get_latest_ledger()).close_time - 1_000
    bad = replace(farm.new_farm_block(start), min_gap=5, max_gap=1)
    rewrite_farm(kit.server, ALL, bad)
    assert (await kit.plant(a, 0)).status == GetTransactionStatus.SUCCESS  # opens block 1
    await kit.close()
    block = await kit.block(1)
    assert block is not None and block["min_gap"] == 5 and block["max_gap"] == 1
    nonce, digest, _ = mine(1, bytes(32), a.public_key, 1)
    work = [scval.to_address(a.public_key), scval.to_bytes(digest), scval.to_uint64(nonce)]
    assert "Error(Contract, #12)" in await kit.simulate_error(pooler, "work", work)

    # A worked pail whose block turns invalid cannot be harvested either.
    await kit.advance(300)
    await kit.plant(b, 0)  # opens block 2 with consistent (sentinel) statistics
    await kit.close()
    nonce, digest, _ = mine(2, bytes(32), b.public_key, 1)
    assert (
        await kit.work(pooler, b.public_key, digest, nonce)
    ).status == GetTransactionStatus.SUCCESS
    current = await kit.block(2)
    assert current is not None
    stored = farm.Block(
        timestamp=current["timestamp"],
        min_gap=3,
        min_stake=0,
        min_zeros=0,
        max_gap=1,
        max_stake=0,
        max_zeros=0,
        entropy=current["entropy"],
        staked_total=current["staked_total"],
        normalized_total=current["normalized_total"],
    )
    rewrite_block(kit.server, 2, stored)
    await kit.advance(300)
    await kit.plant(a, 0)  # opens block 3
    harvest = [scval.to_address(b.public_key), scval.to_uint32(2)]
    assert "Error(Contract, #12)" in await kit.simulate_error(pooler, "harvest", harvest)


async def test_the_published_mainnet_proof_is_accepted(kit: Kit) -> None:
    """Block 37's published work (8 zeros) verifies on the devnet's farm."""
    import base64

    from kale_devnet.ledger import Durability

    farmer = "GBQHTQ7NTSKHVTSVM6EHUO3TU4P4BK2TAAII25V2TT2Q6OWXUJWEKALE"
    entropy = base64.b64decode("AAAAAAn66y/43JP7M02rwTmONZoWOmu1OPYz/bmzJ8o=")
    nonce = 20495217910
    expected = bytes.fromhex("0000000099be0037e5a48324959cb9dd10965ae59511cfd1996f9b917aad9980")
    pooler = await kit.new_account()
    # The farm at index 36, whose FarmBlock carries block 37's entropy, 300 s old.
    start = (await kit.rpc.get_latest_ledger()).close_time - 1_000
    chain = kit.server.chain
    view = StateView(chain.state, chain.latest.seq)
    chain._put_instance(
        view,
        chain.identity.farm_contract_id,
        stellar_xdr.ContractExecutable(
            stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM,
            wasm_hash=stellar_xdr.Hash(chain.identity.farm_wasm_hash),
        ),
        [
            (farm.instance_key("Homesteader"), scval.to_address(chain.identity.homesteader)),
            (farm.instance_key("HomesteadAsset"), scval.to_address(chain.identity.sac_contract_id)),
            (
                farm.instance_key("FarmBlock"),
                replace(farm.new_farm_block(start), entropy=entropy).to_scval(),
            ),
            (farm.instance_key("FarmIndex"), scval.to_uint32(36)),
        ],
        chain.latest.seq + 1_000_000,
    )
    view.commit()
    assert (await kit.plant(pooler, 0)).status == GetTransactionStatus.SUCCESS  # opens 37
    block = await kit.block(37)
    assert block is not None and block["entropy"] == entropy
    # The famous farmer planted too (its pail written in place: its key is not ours).
    pail_key = contract_data_key(
        chain.identity.farm_contract_id, farm.pail_key(farmer, 37), Durability.TEMPORARY
    )
    view = StateView(chain.state, chain.latest.seq)
    assert pail_key.contract_data is not None
    view.put(
        pail_key,
        stellar_xdr.LedgerEntryData(
            stellar_xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=stellar_xdr.ContractDataEntry(
                stellar_xdr.ExtensionPoint(0),
                pail_key.contract_data.contract,
                pail_key.contract_data.key,
                Durability.TEMPORARY,
                farm.Pail(chain.latest.seq, None, 0, None).to_scval(),
            ),
        ),
        chain.latest.seq + 100,
    )
    view.commit()
    await kit.close()
    got = await kit.work(pooler, farmer, expected, nonce)
    assert got.status == GetTransactionStatus.SUCCESS
    pail = await kit.pail(farmer, 37)
    assert pail is not None and pail["zeros"] == 8
    assert (await kit.farm_instance())["FarmBlock"]["entropy"] == expected
