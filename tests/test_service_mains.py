"""`python -m wallet_service` / `python -m pool_service` refuse bad start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kalepool.db.roles import POOL, WALLET
from kalepool.tls import DevPki, ensure_dev_identities
from tests.dbkit import service_conninfo


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment and an empty data directory."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KALE_POOL_") and k != "DATABASE_URL"
    }
    clean["KALE_POOL_DATA_DIR"] = str(tmp_path / "data")
    return clean


@pytest.fixture
def env(bare_env: dict[str, str]) -> dict[str, str]:
    """The same with the development certificates issued, as `kale-pool up` issues them
    before it starts the services (which only read them)."""
    ensure_dev_identities(DevPki(Path(bare_env["KALE_POOL_DATA_DIR"]) / "certs"))
    return bare_env


@pytest.mark.parametrize(
    ("module", "name"), [("wallet_service", "wallet service"), ("pool_service", "pool service")]
)
def test_a_bad_setting_is_one_line_and_exit_2(env: dict[str, str], module: str, name: str) -> None:
    result = run_module(module, {**env, "KALE_POOL_NETWORK": "mainnet"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"{name}: KALE_POOL_RPC_URL is required on mainnet"


def test_the_wallet_will_not_start_without_its_master_key(env: dict[str, str]) -> None:
    result = run_module("wallet_service", env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("wallet service: ")
    assert "KALE_POOL_MASTER_KEY" in lines[-1]
    assert "Traceback" not in result.stderr
    # Checked before anything started: no database was created.
    assert not (Path(env["KALE_POOL_DATA_DIR"]) / "postgres").exists()


def test_an_unreachable_chain_is_one_line(env: dict[str, str], db_conninfo: str) -> None:
    import base64
    import os

    result = run_module(
        "wallet_service",
        {
            **env,
            "DATABASE_URL": service_conninfo(db_conninfo, WALLET),
            "KALE_POOL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
            "KALE_POOL_DEVNET_PORT": "1",  # nothing listens there
            "KALE_POOL_WALLET_LISTEN": "127.0.0.1:0",
            "KALE_POOL_METRICS_PORT": "0",
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wallet service: cannot reach the devnet at http://127.0.0.1:1")


async def test_a_taken_port_is_one_line_naming_the_setting(
    env: dict[str, str], db_conninfo: str
) -> None:
    """What `kale-pool up` shows as the reason a part stopped is this last line."""
    import asyncio
    import socket

    from kale_devnet import DevnetConfig, DevnetServer

    async with DevnetServer(DevnetConfig(port=0)) as devnet:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = await asyncio.to_thread(
                run_module,
                "pool_service",
                {
                    **env,
                    "DATABASE_URL": service_conninfo(db_conninfo, POOL),
                    "KALE_POOL_RPC_URL": devnet.url,
                    "KALE_POOL_POOL_LISTEN": f"127.0.0.1:{port}",
                    "KALE_POOL_METRICS_PORT": "0",
                },
            )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pool service: cannot listen on 127.0.0.1:{port}")
    assert "KALE_POOL_POOL_LISTEN" in last


def test_missing_certificates_are_one_line_naming_them(
    bare_env: dict[str, str], db_conninfo: str
) -> None:
    """The services read their certificates and never issue any (in a pod the CA's key
    stays with cert-manager): without them, start-up stops naming every missing file."""
    result = run_module("pool_service", {**bare_env, "DATABASE_URL": db_conninfo})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pool service: certificate files missing: "), last
    for name in ("ca.pem", "pool-service.pem", "pool-service-key.pem", "pool-client.pem"):
        assert name in last
    assert not (Path(bare_env["KALE_POOL_DATA_DIR"]) / "certs" / "ca-key.pem").exists()


def test_a_service_role_on_an_unmigrated_database_is_one_line(
    env: dict[str, str], empty_db_conninfo: str
) -> None:
    """With its own credentials a service may not migrate: it says who may, and stops."""
    result = run_module(
        "pool_service",
        {
            **env,
            "DATABASE_URL": service_conninfo(empty_db_conninfo, POOL),
            "KALE_POOL_POOL_LISTEN": "127.0.0.1:0",
            "KALE_POOL_METRICS_PORT": "0",
        },
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pool service: the migration history: this database role may not")
    assert "kale-pool db migrate" in last
