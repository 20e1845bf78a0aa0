"""Mangled input never breaks the server: every answer is a JSON-RPC result or error."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stellar_sdk import scval

from .kit import Kit

mutations = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)


async def _call(kit: Kit, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with kit.http.post(kit.server.url, json=body) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
    assert ("result" in answer) != ("error" in answer)
    assert answer.get("error", {}).get("code") != -32603, answer  # never an internal error
    return answer


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=mutations)
async def test_mangled_envelopes_and_keys(kit: Kit, changes: list[tuple[int, int]]) -> None:
    if not hasattr(kit, "_fuzz_seed"):
        farmer = await kit.new_account(trust=True, kale=10_000_000)
        envelope = await kit.prepare_invoke(
            farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(5)]
        )
        kit._fuzz_seed = base64.b64decode(envelope.to_xdr())  # type: ignore[attr-defined]
    raw = bytearray(kit._fuzz_seed)  # type: ignore[attr-defined]
    for position, value in changes:
        raw[position % len(raw)] = value
    mangled = base64.b64encode(bytes(raw)).decode()
    await _call(kit, "simulateTransaction", {"transaction": mangled})
    await _call(kit, "sendTransaction", {"transaction": mangled})
    await _call(kit, "getLedgerEntries", {"keys": [mangled[: 8 + changes[0][0] % 120]]})
    await _call(kit, "getTransaction", {"hash": bytes(raw[:32]).hex()})
    health = await _call(kit, "getHealth", {})
    assert health["result"]["status"] == "healthy"
    await kit.close()
