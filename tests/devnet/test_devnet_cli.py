"""`kale-pool devnet` as a user runs it: a real process on a free port."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from stellar_sdk import SorobanServerAsync

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


async def test_devnet_command_serves_and_stops(tmp_path: Path) -> None:
    assert KALE_POOL is not None
    state = tmp_path / "devnet.json"
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL,
        "devnet",
        "--port",
        "0",
        "--ledger-seconds",
        "1",
        "--block-seconds",
        "60",
        "--state",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert first.startswith("kale-pool devnet: Stellar RPC at http://127.0.0.1:"), first
        url = first.rsplit(" ", 1)[-1].strip()
        rpc = SorobanServerAsync(url)
        try:
            assert (await rpc.get_health()).status == "healthy"
            assert (await rpc.get_network()).passphrase == "kale-pool devnet ; 2026"
        finally:
            await rpc.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert b"stopped" in out
    assert state.exists()


def test_devnet_command_rejects_bad_settings() -> None:
    assert KALE_POOL is not None
    done = subprocess.run(
        [KALE_POOL, "devnet", "--ledger-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "ledger_seconds must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
