"""stellar-sdk's high-level contract client against the devnet, and getEvents queries."""

from __future__ import annotations

import asyncio
from typing import Any

from stellar_sdk import scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.contract import ContractClientAsync
from stellar_sdk.soroban_rpc import EventFilter, EventFilterType

from .kit import KALE, Kit, mine


async def _close_when_queued(kit: Kit) -> None:
    for _ in range(600):
        if (await kit.admin("devnet_info"))["pending_transactions"]:
            await kit.close()
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing was submitted")


async def _submit(kit: Kit, assembled: Any) -> Any:
    result, _ = await asyncio.gather(assembled.sign_and_submit(), _close_when_queued(kit))
    return result


async def test_contract_client_farms(kit: Kit) -> None:
    farmer = await kit.new_account(trust=True, kale=10 * KALE)
    pooler = await kit.new_account()
    client = ContractClientAsync(kit.farm, kit.server.url, kit.passphrase)
    try:
        plant = await client.invoke(
            "plant",
            [scval.to_address(farmer.public_key), scval.to_int128(KALE)],
            source=farmer.public_key,
            signer=farmer,
        )
        assert not plant.is_read_call()
        await _submit(kit, plant)
        await kit.close()
        nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 2)
        work = await client.invoke(
            "work",
            [scval.to_address(farmer.public_key), scval.to_bytes(digest), scval.to_uint64(nonce)],
            source=pooler.public_key,
            signer=pooler,
            parse_result_xdr_fn=scval.from_uint32,
        )
        assert work.result() == 2  # the gap, as simulated
        assert await _submit(kit, work) == 2
        await kit.advance(300)
        await kit.plant(pooler, 0)
        harvest = await client.invoke(
            "harvest",
            [scval.to_address(farmer.public_key), scval.to_uint32(0)],
            source=pooler.public_key,
            signer=pooler,
            parse_result_xdr_fn=scval.from_int128,
        )
        reward = await _submit(kit, harvest)
        assert reward > 0
        balances = await kit.balances(farmer.public_key)
        assert balances is not None and balances.kale == 10 * KALE + reward
    finally:
        await client.server.close()


async def test_get_events_filters_and_pages(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=50 * KALE)
    start = (await kit.rpc.get_latest_ledger()).sequence + 1  # after the setup's events
    for _ in range(3):
        tx = (
            (await kit.builder(a))
            .append_invoke_contract_function_op(
                kit.sac,
                "transfer",
                [
                    scval.to_address(a.public_key),
                    scval.to_address(b.public_key),
                    scval.to_int128(KALE),
                ],
            )
            .build()
        )
        prepared = await kit.rpc.prepare_transaction(tx)
        prepared.sign(a)
        await kit.submit(prepared)
    await kit.plant(b, 2 * KALE)
    transfer = scval.to_symbol("transfer").to_xdr()
    from_a = scval.to_address(a.public_key).to_xdr()
    only_transfers = await kit.rpc.get_events(
        start_ledger=start,
        filters=[
            EventFilter(
                event_type=EventFilterType.CONTRACT,
                contract_ids=[kit.sac],
                topics=[[transfer, from_a, "*", "*"]],
            )
        ],
    )
    assert len(only_transfers.events) == 3
    assert all(e.contract_id == kit.sac for e in only_transfers.events)
    assert [
        scval.to_native(stellar_xdr.SCVal.from_xdr(e.value)) for e in only_transfers.events
    ] == [KALE] * 3
    everything = await kit.rpc.get_events(
        start_ledger=start, filters=[EventFilter(topics=[["**"]])]
    )
    # three transfers, the plant's burn and the four fees (from the native asset's contract)
    assert len(everything.events) == 8
    fees = [e for e in everything.events if e.contract_id != kit.sac]
    assert [e.transaction_index for e in fees] == [0] * 4  # charged before any applied
    assert {scval.to_native(stellar_xdr.SCVal.from_xdr(e.topic[0])) for e in fees} == {"fee"}
    none = await kit.rpc.get_events(
        start_ledger=start, filters=[EventFilter(contract_ids=[kit.farm])]
    )
    assert none.events == []  # the farm emits no events of its own
    # Paging with the cursor walks the same events in order.
    first = await kit.rpc.get_events(start_ledger=start, limit=2)
    assert len(first.events) == 2
    rest = await kit.rpc.get_events(cursor=first.cursor, limit=10)
    assert [e.id for e in first.events + rest.events] == [e.id for e in everything.events]
    assert rest.events[-1].transaction_hash


async def test_get_transactions_and_ledgers_page(kit: Kit) -> None:
    keys = await kit.new_accounts(3)
    start = (await kit.rpc.get_latest_ledger()).sequence + 1
    sent = []
    for kp in keys:
        tx = (await kit.builder(kp)).append_bump_sequence_op(0).build()
        tx.sign(kp)
        sent.append(tx.hash_hex())
        await kit.send(tx)
    await kit.close()
    await kit.close()
    page = await kit.rpc.get_transactions(start_ledger=start, limit=2)
    assert [t.transaction_hash for t in page.transactions] == sent[:2]
    rest = await kit.rpc.get_transactions(cursor=page.cursor, limit=10)
    assert [t.transaction_hash for t in rest.transactions] == sent[2:]
    assert all(
        t.status == "SUCCESS" and t.ledger == start for t in page.transactions + rest.transactions
    )
    ledgers = await kit.rpc.get_ledgers(start_ledger=start, limit=1)
    assert [ledger.sequence for ledger in ledgers.ledgers] == [start]
    header = stellar_xdr.LedgerHeaderHistoryEntry.from_xdr(ledgers.ledgers[0].header_xdr)
    assert header.hash.hash.hex() == ledgers.ledgers[0].hash
    following = await kit.rpc.get_ledgers(cursor=ledgers.cursor, limit=5)
    assert [ledger.sequence for ledger in following.ledgers] == [start + 1]


def test_sync_sdk_against_a_devnet_thread() -> None:
    """A devnet on its own thread serves the synchronous SorobanServer (requests)."""
    import requests
    from stellar_sdk import Keypair, SorobanServer

    from kale_devnet import DevnetThread

    from .kit import devnet_config

    runner = DevnetThread(devnet_config())
    server = runner.start()
    try:
        rpc = SorobanServer(server.url)
        assert rpc.get_health().status == "healthy"
        kp = Keypair.random()
        funded = requests.get(f"{server.url}/friendbot", params={"addr": kp.public_key}, timeout=30)
        assert funded.status_code == 200
        runner.call(server.close_ledger)
        assert rpc.load_account(kp.public_key).sequence == 2 << 32
        rpc.close()
    finally:
        runner.stop()
