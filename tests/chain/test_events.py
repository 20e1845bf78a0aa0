"""Reading the KALE asset's token events (`read_token_events`) from the devnet."""

from __future__ import annotations

import pytest
from stellar_sdk import Asset, MuxedAccount, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import EventInfo

from kale_devnet.network import homesteader_keypair
from kalepool.chain import (
    ChainDataError,
    ChainUnavailableError,
    EventPage,
    EventsOutOfRangeError,
    TokenEvent,
    build_payment,
    build_plant,
    read_token_events,
    sign,
)
from kalepool.chain.events import cursor_ledger, decode_event

from .stage import KALE, Stage, open_stage


def movements(page: EventPage) -> list[tuple[str, str | None, str | None, int]]:
    return [(e.kind, e.from_address, e.to_address, e.amount) for e in page.events]


async def test_reads_every_kind_of_kale_movement(stage: Stage) -> None:
    client = stage.client
    a, b = await stage.accounts(2, trust=True)
    start = (await client.latest_ledger()).sequence + 1
    await stage.friendbot(a.public_key, 50 * KALE)  # from the issuer: a mint
    await stage.close()
    issuer = homesteader_keypair().public_key
    farm = client.config.farm_contract_id
    muxed = MuxedAccount(b.public_key, 77).account_muxed
    assert muxed is not None
    outcomes = []
    for destination, amount in (
        (b.public_key, 3 * KALE),  # a classic payment between holders
        (muxed, 2 * KALE),  # to a sub-account of b: the id is in the data, b in the topics
        (issuer, KALE),  # back to the issuer: a burn
        (farm, KALE),  # to a contract: the asset contract's transfer
    ):
        outcomes.append(
            await stage.run(await build_payment(client, a.public_key, destination, amount), a)
        )
    planted = await stage.run(await build_plant(client, a.public_key, 4 * KALE), a)  # the stake
    assert all(o.ok for o in [*outcomes, planted])

    page = await read_token_events(client, start_ledger=start)
    assert movements(page) == [
        ("mint", None, a.public_key, 50 * KALE),
        ("transfer", a.public_key, b.public_key, 3 * KALE),
        ("transfer", a.public_key, b.public_key, 2 * KALE),
        ("burn", a.public_key, None, KALE),
        ("transfer", a.public_key, farm, KALE),
        ("burn", a.public_key, None, 4 * KALE),
    ]
    assert [e.tx_hash for e in page.events[1:]] == [o.hash for o in [*outcomes, planted]]
    assert [e.ledger for e in page.events[1:]] == [o.ledger for o in [*outcomes, planted]]
    assert {e.contract_id for e in page.events} == {client.config.sac_contract_id}
    assert [e.id for e in page.events] == sorted(e.id for e in page.events)
    latest = await client.latest_ledger()
    assert page.latest_ledger == latest.sequence and page.oldest_ledger == 1
    assert page.cursor is not None and cursor_ledger(page.cursor) == latest.sequence

    # Caught up: nothing more, and the cursor stays where it is.
    again = await read_token_events(client, cursor=page.cursor)
    assert again.events == [] and again.cursor == page.cursor

    # The same reader follows another asset's contract: XLM moved by the payments' fees is
    # not a token movement (fee events are skipped), the friendbot's top-up is.
    xlm = await read_token_events(
        client,
        start_ledger=start,
        contract_id=Asset.native().contract_id(client.config.network_passphrase),
    )
    assert [e.kind for e in xlm.events] == ["transfer"]
    assert xlm.events[0].to_address == a.public_key


async def test_a_follower_pages_through_many_ledgers_losing_and_repeating_nothing() -> None:
    # Small scan windows and pages, so reads end on both limits many times over.
    async with open_stage(event_scan_ledgers=4) as stage:
        client = stage.client
        holders = await stage.accounts(3, kale=1000 * KALE)
        first = (await client.latest_ledger()).sequence + 1
        expected: list[tuple[str, int]] = []
        seen: list[TokenEvent] = []
        cursor: str | None = None
        empty_pages = 0

        async def follow() -> None:
            """Read until caught up, as the books' follower does, storing the cursor."""
            nonlocal cursor, empty_pages
            while True:
                page = await (
                    read_token_events(client, cursor=cursor, limit=2)
                    if cursor is not None
                    else read_token_events(client, start_ledger=first, limit=2)
                )
                assert len(page.events) <= 2
                seen.extend(page.events)
                cursor = page.cursor
                if not page.events:
                    empty_pages += 1
                    return

        for ledger in range(30):
            for j, payer in enumerate(holders):
                if (ledger + j) % 4 == 0:  # some ledgers busy, some quiet
                    continue
                amount = ledger * 10 + j + 1
                payee = holders[(j + 1) % 3].public_key
                signed = sign(await build_payment(client, payer.public_key, payee, amount), payer)
                sent = await client.rpc.send_transaction(signed.envelope_xdr)
                assert sent.status.value == "PENDING", sent
                expected.append((signed.hash, amount))
            await stage.close()
            if ledger % 7 == 3:
                await follow()
        await stage.close(9)  # quiet ledgers: more than two scan windows without events
        await follow()

        assert [(e.tx_hash, e.amount) for e in seen] == expected
        assert len({e.id for e in seen}) == len(seen)
        assert [e.id for e in seen] == sorted(e.id for e in seen)
        assert empty_pages == 5  # every follow ended caught up, on an empty page
        assert cursor is not None
        assert cursor_ledger(cursor) == (await client.latest_ledger()).sequence


