"""Stellar RPC methods and their bad-input answers, through stellar-sdk and raw HTTP."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from stellar_sdk import Keypair, Network, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import AccountNotFoundException, SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import GetTransactionStatus

from kale_devnet import identity

from .kit import KALE, Kit


async def raw_post(kit: Kit, body: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else None
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with kit.http.post(kit.server.url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_health_network_and_version(kit: Kit) -> None:
    health = await kit.rpc.get_health()
    assert health.status == "healthy"
    assert health.latest_ledger == 1 and health.oldest_ledger == 1
    network = await kit.rpc.get_network()
    assert network.passphrase == "kale-pool devnet ; 2026"
    assert network.protocol_version == 23
    assert network.friendbot_url == f"{kit.server.url}/friendbot"
    version = await kit.rpc.get_version_info()
    assert version.protocol_version == 23


async def test_latest_ledger_moves_with_closes_and_decodes(kit: Kit) -> None:
    first = await kit.rpc.get_latest_ledger()
    await kit.close(3)
    latest = await kit.rpc.get_latest_ledger()
    assert latest.sequence == first.sequence + 3
    assert latest.close_time == first.close_time + 3 * 5
    header = stellar_xdr.LedgerHeader.from_xdr(latest.header_xdr)
    assert header.ledger_seq.uint32 == latest.sequence
    assert header.scp_value.close_time.time_point.uint64 == latest.close_time
    meta = stellar_xdr.LedgerCloseMeta.from_xdr(latest.metadata_xdr)
    assert meta.v2 is not None
    assert meta.v2.ledger_header.header.ledger_seq.uint32 == latest.sequence
    assert meta.v2.ledger_header.hash.hash.hex() == latest.id


async def test_latest_ledger_meta_carries_each_applied_transaction(kit: Kit) -> None:
    """The close meta of a ledger with transactions (a plant staking KALE and a payment,
    applied together) decodes, encodes back to the same bytes, and carries each one's
    hash, result and metas as getTransaction reports them, in application order."""
    farmer, payer = await kit.new_accounts(2, trust=True, kale=10 * KALE)
    plant = await kit.prepare_invoke(
        farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(KALE)]
    )
    pay = (await kit.builder(payer)).append_payment_op(farmer.public_key, kit.asset, "1").build()
    pay.sign(payer)
    hashes = [(await kit.send(tx)).hash for tx in (plant, pay)]
    await kit.close()
    latest = await kit.rpc.get_latest_ledger()
    meta = stellar_xdr.LedgerCloseMeta.from_xdr(latest.metadata_xdr)
    assert meta.to_xdr() == latest.metadata_xdr
    assert meta.v2 is not None
    assert meta.v2.ledger_header.header.to_xdr() == latest.header_xdr
    got = {h: await kit.rpc.get_transaction(h) for h in hashes}
    assert all(g.status == GetTransactionStatus.SUCCESS for g in got.values())
    applied = meta.v2.tx_processing
    assert [e.result.transaction_hash.hash.hex() for e in applied] == sorted(
        hashes, key=lambda h: got[h].application_order or 0
    )
    for entry in applied:
        tx = got[entry.result.transaction_hash.hash.hex()]
        assert entry.result.result.to_xdr() == tx.result_xdr
        assert entry.tx_apply_processing.to_xdr() == tx.result_meta_xdr
        assert entry.post_tx_apply_fee_processing.ledger_entry_changes == []
    assert meta.v2.tx_set.to_xdr()  # the ledger's transaction set, decoded


async def test_advance_time_moves_the_next_close(kit: Kit) -> None:
    before = await kit.rpc.get_latest_ledger()
    await kit.advance(300)
    await kit.close()
    after = await kit.rpc.get_latest_ledger()
    assert after.close_time == before.close_time + 5 + 300
    await kit.close()
    assert (await kit.rpc.get_latest_ledger()).close_time == after.close_time + 5


async def test_devnet_info(kit: Kit) -> None:
    async with kit.http.get(f"{kit.server.url}/devnet") as resp:
        info = await resp.json()
    ident = identity()
    assert info["network_passphrase"] == Network("kale-pool devnet ; 2026").network_passphrase
    assert info["farm_contract_id"] == ident.farm_contract_id
    assert info["asset_code"] == "KALE"
    assert info["asset_issuer"] == ident.asset_issuer
    assert info["sac_contract_id"] == ident.asset.contract_id(ident.network_passphrase)
    assert info["ledger_seconds"] == 5 and info["block_seconds"] == 300


async def test_identity_is_derived_the_way_stellar_derives_ids() -> None:
    ident = identity()
    assert ident.sac_contract_id.startswith("C") and ident.farm_contract_id.startswith("C")
    assert ident.sac_contract_id != ident.farm_contract_id
    # Stable across processes: derived from fixed seeds only.
    assert identity() == ident


async def test_sac_and_farm_instances_are_readable(kit: Kit) -> None:
    instance = await kit.farm_instance()
    assert instance["Homesteader"].address == kit.homesteader
    assert instance["HomesteadAsset"].address == kit.sac
    assert "FarmIndex" not in instance  # absent until the first rollover
    block = instance["FarmBlock"]
    assert block["min_gap"] == 2**32 - 1 and block["max_gap"] == 0
    assert block["min_stake"] == 2**127 - 1 and block["max_stake"] == -(2**127)
    assert block["entropy"] == bytes(32)
    wasm = await kit.rpc.get_contract_wasm(kit.farm)
    assert wasm.startswith(b"\x00asm")


async def test_unknown_method_and_malformed_requests(kit: Kit) -> None:
    status, body = await raw_post(kit, {"jsonrpc": "2.0", "id": 7, "method": "noSuchMethod"})
    assert status == 200 and body["id"] == 7 and body["error"]["code"] == -32601
    _, body = await raw_post(kit, None, raw=b"{not json")
    assert body["error"]["code"] == -32700
    _, body = await raw_post(kit, {"id": 1, "method": "getHealth"})  # no jsonrpc
    assert body["error"]["code"] == -32600
    _, body = await raw_post(
        kit, {"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": [1]}
    )
    assert body["error"]["code"] == -32602
    _, body = await raw_post(kit, [])
    assert body["error"]["code"] == -32600
    _, body = await raw_post(
        kit,
        [
            {"jsonrpc": "2.0", "id": 1, "method": "getHealth"},
            {"jsonrpc": "2.0", "id": 2, "method": "bogus"},
        ],
    )
    assert body[0]["result"]["status"] == "healthy" and body[1]["error"]["code"] == -32601
    # ...and it keeps serving.
    assert (await kit.rpc.get_health()).status == "healthy"


async def test_bad_xdr_is_invalid_params(kit: Kit) -> None:
    for bad in ("not base64!!", base64.b64encode(b"\x00\x00\x00\x02garbage").decode()):
        with pytest.raises(SorobanRpcErrorResponse) as err:
            await kit.rpc.send_transaction(bad)
        assert err.value.code == -32602 and err.value.message == "invalid_xdr"
    _, body = await raw_post(
        kit,
        {"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": {"keys": ["AAAA!"]}},
    )
    assert body["error"]["code"] == -32602 and "index 0" in body["error"]["message"]
    _, body = await raw_post(
        kit,
        {"jsonrpc": "2.0", "id": 1, "method": "getLedgerEntries", "params": {"keys": ["x"] * 201}},
    )
    assert "exceeds maximum" in body["error"]["message"]
    simulated = await kit.rpc.simulate_transaction("AAAA")  # type: ignore[arg-type]
    assert simulated.error is not None


async def test_get_transaction_answers(kit: Kit) -> None:
    missing = await kit.rpc.get_transaction("ab" * 32)
    assert missing.status == GetTransactionStatus.NOT_FOUND
    assert missing.latest_ledger == 1 and missing.oldest_ledger == 1
    with pytest.raises(SorobanRpcErrorResponse) as err:
        await kit.rpc.get_transaction("abc")
    assert err.value.code == -32602
    with pytest.raises(SorobanRpcErrorResponse):
        await kit.rpc.get_transaction("zz" * 32)


async def test_missing_account_is_not_found(kit: Kit) -> None:
    with pytest.raises(AccountNotFoundException):
        await kit.rpc.load_account(Keypair.random().public_key)


async def test_simulation_rejects_non_contract_transactions(kit: Kit) -> None:
    kp = await kit.new_account()
    classic = (await kit.builder(kp)).append_bump_sequence_op(1).build()
    sim = await kit.rpc.simulate_transaction(classic)
    assert sim.error is not None and "unsupported operation" in sim.error
    two = (
        (await kit.builder(kp))
        .append_invoke_contract_function_op(kit.sac, "decimals", [])
        .append_invoke_contract_function_op(kit.sac, "decimals", [])
        .build()
    )
    sim = await kit.rpc.simulate_transaction(two)
    assert sim.error is not None and "more than one operation" in sim.error


async def test_sac_read_calls_simulate(kit: Kit) -> None:
    kp = await kit.new_account(trust=True, kale=42 * 10_000_000)
    for fn, args, expected in [
        ("decimals", [], 7),
        ("symbol", [], "KALE"),
        ("balance", [scval.to_address(kp.public_key)], 42 * 10_000_000),
        ("admin", [], None),
    ]:
        tx = (await kit.builder(kp)).append_invoke_contract_function_op(kit.sac, fn, args).build()
        sim = await kit.rpc.simulate_transaction(tx)
        assert sim.error is None and sim.results is not None
        value = scval.to_native(stellar_xdr.SCVal.from_xdr(sim.results[0].xdr))
        if fn == "admin":
            assert value.address == kit.farm  # the farm mints KALE
        else:
            assert value == expected


async def test_wrong_passphrase_is_bad_auth(kit: Kit) -> None:
    kp = await kit.new_account()
    account = await kit.rpc.load_account(kp.public_key)
    tx = (
        TransactionBuilder(account, Network.TESTNET_NETWORK_PASSPHRASE, base_fee=100)
        .append_bump_sequence_op(0)
        .set_timeout(60)
        .build()
    )
    tx.sign(kp)
    sent = await kit.rpc.send_transaction(tx)
    assert sent.status.value == "ERROR"
    assert sent.error_result_xdr is not None
    assert (
        stellar_xdr.TransactionResult.from_xdr(sent.error_result_xdr).result.code.name
        == "txBAD_AUTH"
    )


async def test_storage_maps_are_sorted_as_the_host_sorts_them(kit: Kit) -> None:
    """Map keys in the host's order: byte-for-byte the layout the real contract writes."""
    from stellar_sdk.base_soroban_server import Durability

    entry = await kit.rpc.get_contract_data(
        kit.farm,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
        Durability.PERSISTENT,
    )
    assert entry is not None
    instance = stellar_xdr.LedgerEntryData.from_xdr(entry.xdr).contract_data.val.instance  # type: ignore[union-attr]
    assert instance is not None and instance.storage is not None
    names = [scval.to_native(e.key)[0] for e in instance.storage.sc_map]
    assert names == ["FarmBlock", "HomesteadAsset", "Homesteader"]
    block = instance.storage.sc_map[0].val
    assert block.map is not None
    fields = [scval.to_native(e.key) for e in block.map.sc_map]
    assert fields == sorted(fields) and len(fields) == 10
    sac = await kit.rpc.get_contract_data(
        kit.sac,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
        Durability.PERSISTENT,
    )
    assert sac is not None
    sac_instance = stellar_xdr.LedgerEntryData.from_xdr(sac.xdr).contract_data.val.instance  # type: ignore[union-attr]
    assert sac_instance is not None and sac_instance.storage is not None
    assert (
        sac_instance.executable.type
        == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET
    )
    keys = [scval.to_native(e.key) for e in sac_instance.storage.sc_map]
    assert keys == ["METADATA", ["Admin"], ["AssetInfo"]]  # symbols sort before vectors


async def test_fee_stats(kit: Kit) -> None:
    stats = await kit.rpc.get_fee_stats()
    assert stats.inclusion_fee.min == 100 and stats.soroban_inclusion_fee.p99 == 100
    assert stats.latest_ledger == 1
