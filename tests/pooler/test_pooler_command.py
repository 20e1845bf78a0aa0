"""`kale-pool pooler` as a pooler runs it (a real subprocess): one-line errors for what
is missing, and a run against the real pool that plants, works and stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from stellar_sdk import Keypair

from tests.pool.conftest import KALE, PoolStage, until

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


def _env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    env["KALE_POOL_DATA_DIR"] = str(data_dir)
    env.update({f"KALE_POOL_{k.upper()}": v for k, v in settings.items()})
    return env


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert KALE_POOL is not None
    return subprocess.run(
        [KALE_POOL, "pooler"], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "KALE_POOL_POOLER_API_KEY is required"),
        ({"pooler_api_key": "k"}, "KALE_POOL_POOLER_CHANNEL_SECRETS"),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets": "SDONOTSHOWTHISVALUE"},
            "channel account 1: not a valid secret key",
        ),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets_file": "/nonexistent/channels"},
            "KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: cannot read",
        ),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets": Keypair.random().secret},
            "the pooler's certificate is missing",
        ),
    ],
)
def test_what_is_missing_is_named_in_one_line(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    done = _run(_env(tmp_path, **settings))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "SDONOTSHOWTHISVALUE" not in done.stderr + done.stdout


async def test_the_command_plants_works_and_stops_cleanly_on_ctrl_c(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    pooler, key = await pool.register_pooler("rig-cli")
    await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    channel = (await pool.stage.accounts(1))[0]
    certs = tmp_path / "certs"
    certs.mkdir()
    pool.pki.client("pooler")
    for name in ("pooler.pem", "pooler-key.pem", "ca.pem"):
        shutil.copy(pool.pki.directory / name, certs / name)
    assert pool.server is not None and KALE_POOL is not None
    env = _env(
        tmp_path,
        network="devnet",
        rpc_url=pool.stage.server.url,
        pool_address=f"127.0.0.1:{pool.server.port}",
        pooler_api_key=key,
        pooler_channel_secrets=channel.secret,
        work_delay_seconds="0",
        pooler_submit_margin_seconds="0",
        block_poll_interval_seconds="0.1",
        mining_threads="1",
    )
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL,
        "pooler",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def worked() -> bool:
            return await pool.count("works") == 1

        await until(worked, 40)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert key not in (out + err).decode() and channel.secret not in (out + err).decode()
    assert (tmp_path / "pooler" / "pooler-cursor.json").is_file()
