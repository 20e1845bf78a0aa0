"""`kale-pool up` end to end, through the real processes it starts (devnet, wallet, pool,
two pooler agents), on short blocks, free ports and a temporary data directory.

It farms three complete cycles and exits 0 with its summary; every reward recorded is
the one the contract returned (each harvest's transaction read back from the chain); the
books agree with the events; nothing it started is left running; a concurrent second
`up` is refused in one line. Then `up --blocks 1` on the same data directory continues:
the same chain, poolers and farmers, nothing registered or recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from stellar_sdk import scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_server_async import SorobanServerAsync

from kale_devnet import DevnetConfig, DevnetServer
from kalepool.db.consistency import check_consistency
from kalepool.db.embedded import start_embedded
from tests.stackkit import (
    KALE_POOL,
    duplicates,
    nothing_left,
    rows,
    spawn_up,
    up_env,
    wait_running,
)

pytestmark = pytest.mark.slow


def _snapshot(conninfo: str) -> dict[str, Any]:
    """What must not change or double on a rerun."""
    return {
        "poolers": rows(conninfo, "SELECT id, public_key FROM poolers ORDER BY id"),
        "api_keys": rows(conninfo, "SELECT count(*) FROM pooler_api_keys")[0][0],
        "farmers": rows(conninfo, "SELECT id, custodial_public_key FROM farmers ORDER BY id"),
        "wallets": rows(conninfo, "SELECT count(*) FROM custodial_wallets")[0][0],
    }


async def _rewards_match_the_chain(data: Path, conninfo: str, tmp_path: Path) -> int:
    """Each recorded reward equals the return value of its harvest transaction on chain."""
    harvests = rows(
        conninfo, "SELECT tx_hash, reward_amount FROM harvests WHERE status = 'success'"
    )
    copy = tmp_path / "chain.json"  # read a copy: the rerun continues the original
    shutil.copy(data / "devnet" / "state.json", copy)
    async with DevnetServer(DevnetConfig(port=0, manual=True, state_path=copy)) as devnet:
        rpc = SorobanServerAsync(devnet.url)
        try:
            for tx_hash, reward in harvests:
                got = await rpc.get_transaction(tx_hash)
                assert got.result_meta_xdr is not None, tx_hash
                meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
                assert meta.v4 is not None and meta.v4.soroban_meta is not None
                returned = scval.from_int128(meta.v4.soroban_meta.return_value)
                assert returned == reward, (tx_hash, returned, reward)
        finally:
            await rpc.close()
    return len(harvests)


async def test_up_farms_continues_without_duplicating_and_refuses_a_second(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    proc = await spawn_up(data, "--poolers", "2", "--farmers", "10", "--blocks", "3")
    assert proc.stdout is not None
    output = asyncio.create_task(proc.stdout.read())
    try:
        state = await wait_running(data, proc, poolers=2)
        # A second `up` on the same data directory: one line, nothing started.
        assert KALE_POOL is not None
        second = await asyncio.to_thread(
            subprocess.run,
            [KALE_POOL, "up"],
            env=up_env(data),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert second.stdout == ""
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "kale-pool up is already running on" in lines[0], lines
        await asyncio.wait_for(proc.wait(), 900)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (await output).decode()
    assert proc.returncode == 0, text
    assert "farmed blocks" in text and "3 of 3 blocks farmed" in text, text
    assert "Traceback" not in text
    await nothing_left(state, data)

    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert await _rewards_match_the_chain(data, conninfo, tmp_path) >= 1
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        before = _snapshot(conninfo)
        assert len(before["poolers"]) == 2 and len(before["farmers"]) == 10
        assert before["wallets"] == 10
        assert duplicates(conninfo) == []
    finally:
        await asyncio.to_thread(server.release)

    # Again on the same data directory: it continues, duplicating nothing.
    again = await spawn_up(data, "--poolers", "2", "--farmers", "10", "--blocks", "1")
    out, _ = await asyncio.wait_for(again.communicate(), 600)
    rerun = out.decode()
    assert again.returncode == 0, rerun
    assert "found again" in rerun and "registered (" not in rerun, rerun
    assert "1 of 1 blocks farmed" in rerun
    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert _snapshot(conninfo) == before  # same poolers, keys, farmers and wallets
        assert duplicates(conninfo) == []
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        await _rewards_match_the_chain(data, conninfo, tmp_path)
    finally:
        await asyncio.to_thread(server.release)
    # The stack is stopped: `kale-pool check` proves the books against its saved chain.
    assert KALE_POOL is not None
    check = await asyncio.to_thread(
        subprocess.run,
        [KALE_POOL, "check"],
        env=up_env(data),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "the books agree with the chain" in check.stderr, check.stderr


def test_on_a_terminal_up_draws_the_live_view_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Under a pseudo-terminal (as a person runs it) `up` hands the screen to the live view
    once its parts run, and a Ctrl-C typed into it stops everything with exit 0."""
    import fcntl
    import pty
    import struct
    import termios

    assert KALE_POOL is not None
    env = up_env(tmp_path / "data", TERM="xterm-256color")
    env.pop("COLUMNS", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: kale-pool up on the terminal
        os.execve(KALE_POOL, [KALE_POOL, "up", "--no-demo", "--block-seconds", "20"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen = b""

    def read_until(marker: bytes, seconds: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while marker not in screen:
            assert time.monotonic() < deadline, screen.decode(errors="replace")[-3000:]
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"Ctrl-C stops everything", 180)
        # The live screen: its event panel and the current block's line, drawn in place.
        read_until(b"events", 60)
        read_until(b"block ", 60)
        assert b"\x1b[" in screen  # cursor movements and colours: a live screen, not lines
        os.write(fd, b"\x03")  # Ctrl-C, as typed
        read_until(b"stopped", 120)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, screen.decode(errors="replace")[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
