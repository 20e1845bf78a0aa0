"""ChainConfig: resolved from settings, from the devnet's /devnet, and checked."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import aiohttp
import pytest

from kale_devnet import identity
from kalepool.chain import (
    ChainClient,
    ChainConfig,
    ChainConfigError,
    ChainUnavailableError,
    RetryPolicy,
    read_farm,
    resolve_chain_config,
)
from kalepool.chain.config import chain_config_from_settings
from kalepool.chain.errors import ChainDataError
from kalepool.settings import ENV_PREFIX, Settings

from .stage import Stage


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings read the environment and .env: isolate from both."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, _env_file=None, **values)


async def test_devnet_ids_come_from_the_devnet(stage: Stage, tmp_path: Path) -> None:
    config = stage.client.config
    ident = identity()
    assert config.rpc_url == stage.server.url
    assert config.network_passphrase == ident.network_passphrase
    assert config.farm_contract_id == ident.farm_contract_id
    assert config.sac_contract_id == ident.sac_contract_id
    assert config.asset == ident.asset
    assert config.block_seconds == stage.server.config.block_seconds
    await stage.client.check_network()

    # An explicit setting that disagrees with the devnet is refused, naming the setting.
    wrong = _settings(
        tmp_path,
        network="devnet",
        rpc_url=stage.server.url,
        farm_contract_id=ident.sac_contract_id,
        tx_timeout_seconds=30,
    )
    with pytest.raises(ChainConfigError, match=f"{ENV_PREFIX}FARM_CONTRACT_ID"):
        await resolve_chain_config(wrong, session=stage.http)
    agreeing = _settings(
        tmp_path,
        network="devnet",
        rpc_url=stage.server.url,
        farm_contract_id=ident.farm_contract_id,
        tx_timeout_seconds=30,
        base_fee_stroops=250,
    )
    resolved = await resolve_chain_config(agreeing, session=stage.http)
    assert (resolved.tx_timeout_seconds, resolved.base_fee_stroops) == (30, 250)


async def test_a_devnet_that_is_not_running_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = _settings(tmp_path, network="devnet", rpc_url=f"http://127.0.0.1:{port}/")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(
            ChainConfigError, match=f"cannot reach the devnet at http://127.0.0.1:{port}"
        ):
            await resolve_chain_config(settings, session=http)


async def test_unreachable_rpc_is_the_chains_problem(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ident = identity()
    config = ChainConfig(
        rpc_url=f"http://127.0.0.1:{port}/secret-api-key",
        network_passphrase=ident.network_passphrase,
        farm_contract_id=ident.farm_contract_id,
        sac_contract_id=ident.sac_contract_id,
        asset_code="KALE",
        asset_issuer=ident.asset.issuer,
    ).validate()
    async with ChainClient(config, retry=RetryPolicy(attempts=2, initial_delay=0.01)) as client:
        with pytest.raises(ChainUnavailableError) as down:
            await read_farm(client)
    assert f"127.0.0.1:{port}" in str(down.value)
    assert "secret-api-key" not in str(down.value)  # provider URLs may carry keys


async def test_check_network_refuses_another_network(stage: Stage) -> None:
    other = dataclasses.replace(stage.client.config, network_passphrase="Some Other Network")
    async with ChainClient(other) as client:
        with pytest.raises(ChainDataError, match="Some Other Network"):
            await client.check_network()


@pytest.mark.parametrize("network", ["mainnet", "testnet"])
def test_real_networks_resolve_from_settings(tmp_path: Path, network: str) -> None:
    extra = {}
    if network == "testnet":  # several farms are published: configuration, never a default
        extra["farm_contract_id"] = "CDSWUUXGPWDZG76ISK6SUCVPZJMD5YUV66J2FXFXFGDX25XKZJIEITAO"
    settings = _settings(tmp_path, network=network, rpc_url="https://rpc.example.org", **extra)
    config = chain_config_from_settings(settings)
    # validate() derived the asset contract from the asset and the passphrase: the published
    # ids agree with the published assets.
    assert config.sac_contract_id == config.asset.contract_id(config.network_passphrase)
    assert config.block_seconds == 300


def test_inconsistent_settings_are_refused(tmp_path: Path) -> None:
    testnet_sac = "CAAVU2UQJLMZ3GUZFM56KVNHLPA3ZSSNR4VP2U53YBXFD2GI3QLIVHZZ"
    mixed = _settings(
        tmp_path, network="mainnet", rpc_url="https://rpc.example.org", sac_contract_id=testnet_sac
    )
    with pytest.raises(ChainConfigError, match="is not the contract of KALE:"):
        chain_config_from_settings(mixed)
    bad_farm = _settings(
        tmp_path,
        network="testnet",
        rpc_url="https://rpc.example.org",
        farm_contract_id="CFARM",
    )
    with pytest.raises(ChainConfigError, match="farm_contract_id is not a contract id"):
        chain_config_from_settings(bad_farm)
    no_issuer = _settings(
        tmp_path,
        network="mainnet",
        rpc_url="https://rpc.example.org",
        asset_issuer="",
    )
    with pytest.raises(ChainConfigError, match=f"{ENV_PREFIX}ASSET_ISSUER is required"):
        chain_config_from_settings(no_issuer)