async def test_a_start_outside_the_servers_window_is_refused() -> None:
    async with open_stage(history_ledgers=5) as stage:
        client = stage.client
        await stage.accounts(1, kale=10 * KALE)
        page = await read_token_events(client, start_ledger=1)
        assert [e.kind for e in page.events] == ["mint"]
        await stage.close(6)
        health = await client.rpc.get_health()
        for kwargs in ({"start_ledger": 1}, {"cursor": page.cursor}):
            with pytest.raises(EventsOutOfRangeError) as err:
                await read_token_events(client, **kwargs)  # type: ignore[arg-type]
            assert (err.value.oldest_ledger, err.value.latest_ledger) == (
                health.oldest_ledger,
                health.latest_ledger,
            )
            assert err.value.start_ledger < health.oldest_ledger
        ahead = health.latest_ledger + 1
        with pytest.raises(EventsOutOfRangeError) as err:
            await read_token_events(client, start_ledger=ahead)
        assert err.value.start_ledger == ahead > err.value.latest_ledger


async def test_bad_arguments_and_an_unreachable_server(stage: Stage) -> None:
    client = stage.client
    with pytest.raises(ValueError, match="exactly one"):
        await read_token_events(client)
    with pytest.raises(ValueError, match="exactly one"):
        await read_token_events(client, start_ledger=1, cursor="0000000004294967296-0000000000")
    for bad in ({"cursor": "12"}, {"start_ledger": 0}, {"start_ledger": 1, "limit": 0}):
        with pytest.raises(ValueError):
            await read_token_events(client, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a contract id"):
        await read_token_events(client, start_ledger=1, contract_id="G" * 56)
    # Transport failures are retried, then reported.
    await stage.faults(fail_next={"getEvents": 2}, error_kind="http")
    assert (await read_token_events(client, start_ledger=1)).events == []
    await stage.faults(fail_next={"getEvents": 100}, error_kind="rpc")
    with pytest.raises(ChainUnavailableError, match="getEvents"):
        await read_token_events(client, start_ledger=1)


# ---- decoding, on events as a server could send them ------------------------------------

SAC = "CAAVU2UQJLMZ3GUZFM56KVNHLPA3ZSSNR4VP2U53YBXFD2GI3QLIVHZZ"
G1 = "GBQHTQ7NTSKHVTSVM6EHUO3TU4P4BK2TAAII25V2TT2Q6OWXUJWEKALE"
G2 = "GBDVX4VELCDSQ54KQJYTNHXAHFLBCA77ZY2USQBM4CSHTTV7DME7KALE"


def info(topics: list[stellar_xdr.SCVal], value: stellar_xdr.SCVal) -> EventInfo:
    return EventInfo.model_validate(
        {
            "type": "contract",
            "ledger": 7,
            "ledgerClosedAt": "2026-01-01T00:00:00Z",
            "contractId": SAC,
            "id": f"{7 << 32 | 1 << 12:019d}-0000000003",
            "topic": [t.to_xdr() for t in topics],
            "value": value.to_xdr(),
            "operationIndex": 0,
            "transactionIndex": 1,
            "txHash": "AB" * 32,
        }
    )


def test_decoding_shapes() -> None:
    asset = scval.to_string(f"KALE:{G2}")
    sym = scval.to_symbol
    muxed = MuxedAccount(G2, 9).account_muxed
    assert muxed is not None
    amount_map = scval.to_map(
        {sym("amount"): scval.to_int128(5), sym("to_muxed_id"): scval.to_uint64(9)}
    )
    event = decode_event(
        info([sym("transfer"), scval.to_address(G1), scval.to_address(muxed), asset], amount_map)
    )
    assert event == TokenEvent(
        id=f"{7 << 32 | 1 << 12:019d}-0000000003",
        ledger=7,
        tx_hash="ab" * 32,
        contract_id=SAC,
        kind="transfer",
        from_address=G1,
        to_address=G2,  # a muxed address is its account
        amount=5,
    )
    clawback = decode_event(
        info([sym("clawback"), scval.to_address(G1), asset], scval.to_int128(2))
    )
    assert clawback is not None and (clawback.from_address, clawback.to_address) == (G1, None)
    # Other kinds and shapes are not movements: skipped.
    for topics in (
        [sym("approve"), scval.to_address(G1), scval.to_address(G2), asset],
        [sym("mint"), scval.to_address(G2), scval.to_address(G1), asset],  # pre-23 admin topic
        [sym("fee"), scval.to_address(G1)],
        [scval.to_string("transfer")],
        [],
    ):
        assert decode_event(info(topics, scval.to_int128(1))) is None
    # A movement the books cannot read is an error, not a skip.
    for value in (scval.to_uint64(1), scval.to_map({sym("to_muxed_id"): scval.to_uint64(1)})):
        with pytest.raises(ChainDataError, match="burn event"):
            decode_event(info([sym("burn"), scval.to_address(G1), asset], value))
    with pytest.raises(ChainDataError, match="expected an address"):
        decode_event(info([sym("mint"), asset, asset], scval.to_int128(1)))
