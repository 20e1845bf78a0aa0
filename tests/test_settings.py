"""Settings: profiles, precedence, and one clear line for a bad or missing setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kalepool.settings import ENV_PREFIX, Network, Settings, SettingsError, load_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Isolate from the caller's environment and any .env in the working directory."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_devnet_is_the_default_and_needs_nothing() -> None:
    settings = load_settings()
    assert settings.network is Network.DEVNET
    assert settings.rpc_url == "http://127.0.0.1:8000/"
    assert settings.database_url is None


def test_mainnet_profile_fills_chain_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALE_POOL_NETWORK", "mainnet")
    monkeypatch.setenv("KALE_POOL_RPC_URL", "https://rpc.example.org")
    settings = load_settings()
    assert settings.farm_contract_id == "CDL74RF5BLYR2YBLCCI7F5FB6TPSCLKEJUBSD2RSVWZ4YHF3VMFAIGWA"
    assert settings.network_passphrase == "Public Global Stellar Network ; September 2015"
    assert settings.rpc_url == "https://rpc.example.org"


def test_explicit_setting_wins_over_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALE_POOL_NETWORK", "testnet")
    monkeypatch.setenv("KALE_POOL_FARM_CONTRACT_ID", "CFARM")
    monkeypatch.setenv("KALE_POOL_RPC_URL", "http://127.0.0.1:9999/")
    settings = load_settings()
    assert settings.rpc_url == "http://127.0.0.1:9999/"
    assert settings.network_passphrase == "Test SDF Network ; September 2015"


@pytest.mark.parametrize(
    ("network", "missing"),
    [("mainnet", "KALE_POOL_RPC_URL"), ("testnet", "KALE_POOL_FARM_CONTRACT_ID")],
)
def test_missing_required_setting_names_it(
    monkeypatch: pytest.MonkeyPatch, network: str, missing: str
) -> None:
    monkeypatch.setenv("KALE_POOL_NETWORK", network)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert missing in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KALE_POOL_METRICS_PORT", "abc"),
        ("KALE_POOL_METRICS_PORT", "70000"),
        ("KALE_POOL_NETWORK", "moonnet"),
        ("KALE_POOL_LOG_LEVEL", "loud"),
        ("KALE_POOL_PLANT_CONCURRENCY", "0"),
    ],
)
def test_bad_value_names_the_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{name}:")
    assert repr(value) in message


def test_secrets_are_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("KALE_POOL_DB_POOL_SIZE", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    settings = load_settings(db_pool_size=5)
    assert "hunter2" not in repr(settings)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://u:hunter2@db/x"


def test_dotenv_file_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "KALE_POOL_DATA_DIR=/srv/from-dotenv\nKALE_POOL_LOG_LEVEL=debug\n"
    )
    settings = load_settings()
    assert settings.data_dir == Path("/srv/from-dotenv")
    assert settings.log_level == "debug"
    assert load_settings(data_dir=tmp_path / "flag").data_dir == tmp_path / "flag"


def test_layout_keeps_everything_under_the_data_dir(tmp_path: Path) -> None:
    layout = load_settings(data_dir=tmp_path / "d").layout()
    layout.ensure()
    for path in (layout.postgres.parent, layout.devnet_state.parent, layout.certs, layout.logs):
        assert path.is_dir()
        assert path.resolve().is_relative_to(layout.root)
    assert (layout.root.stat().st_mode & 0o077) == 0


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`((?:KALE_POOL_|DATABASE_URL)[A-Z_]*)`", DOCS.read_text()))
    for name in Settings.model_fields:
        assert f"{ENV_PREFIX}{name.upper()}" in documented, f"{name} missing from {DOCS.name}"
