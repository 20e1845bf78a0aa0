"""The farm's code hash and pause flag, read by the chain client from the instance entry
(`read_farm`, and `current_block` that every plant check makes), on the devnet."""

from __future__ import annotations

from kale_devnet.network import identity
from kalepool.chain import current_block, read_farm

from .stage import Stage


async def test_read_farm_gives_the_code_hash_and_pause_flag(stage: Stage) -> None:
    farm = await read_farm(stage.client)
    assert farm.wasm_hash == identity().farm_wasm_hash and farm.paused is False

    upgraded = await stage.admin("devnet_upgradeFarm")
    await stage.admin("devnet_setFarmPaused", paused=True)
    farm = await read_farm(stage.client)
    assert farm.wasm_hash is not None and farm.wasm_hash.hex() == upgraded["wasmHash"]
    assert farm.paused is True
    # The plant check's own read carries both, with no read more.
    current = await current_block(stage.client)
    assert current.wasm_hash == farm.wasm_hash and current.paused is True

    await stage.admin("devnet_setFarmPaused", paused=False)
    assert (await read_farm(stage.client)).paused is False
