"""The devnet's homestead controls: pausing the farm and upgrading its code through the
admin API, leaving the ledger as the homesteader's own transactions would, as a client
reads it through stellar-sdk's getLedgerEntries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest
from stellar_sdk import scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import GetTransactionStatus

from kale_devnet import DevnetServer
from kale_devnet.network import homesteader_keypair, identity

from .kit import KALE, AdminError, Kit, devnet_config


async def _executable_hash(kit: Kit) -> bytes:
    """The farm instance's executable, as any Stellar RPC client reads it."""
    entry = await kit.rpc.get_contract_data(
        kit.farm,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
    )
    assert entry is not None
    data = stellar_xdr.LedgerEntryData.from_xdr(entry.xdr)
    assert data.contract_data is not None and data.contract_data.val.instance is not None
    executable = data.contract_data.val.instance.executable
    assert executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM
    assert executable.wasm_hash is not None
    return bytes(executable.wasm_hash.hash)


async def _code(kit: Kit, wasm_hash: bytes) -> bytes | None:
    key = stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.CONTRACT_CODE,
        contract_code=stellar_xdr.LedgerKeyContractCode(stellar_xdr.Hash(wasm_hash)),
    )
    got = await kit.rpc.get_ledger_entries([key])
    if not got.entries:
        return None
    data = stellar_xdr.LedgerEntryData.from_xdr(got.entries[0].xdr)
    assert data.contract_code is not None
    return bytes(data.contract_code.code)


async def _plant_zero_status(kit: Kit) -> GetTransactionStatus:
    farmer = await kit.new_account()
    return (await kit.plant(farmer, 0)).status


async def test_admin_pause_is_the_homesteaders_pause(kit: Kit) -> None:
    # The homesteader's own pause, as the reference.
    homesteader = homesteader_keypair()
    assert (await kit.invoke(homesteader, "pause", [])).status == GetTransactionStatus.SUCCESS
    paused_by_tx = await kit.farm_instance()
    assert (await kit.invoke(homesteader, "unpause", [])).status == GetTransactionStatus.SUCCESS
    unpaused_by_tx = await kit.farm_instance()

    assert await kit.admin("devnet_setFarmPaused", paused=True) == {
        "paused": True,
        "changed": True,
    }
    assert await kit.farm_instance() == paused_by_tx
    assert (await kit.admin("devnet_info"))["farm_paused"] is True
    # Plants fail as they do on a paused farm: FarmPaused (#4).
    farmer = await kit.new_account()
    err = await kit.simulate_error(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(0)]
    )
    assert "Error(Contract, #4)" in err
    # Asking again changes nothing.
    again = await kit.admin("devnet_setFarmPaused", paused=True)
    assert again == {"paused": True, "changed": False}

    assert (await kit.admin("devnet_setFarmPaused", paused=False))["changed"] is True
    assert await kit.farm_instance() == unpaused_by_tx
    assert (await kit.admin("devnet_info"))["farm_paused"] is False
    assert await _plant_zero_status(kit) == GetTransactionStatus.SUCCESS
    # The homesteader can pause again from the admin's unpause (the flag is the same).
    assert (await kit.invoke(homesteader, "pause", [])).status == GetTransactionStatus.SUCCESS


async def test_admin_upgrade_changes_the_code_hash_and_keeps_the_farm(kit: Kit) -> None:
    genesis = identity().farm_wasm_hash
    assert await _executable_hash(kit) == genesis
    assert (await kit.admin("devnet_info"))["farm_wasm_hash"] == genesis.hex()
    farmer = await kit.new_account(trust=True, kale=10 * KALE)
    assert (await kit.plant(farmer, KALE)).status == GetTransactionStatus.SUCCESS
    storage = await kit.farm_instance()

    upgraded = await kit.admin("devnet_upgradeFarm")
    new_hash = bytes.fromhex(upgraded["wasmHash"])
    assert upgraded["version"] == 2 and new_hash != genesis
    assert await _executable_hash(kit) == new_hash
    # The new code is on the ledger under its own hash, a valid module; the old stays.
    code = await _code(kit, new_hash)
    assert code is not None and code.startswith(b"\x00asm")
    assert hashlib.sha256(code).digest() == new_hash
    assert await _code(kit, genesis) is not None
    # Storage is untouched and the farm keeps its rules: a second plant is refused
    # (PailExists, #8), another farmer plants.
    assert await kit.farm_instance() == storage
    err = await kit.simulate_error(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(KALE)]
    )
    assert "Error(Contract, #8)" in err
    assert await _plant_zero_status(kit) == GetTransactionStatus.SUCCESS
    assert (await kit.admin("devnet_info"))["farm_wasm_hash"] == new_hash.hex()

    third = await kit.admin("devnet_upgradeFarm")
    assert third["version"] == 3 and third["wasmHash"] not in (genesis.hex(), new_hash.hex())


async def test_admin_controls_refuse_bad_params(kit: Kit) -> None:
    with pytest.raises(AdminError, match="paused must be true or false"):
        await kit.admin("devnet_setFarmPaused", paused="yes")
    with pytest.raises(AdminError, match="paused must be true or false"):
        await kit.admin("devnet_setFarmPaused")
    with pytest.raises(AdminError, match="takes no parameters"):
        await kit.admin("devnet_upgradeFarm", version=7)
    # Nothing changed.
    assert await _executable_hash(kit) == identity().farm_wasm_hash
    assert "FarmPaused" not in await kit.farm_instance()


async def test_an_upgraded_farm_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        upgraded = await kit.admin("devnet_upgradeFarm")
        await kit.admin("devnet_setFarmPaused", paused=True)
        await kit.close()
        await kit.aclose()
    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        assert (await _executable_hash(kit)).hex() == upgraded["wasmHash"]
        assert (await kit.farm_instance())["FarmPaused"] is True
        await kit.admin("devnet_setFarmPaused", paused=False)
        # The new code still runs after the restart.
        assert await _plant_zero_status(kit) == GetTransactionStatus.SUCCESS
        assert (await kit.admin("devnet_upgradeFarm"))["version"] == 3
        await kit.aclose()
