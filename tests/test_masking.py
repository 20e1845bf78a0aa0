"""kalepool.masking: URLs, free text, log lines and `config show` without secrets."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from kalepool import masking
from kalepool.masking import MASK, RedactingFormatter, mask_url, redact, shown_setting
from kalepool.settings import Settings

API_KEY = "a1b2c3d4e5f6a7b8c9d0e1f2"
SEED = "SBK2VIYYSVG76E7VC3QHYARNFLY2EAQXDHRC7BMXBBGIFG74ARPRMNQM"


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    masking.forget_all()
    yield
    masking.forget_all()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # an RPC provider's key in the path; the route's names stay
        (f"https://rpc.example.com/v1/{API_KEY}", "https://rpc.example.com/v1/***"),
        (
            f"https://rpc.example.com/{API_KEY}/soroban/rpc",
            "https://rpc.example.com/***/soroban/rpc",
        ),
        # query values and the fragment, whatever the parameter is called
        (
            f"https://hooks.example.com/notify?token={API_KEY}&channel=ops#sig",
            "https://hooks.example.com/notify?token=***&channel=***#***",
        ),
        # a database password; the role stays (which role is not a secret)
        (
            "postgresql://kalepool_pool:s3cret-pw@db.internal:5432/kalepool",
            "postgresql://kalepool_pool:***@db.internal:5432/kalepool",
        ),
        (
            "postgresql://kalepool_pool@db.internal/kalepool",
            "postgresql://kalepool_pool@db.internal/kalepool",
        ),
        # a lone user part of a web URL is a token
        (f"https://{API_KEY}@rpc.example.com/", "https://***@rpc.example.com/"),
        # nothing secret: unchanged
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/"),
        ("https://soroban-testnet.stellar.org", "https://soroban-testnet.stellar.org"),
        ("https://friendbot.stellar.org/", "https://friendbot.stellar.org/"),
        # libpq keyword form
        (
            "host=db user=pool password=s3cret-pw dbname=x",
            "host=db user=pool password=*** dbname=x",
        ),
        ("host=db password='s3 cret' dbname=x", "host=db password=*** dbname=x"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_url_of_a_malformed_url_hides_it_all() -> None:
    assert mask_url(f"https://rpc.example.com:{API_KEY}/") == MASK


def test_redact_known_values_seeds_urls_and_passwords() -> None:
    masking.remember(["master-key-bytes-b64=="])
    text = (
        f"cannot reach https://rpc.example.com/v1/{API_KEY}: refused; key master-key-bytes-b64=="
        f" seed {SEED} conninfo password=hunter22 ok"
    )
    out = redact(text)
    for secret in (API_KEY, "master-key-bytes-b64==", SEED, "hunter22"):
        assert secret not in out
    assert "https://rpc.example.com/v1/***" in out
    assert out.endswith("ok")


def test_redact_ignores_short_values_and_keeps_plain_text() -> None:
    masking.remember(["abc"])
    assert redact("abc block 12 planted by GABC") == "abc block 12 planted by GABC"


def test_settings_secrets_are_remembered_and_shown_masked() -> None:
    settings = Settings(
        database_url=SecretStr("postgresql://wallet:pg-pass-123@db/kalepool"),
        master_key=SecretStr(
            "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,2:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB="
        ),
        rpc_url=f"https://rpc.example.com/v1/{API_KEY}",
        pooler_api_key=SecretStr("pooler-api-key-value"),
        pooler_channel_secrets=SecretStr(f"{SEED}"),
    )
    masking.remember_settings(settings)
    line = redact(
        f"pg-pass-123 BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB= pooler-api-key-value {API_KEY}"
    )
    assert line == " ".join([MASK] * 4)
    shown = {name: shown_setting(name, value) for name, value in settings}
    assert shown["database_url"] == "postgresql://wallet:***@db/kalepool"
    assert shown["master_key"] == MASK
    assert shown["pooler_api_key"] == MASK
    assert shown["pooler_channel_secrets"] == MASK
    assert shown["rpc_url"] == "https://rpc.example.com/v1/***"
    assert shown["master_key_file"] == ""
    assert shown["network"] == "devnet"


def test_every_secret_setting_is_masked_when_shown() -> None:
    """Each SecretStr field and each `…_url` field of Settings: set to a value full of
    secrets, `shown_setting` hides it (a new secret setting is covered without a change)."""
    secret = f"x{API_KEY}"
    checked = []
    for name, field in Settings.model_fields.items():
        annotation = str(field.annotation)
        if "SecretStr" in annotation:
            value: object = SecretStr(f"https://u:{secret}@h/{secret}?k={secret}")
        elif masking.is_url_setting(name):
            value = f"https://u:{secret}@h/{secret}?k={secret}"
        else:
            continue
        checked.append(name)
        assert secret not in shown_setting(name, value), name
    assert {"database_url", "master_key", "pooler_api_key", "rpc_url", "friendbot_url"} <= set(
        checked
    )


def test_redacting_formatter_hides_message_arguments_and_traceback() -> None:
    masking.remember(["pooler-api-key-value"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.masking")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling %s with %s", f"https://rpc.example.com/{API_KEY}", SEED)
        try:
            raise RuntimeError("key pooler-api-key-value refused")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert API_KEY not in out and SEED not in out and "pooler-api-key-value" not in out
    assert "RuntimeError: key *** refused" in out


def test_config_show_masks_urls_and_secrets(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KALE_POOL_DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://kalepool_pool:pg-pass-123@db.internal/kalepool",
        "KALE_POOL_RPC_URL": f"https://rpc.example.com/v1/{API_KEY}",
        "KALE_POOL_FRIENDBOT_URL": f"https://friendbot.example.com/?key={API_KEY}",
        "KALE_POOL_POOLER_API_KEY": "pooler-api-key-value",
        "KALE_POOL_POOLER_CHANNEL_SECRETS": SEED,
    }
    result = subprocess.run(
        [sys.executable, "-m", "kalepool.app.cli", "config", "show"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for secret in ("pg-pass-123", API_KEY, "pooler-api-key-value", SEED):
        assert secret not in out
    lines = result.stdout.splitlines()
    assert "DATABASE_URL=postgresql://kalepool_pool:***@db.internal/kalepool" in lines
    assert "KALE_POOL_RPC_URL=https://rpc.example.com/v1/***" in lines
    assert "KALE_POOL_POOLER_API_KEY=***" in lines


@pytest.mark.parametrize(
    ("segment", "is_key"),
    [
        (API_KEY, True),
        ("secret-api-key", True),
        ("my_token_here", True),
        ("x" * 32, True),
        ("soroban", False),
        ("v1", False),
        ("soroban-rpc-mainnet", False),
        ("state.json", False),
        ("abc123", False),  # too short to be a key
    ],
)
def test_key_like_path_segments(segment: str, is_key: bool) -> None:
    assert masking.looks_like_key(segment) is is_key


def test_status_shows_the_chain_url_masked(tmp_path: Path) -> None:
    """`kale-pool status` of a running stack names its chain: without the provider's key."""
    from rich.console import Console

    from kalepool.app.runstate import RunState
    from kalepool.app.status import show_status

    settings = Settings(network="devnet", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    settings.layout().ensure()
    RunState(
        network="testnet",
        rpc_url=f"https://rpc.example.com/v1/{API_KEY}?apikey={API_KEY}",
        pool_address="127.0.0.1:1",  # nothing listens: the pool's tables say so
        wallet_address="127.0.0.1:1",
        started_at=0.0,
        supervisor_pid=os.getpid(),  # "running": this process is alive
    ).save(settings)
    out = io.StringIO()
    assert show_status(settings, Console(file=out, width=300)) == 0
    text = out.getvalue()
    assert "chain at https://rpc.example.com/v1/***?apikey=***" in text
    assert API_KEY not in text
