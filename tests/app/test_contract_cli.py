"""`kale-pool contract status` and `kale-pool contract ack HASH`, run as an operator runs
them (the installed command, a real subprocess) against a real pool on the devnet."""

from __future__ import annotations

from kale_devnet.network import identity
from kalepool.settings import Settings
from kalepool.v1 import pool_pb2
from tests.pool.conftest import PoolStage

from .test_commands import kale_pool


async def test_contract_status_and_ack(pool: PoolStage, operator_settings: Settings) -> None:
    genesis = identity().farm_wasm_hash.hex()
    ran = await kale_pool(operator_settings, "contract", "status")
    assert ran.code == 0, ran.err
    assert "plants:        go out" in ran.out and f"code hash:     {genesis}" in ran.out
    assert f"acknowledged:  {genesis} (by pool," in ran.out

    upgraded = (await pool.stage.admin("devnet_upgradeFarm"))["wasmHash"]
    ran = await kale_pool(operator_settings, "contract", "status")
    assert ran.code == 0, ran.err
    assert "plants:        HELD since " in ran.out
    assert f"the farm contract changed (code hash {upgraded}" in ran.out
    assert f"kale-pool contract ack {upgraded}" in ran.out

    # The old hash, or a hash that is not one: one line, a non-zero exit, nothing recorded.
    ran = await kale_pool(operator_settings, "contract", "ack", genesis)
    assert ran.code != 0 and ran.out == ""
    assert f"the farm runs code {upgraded}, not {genesis}" in ran.err
    assert "(failed_precondition)" in ran.err and len(ran.err.strip().splitlines()) == 1
    ran = await kale_pool(operator_settings, "contract", "ack", "not-a-hash")
    assert ran.code != 0 and "64 hex digits (invalid_argument)" in ran.err
    assert await pool.count("contract_acks") == 1

    ran = await kale_pool(operator_settings, "contract", "ack", upgraded)
    assert ran.code == 0, ran.err
    assert f"farm code {upgraded} acknowledged" in ran.out and "go out" in ran.out
    status = await pool.operator().GetContractStatus(pool_pb2.GetContractStatusRequest())
    assert status.status.plants_allowed and status.status.acknowledged_wasm_hash == upgraded

    await pool.stage.admin("devnet_setFarmPaused", paused=True)
    ran = await kale_pool(operator_settings, "contract", "status")
    assert "paused:        yes" in ran.out and "HELD since" in ran.out
    assert "the farm is paused" in ran.out
