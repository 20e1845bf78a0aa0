"""The application's integration stage: the pool service's (real PostgreSQL, devnet,
wallet and pool servers over mTLS), and operator settings whose data directory holds the
stage's certificates, as `kale-pool up` leaves them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kalepool.app.runstate import RunState
from kalepool.settings import Settings
from tests.pool.conftest import PoolStage, pki, pool

__all__ = ["operator_settings", "pki", "pool", "pool_address"]


def pool_address(stage: PoolStage) -> str:
    assert stage.server is not None
    return f"127.0.0.1:{stage.server.port}"


@pytest.fixture
def operator_settings(pool: PoolStage, tmp_path: Path) -> Settings:
    """Settings of a data directory whose `certs/` is the stage's PKI and whose run state
    points at the stage's pool (as a running `kale-pool up` would leave it)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "certs").symlink_to(pool.pki.directory)
    settings = Settings(network="devnet", data_dir=data, _env_file=None)  # type: ignore[call-arg]
    RunState(
        network="devnet",
        rpc_url="",
        pool_address=pool_address(pool),
        wallet_address=f"127.0.0.1:{pool.wallet.server.port}",
        started_at=time.time(),
        supervisor_pid=os.getpid(),
    ).save(settings)
    return settings
