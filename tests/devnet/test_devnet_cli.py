"""`kale-pool devnet` as a user runs it: a real process on a free port."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.parametrize(
    ("absent", "command"),
    [
        ("kale_devnet", ["devnet"]),
        ("kale_devnet", ["up", "--no-demo"]),
        # What the extra adds (stellar-sdk needs nacl too, so only the devnet reaches it).
        ("nacl", ["devnet"]),
    ],
)
def test_without_the_devnet_extra_the_commands_say_what_to_install(
    absent: str, command: list[str], tmp_path: Path
) -> None:
    """The devnet is an optional extra: without it (or without what it needs) `devnet` and
    `up` on the devnet stop with one line naming the extra, not a traceback."""
    code = (
        "import sys\n"
        f"sys.modules[{absent!r}] = None  # as if not installed\n"
        "from kalepool.app import cli\n"
        f"sys.argv = ['kale-pool', *{command!r}]\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    env["KALE_POOL_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kale-pool: the local devnet is not installed here"), lines
    assert f"(no module '{absent}" in lines[0]
    assert "pip install 'kale-pool[devnet]'" in lines[0]
