"""`python -m wallet_service` / `python -m pool_service` refuse bad start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KALE_POOL_") and k != "DATABASE_URL"
    }
    clean["KALE_POOL_DATA_DIR"] = str(tmp_path / "data")
    return clean


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
