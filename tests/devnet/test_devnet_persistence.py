"""--state: the chain survives a restart, answers as before, and refuses damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from stellar_sdk import Asset, scval
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from kale_devnet import DevnetServer
from kale_devnet.persist import StateFileError

from .kit import KALE, Kit, devnet_config, mine


async def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    config = devnet_config(state_path=state)
    async with DevnetServer(config) as server, aiohttp.ClientSession() as http:
        kit = Kit(server, http)
        farmer = await kit.new_account(trust=True, kale=20 * KALE)
        pooler, other = await kit.new_accounts(2)
        planted = await kit.plant(farmer, 5 * KALE)
        await kit.close()
        nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 2)
        worked = await kit.work(pooler, farmer.public_key, digest, nonce)
        assert worked.status == GetTransactionStatus.SUCCESS
        # A transaction still queued at shutdown applies after the restart.
        queued = (
            (await kit.builder(other))
            .append_payment_op(pooler.public_key, Asset.native(), "1")
            .build()
        )
        queued.sign(other)
        assert (await kit.send(queued)).status == SendTransactionStatus.PENDING
        latest = await kit.rpc.get_latest_ledger()
        balances = await kit.balances(farmer.public_key)
        pail = await kit.pail(farmer.public_key, 0)
        block = await kit.block(0)
        instance = await kit.farm_instance()
        events = await kit.rpc.get_events(start_ledger=2)
        await kit.aclose()
    assert state.exists() and not state.with_name(state.name + ".tmp").exists()
    assert json.loads(state.read_text())["latest"] == latest.sequence

    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        again = await kit.rpc.get_latest_ledger()
        assert (again.sequence, again.id, again.close_time) == (
            latest.sequence,
            latest.id,
            latest.close_time,
        )
        assert await kit.balances(farmer.public_key) == balances
        assert await kit.pail(farmer.public_key, 0) == pail
        assert await kit.block(0) == block
        assert await kit.farm_instance() == instance
        old = await kit.rpc.get_transaction(planted.transaction_hash)
        assert (
            old.status == GetTransactionStatus.SUCCESS
            and old.result_meta_xdr == planted.result_meta_xdr
        )
        assert (await kit.rpc.get_events(start_ledger=2)).events == events.events
        # The queue survived: a resend is a duplicate, and the next close applies it once.
        assert (await kit.send(queued)).status == SendTransactionStatus.DUPLICATE
        closed = await kit.close()
        assert (
            closed["applied"] == [queued.hash_hex()] and closed["sequence"] == latest.sequence + 1
        )
        # The farm keeps farming: a second block opens and the pail is harvested.
        await kit.advance(300)
        await kit.plant(pooler, 0)
        harvested = await kit.harvest(pooler, farmer.public_key, 0)
        assert harvested.status == GetTransactionStatus.SUCCESS
        await kit.aclose()


async def test_damaged_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    state.write_text("{not json")
    with pytest.raises(StateFileError):
        DevnetServer(devnet_config(state_path=state))
    state.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StateFileError, match="not a kale-pool devnet state"):
        DevnetServer(devnet_config(state_path=state))
    assert json.loads(state.read_text()) == {"format": "something else"}  # left as it was
    assert scval  # keep the import used
