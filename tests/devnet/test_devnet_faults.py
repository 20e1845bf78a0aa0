"""Fault injection: failed calls, latency, lost sendTransaction answers, stalls."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from stellar_sdk import Asset
from stellar_sdk.exceptions import BadResponseError, ConnectionError, SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from kale_devnet import DevnetServer, FaultConfig

from .kit import XLM, AdminError, Kit, devnet_config


async def test_fail_next_call_http_and_rpc(kit: Kit) -> None:
    await kit.faults(fail_next={"getLatestLedger": 1})
    with pytest.raises(BadResponseError) as err:
        await kit.rpc.get_latest_ledger()
    assert err.value.status == 503
    assert (await kit.rpc.get_latest_ledger()).sequence == 1  # only the next one failed
    await kit.faults(fail_next={"getHealth": 2}, error_kind="rpc")
    for _ in range(2):
        with pytest.raises(SorobanRpcErrorResponse) as rpc_err:
            await kit.rpc.get_health()
        assert rpc_err.value.code == -32603
    assert (await kit.rpc.get_health()).status == "healthy"
    # Admin methods are never faulted.
    await kit.faults(error_rate={"*": 1.0})
    await kit.close()
    with pytest.raises(SorobanRpcErrorResponse):
        await kit.rpc.get_network()
    await kit.faults(error_rate={})
    assert (await kit.rpc.get_network()).protocol_version == 23


async def test_error_rate_is_seeded(kit: Kit) -> None:
    async def outcomes() -> list[bool]:
        await kit.faults(error_rate={"getHealth": 0.5}, error_kind="rpc", seed=7)
        seen = []
        for _ in range(20):
            try:
                await kit.rpc.get_health()
                seen.append(True)
            except SorobanRpcErrorResponse:
                seen.append(False)
        return seen

    first = await outcomes()
    assert True in first and False in first
    assert await outcomes() == first  # the same seed, the same faults


async def test_latency(kit: Kit) -> None:
    await kit.faults(latency_ms={"getNetwork": 300})
    started = time.monotonic()
    await kit.rpc.get_network()
    assert time.monotonic() - started >= 0.3
    await kit.faults(latency_ms={})


@pytest.mark.parametrize("mode", ["disconnect", "http"])
async def test_lost_send_response_still_applies_once(kit: Kit, mode: str) -> None:
    a, b = await kit.new_accounts(2)
    before = await kit.balances(b.public_key)
    assert before is not None
    await kit.faults(lose_next_sends=1, lost_send_mode=mode)
    tx = (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "7").build()
    tx.sign(a)
    expected = ConnectionError if mode == "disconnect" else BadResponseError
    with pytest.raises(expected):
        await kit.rpc.send_transaction(tx)
    # The client cannot know; resubmitting the same envelope is safe.
    again = await kit.rpc.send_transaction(tx)
    assert again.status == SendTransactionStatus.DUPLICATE
    await kit.close()
    assert (await kit.rpc.get_transaction(tx.hash_hex())).status == GetTransactionStatus.SUCCESS
    after = await kit.balances(b.public_key)
    assert after is not None and after.xlm == before.xlm + 7 * XLM


async def test_stalled_ledgers_and_bad_settings(kit: Kit) -> None:
    await kit.faults(stalled=True)
    with pytest.raises(AdminError, match="stalled"):
        await kit.close()
    await kit.faults(stalled=False)
    assert (await kit.close())["sequence"] == 2
    for bad in (
        {"error_rate": {"getHealth": 2}},
        {"nonsense": 1},
        {"lost_send_mode": "x"},
        {"stall_seconds": -1},
    ):
        with pytest.raises(AdminError):
            await kit.faults(**bad)
    current = await kit.admin("devnet_getFaults")
    assert current["error_rate"] == {} and current["stalled"] is False
    async with kit.http.post(
        f"{kit.server.url}/devnet/faults", json={"latency_ms": {"*": -5}}
    ) as resp:
        assert resp.status == 400
    async with kit.http.post(
        f"{kit.server.url}/devnet/faults", json={"fail_next": {"getHealth": 1}}
    ) as resp:
        assert resp.status == 200
    with pytest.raises(BadResponseError):
        await kit.rpc.get_health()


async def test_faults_set_at_start_and_auto_close_stall() -> None:
    config = devnet_config(
        manual=False, ledger_seconds=1, faults=FaultConfig(fail_next={"getNetwork": 1})
    )
    async with DevnetServer(config) as server, aiohttp.ClientSession() as http:
        kit = Kit(server, http)
        try:
            with pytest.raises(BadResponseError):
                await kit.rpc.get_network()
            start = (await kit.rpc.get_latest_ledger()).sequence
            await _wait_for(kit, start + 2)
            await kit.faults(stalled=True)
            stalled_at = (await kit.rpc.get_latest_ledger()).sequence
            await asyncio.sleep(2.5)
            assert (await kit.rpc.get_latest_ledger()).sequence <= stalled_at + 1
            await kit.faults(stalled=False)
            await _wait_for(kit, stalled_at + 2)
            # Friendbot waits for its transaction to apply when ledgers close by themselves.
            from stellar_sdk import Keypair

            kp = Keypair.random()
            status, body = await kit.friendbot(kp.public_key)
            assert status == 200 and body["successful"] is True
            assert (await kit.balances(kp.public_key)) is not None
        finally:
            await kit.aclose()


async def _wait_for(kit: Kit, seq: int) -> None:
    for _ in range(200):
        if (await kit.rpc.get_latest_ledger()).sequence >= seq:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"ledger {seq} never closed")
