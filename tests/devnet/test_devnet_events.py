"""Protocol 23 token events (CAP-67) from classic operations and the asset contract, and
getEvents with Stellar RPC's filters, scan window and cursors, through stellar-sdk alone."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from stellar_sdk import Asset, Keypair, MuxedAccount, StrKey, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import (
    EventFilter,
    EventFilterType,
    EventInfo,
    GetTransactionResponse,
    GetTransactionStatus,
)

from kale_devnet import DevnetServer, identity
from kale_devnet.network import homesteader_keypair

from .kit import KALE, XLM, Kit, devnet_config

Shape = tuple[Any, ...]


def native(raw: str | stellar_xdr.SCVal) -> Any:
    val = stellar_xdr.SCVal.from_xdr(raw) if isinstance(raw, str) else raw
    out = scval.to_native(val)
    return out.address if hasattr(out, "address") else out


def shape(topics: Sequence[str | stellar_xdr.SCVal], value: str | stellar_xdr.SCVal) -> Shape:
    """An event as plain values: (name, addresses..., asset name, data)."""
    return (*(native(t) for t in topics), native(value))


def meta_events(got: GetTransactionResponse) -> list[list[tuple[str, Shape]]]:
    """Per operation, (contract id, shape) of every event in the TransactionMeta (v4)."""
    assert got.result_meta_xdr is not None
    meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
    assert meta.v4 is not None
    out = []
    for op in meta.v4.operations:
        events = []
        for e in op.events:
            assert e.contract_id is not None and e.body.v0 is not None
            cid = StrKey.encode_contract(e.contract_id.contract_id.hash)
            events.append((cid, shape(e.body.v0.topics, e.body.v0.data)))
        out.append(events)
    return out


def rpc_shapes(events: Sequence[EventInfo]) -> list[tuple[str, Shape]]:
    return [(e.contract_id, shape(e.topic, e.value)) for e in events]


def token_events(events: Sequence[EventInfo]) -> list[EventInfo]:
    """Without the fee events every transaction has."""
    return [e for e in events if native(e.topic[0]) != "fee"]


def kale_name(kit: Kit) -> str:
    return f"KALE:{kit.asset.issuer}"


async def test_classic_kale_payment_mint_and_burn(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True)
    name = kale_name(kit)

    # Friendbot's `kale=` pays from the issuer: a mint, next to the XLM top-up's transfer.
    status, body = await kit.friendbot(a.public_key, 50 * KALE)
    assert status == 200, body
    await kit.close()
    funded = await kit.rpc.get_transaction(body["hash"])
    native_sac = Asset.native().contract_id(kit.passphrase)
    ops = meta_events(funded)
    root = identity().friendbot
    assert ops == [
        [(native_sac, ("transfer", root, a.public_key, "native", 10_000 * XLM))],
        [(kit.sac, ("mint", a.public_key, name, 50 * KALE))],
    ]

    # A payment between holders is a transfer; to the issuer a burn; both in the meta and
    # served by getEvents, from the asset's contract id, in application order.
    start = (await kit.rpc.get_latest_ledger()).sequence + 1
    pay = (await kit.builder(a)).append_payment_op(b.public_key, kit.asset, "3").build()
    pay.sign(a)
    paid = await kit.submit(pay)
    assert meta_events(paid) == [
        [(kit.sac, ("transfer", a.public_key, b.public_key, name, 3 * KALE))]
    ]
    back = (await kit.builder(b)).append_payment_op(kit.asset.issuer, kit.asset, "1").build()
    back.sign(b)
    burned = await kit.submit(back)
    assert meta_events(burned) == [[(kit.sac, ("burn", b.public_key, name, KALE))]]
    # getTransaction lists them per operation as well.
    assert burned.events is not None and burned.events.contract_events_xdr is not None
    (burn_xdr,) = burned.events.contract_events_xdr
    assert [stellar_xdr.ContractEvent.from_xdr(e).body.v0 is not None for e in burn_xdr] == [True]

    served = await kit.rpc.get_events(
        start_ledger=start, filters=[EventFilter(contract_ids=[kit.sac])]
    )
    assert rpc_shapes(served.events) == [
        (kit.sac, ("transfer", a.public_key, b.public_key, name, 3 * KALE)),
        (kit.sac, ("burn", b.public_key, name, KALE)),
    ]
    assert [e.transaction_hash for e in served.events] == [
        paid.transaction_hash,
        burned.transaction_hash,
    ]
    first = served.events[0]
    assert (first.ledger, first.transaction_index, first.operation_index) == (paid.ledger, 1, 0)
    assert first.id == f"{(paid.ledger << 32) | (1 << 12):019d}-{0:010d}"

    # The issuer paying itself moves nothing and is still a transfer.
    issuer = homesteader_keypair()
    self_pay = (
        (await kit.builder(issuer)).append_payment_op(issuer.public_key, kit.asset, "2").build()
    )
    self_pay.sign(issuer)
    assert meta_events(await kit.submit(self_pay)) == [
        [(kit.sac, ("transfer", issuer.public_key, issuer.public_key, name, 2 * KALE))]
    ]


async def test_native_create_account_merge_and_self_payment(kit: Kit) -> None:
    (a,) = await kit.new_accounts(1)
    native_sac = Asset.native().contract_id(kit.passphrase)
    fresh = Keypair.random()
    create = (await kit.builder(a)).append_create_account_op(fresh.public_key, "20").build()
    create.sign(a)
    created = await kit.submit(create)
    assert meta_events(created) == [
        [(native_sac, ("transfer", a.public_key, fresh.public_key, "native", 20 * XLM))]
    ]
    # XLM paid to oneself is a transfer to self (stellar-core emits it before moving nothing).
    self_pay = (await kit.builder(a)).append_payment_op(a.public_key, Asset.native(), "1").build()
    self_pay.sign(a)
    assert meta_events(await kit.submit(self_pay)) == [
        [(native_sac, ("transfer", a.public_key, a.public_key, "native", XLM))]
    ]
    # A merge transfers the whole balance left after the fee.
    before = await kit.balances(fresh.public_key)
    assert before is not None
    merge = (await kit.builder(fresh)).append_account_merge_op(a.public_key).build()
    merge.sign(fresh)
    merged = await kit.submit(merge)
    assert merged.status == GetTransactionStatus.SUCCESS
    moved = before.xlm - 100
    assert meta_events(merged) == [
        [(native_sac, ("transfer", fresh.public_key, a.public_key, "native", moved))]
    ]
    # getEvents serves the native asset's events under its own contract id.
    served = await kit.rpc.get_events(
        start_ledger=created.ledger,
        filters=[EventFilter(contract_ids=[native_sac], topics=[["*", "*", "*", "*"]])],
    )
    assert [native(e.topic[0]) for e in served.events] == ["transfer"] * 3


async def test_muxed_destinations_and_memos_name_the_sub_account(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=20 * KALE)
    name = kale_name(kit)
    muxed = MuxedAccount(b.public_key, 2**63 + 5)
    tx = (
        (await kit.builder(a))
        .append_payment_op(muxed, kit.asset, "1")
        .append_payment_op(kit.asset.issuer, kit.asset, "1")
        .build()
    )
    tx.sign(a)
    ops = meta_events(await kit.submit(tx))
    # The topics carry the account; the id goes into the data. A burn has no destination.
    assert ops == [
        [
            (
                kit.sac,
                (
                    "transfer",
                    a.public_key,
                    b.public_key,
                    name,
                    {"amount": KALE, "to_muxed_id": 2**63 + 5},
                ),
            )
        ],
        [(kit.sac, ("burn", a.public_key, name, KALE))],
    ]
    # A memo names the sub-account of a plain destination (and a muxed id wins over it).
    digest = hashlib.sha256(b"deposit").digest()
    for memo, expected in (("text", "farmer 7"), ("id", 99), ("hash", digest)):
        builder = (await kit.builder(a)).append_payment_op(b.public_key, kit.asset, "1")
        builder.append_payment_op(muxed, kit.asset, "1")
        if memo == "text":
            builder.add_text_memo("farmer 7")
        elif memo == "id":
            builder.add_id_memo(99)
        else:
            builder.add_hash_memo(digest)
        tx = builder.build()
        tx.sign(a)
        ops = meta_events(await kit.submit(tx))
        assert [event[1][-1] for (event,) in ops] == [
            {"amount": KALE, "to_muxed_id": expected},
            {"amount": KALE, "to_muxed_id": 2**63 + 5},
        ]


async def test_asset_contract_calls_name_issuer_movements(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=20 * KALE)
    issuer = homesteader_keypair()
    name = kale_name(kit)

    async def transfer(source: Keypair, to: str, amount: int) -> GetTransactionResponse:
        args = [scval.to_address(source.public_key), scval.to_address(to), scval.to_int128(amount)]
        got = await kit.invoke(source, "transfer", args, contract=kit.sac)
        assert got.status == GetTransactionStatus.SUCCESS
        return got

    assert meta_events(await transfer(issuer, a.public_key, KALE)) == [
        [(kit.sac, ("mint", a.public_key, name, KALE))]
    ]
    assert meta_events(await transfer(a, issuer.public_key, KALE)) == [
        [(kit.sac, ("burn", a.public_key, name, KALE))]
    ]
    muxed = MuxedAccount(b.public_key, 7).account_muxed
    assert muxed is not None
    paid = await transfer(a, muxed, 2 * KALE)
    assert meta_events(paid) == [
        [
            (
                kit.sac,
                (
                    "transfer",
                    a.public_key,
                    b.public_key,
                    name,
                    {"amount": 2 * KALE, "to_muxed_id": 7},
                ),
            )
        ]
    ]
    after = await kit.balances(b.public_key)
    assert after is not None and after.kale == 22 * KALE


async def test_failed_transactions_emit_only_their_fee(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=5 * KALE)
    tx = (
        (await kit.builder(a))
        .append_payment_op(b.public_key, kit.asset, "1")
        .append_payment_op(b.public_key, kit.asset, "10")  # more than a holds: all or nothing
        .build()
    )
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.status == GetTransactionStatus.FAILED
    assert meta_events(got) == []
    served = await kit.rpc.get_events(start_ledger=got.ledger)
    assert rpc_shapes(served.events) == [
        (Asset.native().contract_id(kit.passphrase), ("fee", a.public_key, 200))
    ]
    fee = served.events[0]
    assert fee.transaction_hash == got.transaction_hash
    assert (fee.transaction_index, fee.operation_index) == (0, 0)  # before any applied
    assert fee.id == f"{got.ledger << 32:019d}-{0:010d}"


async def test_get_events_filters(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=20 * KALE)
    start = (await kit.rpc.get_latest_ledger()).sequence + 1
    for amount, dest in (("1", b.public_key), ("2", kit.asset.issuer), ("3", b.public_key)):
        tx = (await kit.builder(a)).append_payment_op(dest, kit.asset, amount).build()
        tx.sign(a)
        await kit.submit(tx)
    transfer = scval.to_symbol("transfer").to_xdr()
    burn = scval.to_symbol("burn").to_xdr()
    to_b = scval.to_address(b.public_key).to_xdr()

    async def amounts(*topics: list[str], contract: str | None = None) -> list[int]:
        got = await kit.rpc.get_events(
            start_ledger=start,
            filters=[
                EventFilter(
                    event_type=EventFilterType.CONTRACT,
                    contract_ids=[contract or kit.sac],
                    topics=list(topics),
                )
            ],
        )
        values = [native(e.value) for e in got.events]
        return [v if isinstance(v, int) else v["amount"] for v in values]

    assert await amounts() == [KALE, 2 * KALE, 3 * KALE]
    assert await amounts([transfer, "*", "*", "*"]) == [KALE, 3 * KALE]
    assert await amounts([transfer, "*", to_b, "*"]) == [KALE, 3 * KALE]
    assert await amounts([transfer, "*", "*"]) == []  # without `**` the length must match
    assert await amounts([transfer, "**"], [burn, "**"]) == [KALE, 2 * KALE, 3 * KALE]
    assert await amounts([burn, "*", "*"]) == [2 * KALE]
    assert await amounts(["**"]) == [KALE, 2 * KALE, 3 * KALE]
    assert await amounts([transfer, "*", "*", "*", "**"]) == [KALE, 3 * KALE]
    native_sac = Asset.native().contract_id(kit.passphrase)
    assert len(await amounts([scval.to_symbol("fee").to_xdr(), "*"], contract=native_sac)) == 3

    async def refused(**filters: Any) -> SorobanRpcErrorResponse:
        with pytest.raises(SorobanRpcErrorResponse) as err:
            await kit.rpc.get_events(start_ledger=start, filters=[EventFilter(**filters)])
        return err.value

    for bad in (
        {"topics": [["**", transfer]]},
        {"topics": [[transfer, "*", "*", "*", "*"]]},
        {"event_type": EventFilterType.DIAGNOSTIC},
        {"contract_ids": [a.public_key]},
        {"topics": [[transfer]] * 6},
    ):
        err = await refused(**bad)
        assert err.code == -32602 and err.message.startswith("filter 1 invalid"), (bad, err)


async def test_get_events_cursor_window_and_retention() -> None:
    config = devnet_config(history_ledgers=8, event_scan_ledgers=3)
    async with DevnetServer(config) as server, aiohttp.ClientSession() as http:
        kit = Kit(server, http)
        try:
            await _cursor_window_and_retention(kit)
        finally:
            await kit.aclose()


def max_cursor(ledger: int) -> str:
    """Stellar RPC's cursor for the end of a scan window: the largest id in its last ledger."""
    return f"{(ledger << 32) | 0xFFFFFFFF:019d}-{2**32 - 1:010d}"


