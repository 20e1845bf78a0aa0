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
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from stellar_sdk import scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_server_async import SorobanServerAsync

from kalepool.app.probes import port_taken, split_address
from kalepool.app.runstate import RunState
from kalepool.db.consistency import check_consistency
from kalepool.db.embedded import embedded_running, start_embedded
from kalepool.devnet import DevnetConfig, DevnetServer
from kalepool.settings import Settings

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.slow


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALE_POOL_", "DATABASE_URL"))}
    env.update(
        {
            "KALE_POOL_DATA_DIR": str(data),
            # Free ports: nothing here collides with another pool on this machine.
            "KALE_POOL_DEVNET_PORT": "0",
            "KALE_POOL_WALLET_LISTEN": "127.0.0.1:0",
            "KALE_POOL_POOL_LISTEN": "127.0.0.1:0",
            "KALE_POOL_METRICS_PORT": "0",
            # Short work: the contract takes any correct hash (zeros only weigh the reward).
            "KALE_POOL_MINING_THREADS": "1",
            "KALE_POOL_WORK_DELAY_SECONDS": "3",
            "KALE_POOL_BLOCK_POLL_INTERVAL_SECONDS": "1",
            "KALE_POOL_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000",
            "COLUMNS": "200",
        }
    )
    return env


def _settings(data: Path) -> Settings:
    return Settings(network="devnet", data_dir=data, _env_file=None)  # type: ignore[call-arg]


async def _up(data: Path, *args: str) -> asyncio.subprocess.Process:
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    return await asyncio.create_subprocess_exec(
        KALE_POOL,
        "up",
        *args,
        "--block-seconds",
        "20",
        env=_env(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _running(data: Path, proc: asyncio.subprocess.Process, poolers: int) -> RunState:
    """The run state once every pooler process is up (the stack is farming)."""
    deadline = time.monotonic() + 300
    while True:
        state = RunState.load(_settings(data))
        started = [p for p in state.processes.values() if p.role == "pooler"] if state else []
        if state is not None and len(started) == poolers:
            return state
        assert proc.returncode is None, "kale-pool up ended before it was running"
        assert time.monotonic() < deadline, "kale-pool up did not get running"
        await asyncio.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def _nothing_left(state: RunState, data: Path) -> None:
    """Every process the run started is gone, its ports free, the database stopped."""
    pids = [state.supervisor_pid, *(p.pid for p in state.processes.values())]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) or embedded_running(data / "postgres"):
        assert time.monotonic() < deadline, [p for p in pids if _alive(p)]
        await asyncio.sleep(0.2)
    addresses = [state.pool_address, state.wallet_address]
    addresses.append(state.rpc_url.removeprefix("http://").rstrip("/"))
    for address in addresses:
        host, port = split_address(address)
        assert port_taken(host, port) is None, address
    assert RunState.load(_settings(data)) is None  # the state file went with the stack


def _rows(conninfo: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        return list(conn.execute(query).fetchall())


def _snapshot(conninfo: str) -> dict[str, Any]:
    """What must not change or double on a rerun."""
    return {
        "poolers": _rows(conninfo, "SELECT id, public_key FROM poolers ORDER BY id"),
        "api_keys": _rows(conninfo, "SELECT count(*) FROM pooler_api_keys")[0][0],
        "farmers": _rows(conninfo, "SELECT id, custodial_public_key FROM farmers ORDER BY id"),
        "wallets": _rows(conninfo, "SELECT count(*) FROM custodial_wallets")[0][0],
    }


def _duplicates(conninfo: str) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    for table in ("plantings", "works", "harvests"):
        found += [
            (table, *row)
            for row in _rows(
                conninfo,
                f"SELECT farmer_id, block_index FROM {table} WHERE status = 'success'"
                " GROUP BY farmer_id, block_index HAVING count(*) > 1",
            )
        ]
    return found


async def _rewards_match_the_chain(data: Path, conninfo: str, tmp_path: Path) -> int:
    """Each recorded reward equals the return value of its harvest transaction on chain."""
    harvests = _rows(
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
    proc = await _up(data, "--poolers", "2", "--farmers", "10", "--blocks", "3")
    assert proc.stdout is not None
    output = asyncio.create_task(proc.stdout.read())
    try:
        state = await _running(data, proc, poolers=2)
        # A second `up` on the same data directory: one line, nothing started.
        assert KALE_POOL is not None
        second = await asyncio.to_thread(
            subprocess.run,
            [KALE_POOL, "up"],
            env=_env(data),
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
    await _nothing_left(state, data)

    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert await _rewards_match_the_chain(data, conninfo, tmp_path) >= 1
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        before = _snapshot(conninfo)
        assert len(before["poolers"]) == 2 and len(before["farmers"]) == 10
        assert before["wallets"] == 10
        assert _duplicates(conninfo) == []
    finally:
        await asyncio.to_thread(server.release)

    # Again on the same data directory: it continues, duplicating nothing.
    again = await _up(data, "--poolers", "2", "--farmers", "10", "--blocks", "1")
    out, _ = await asyncio.wait_for(again.communicate(), 600)
    rerun = out.decode()
    assert again.returncode == 0, rerun
    assert "found again" in rerun and "registered (" not in rerun, rerun
    assert "1 of 1 blocks farmed" in rerun
    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert _snapshot(conninfo) == before  # same poolers, keys, farmers and wallets
        assert _duplicates(conninfo) == []
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        await _rewards_match_the_chain(data, conninfo, tmp_path)
    finally:
        await asyncio.to_thread(server.release)