async def _cursor_window_and_retention(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True, kale=20 * KALE)
    minted = (await kit.rpc.get_latest_ledger()).sequence  # the friendbot's mints
    await kit.close(3)
    latest = minted + 3
    only_kale = [EventFilter(contract_ids=[kit.sac])]
    # A request scans three ledgers at most: the page ends there, short of the limit, and
    # its cursor points at the end of the window, not at the latest ledger.
    first = await kit.rpc.get_events(start_ledger=minted - 1, filters=only_kale)
    assert [native(e.topic[0]) for e in first.events] == ["mint", "mint"]
    assert first.cursor == max_cursor(minted + 1)
    # An empty page still has a cursor; passed back, nothing comes twice.
    rest = await kit.rpc.get_events(cursor=first.cursor, filters=only_kale)
    assert rest.events == [] and rest.cursor == max_cursor(latest)
    again = await kit.rpc.get_events(cursor=rest.cursor, filters=only_kale)
    assert again.events == [] and again.cursor == rest.cursor
    tx = (await kit.builder(a)).append_payment_op(b.public_key, kit.asset, "1").build()
    tx.sign(a)
    paid = await kit.submit(tx)
    new = await kit.rpc.get_events(cursor=rest.cursor, filters=only_kale)
    assert [e.transaction_hash for e in new.events] == [paid.transaction_hash]
    assert new.cursor == max_cursor(paid.ledger)
    # A full page's cursor is its last event's id.
    page = await kit.rpc.get_events(start_ledger=minted, filters=only_kale, limit=1)
    assert len(page.events) == 1 and page.cursor == page.events[0].id
    # Once the ledgers fall out of the retention window, a start or cursor there is refused.
    await kit.close(8)
    health = await kit.rpc.get_health()
    assert health.oldest_ledger == health.latest_ledger - 7 == paid.ledger + 1
    for kwargs in ({"start_ledger": paid.ledger}, {"cursor": new.cursor}):
        with pytest.raises(SorobanRpcErrorResponse) as err:
            await kit.rpc.get_events(filters=only_kale, **kwargs)
        assert err.value.code == -32600
        assert err.value.message == (
            f"startLedger must be within the ledger range: {health.oldest_ledger} - "
            f"{health.latest_ledger}"
        )
    with pytest.raises(SorobanRpcErrorResponse) as err:
        await kit.rpc.get_events(start_ledger=health.latest_ledger + 1)
    assert err.value.code == -32600
