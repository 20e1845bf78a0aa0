"""`kale-pool up` under test: its processes started for real on free ports in a temporary
data directory, and what tests read back (the run state, the database, the chain).

Shared by the end-to-end test of `up` (tests/app/test_up.py) and the fault matrix
(tests/faults/), so both drive the very processes a newcomer's `make run` starts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from kalepool.app.probes import port_taken, split_address
from kalepool.app.runstate import RunState
from kalepool.db.embedded import embedded_running
from kalepool.settings import Settings
from tests.dbkit import owner_view

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


def up_env(data: Path, **extra: str) -> dict[str, str]:
    """The environment of a `kale-pool up` under test: its own data directory, free ports,
    short mining (the contract takes any correct hash: zeros only weigh the reward)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALE_POOL_", "DATABASE_URL"))}
    env.update(
        {
            "KALE_POOL_DATA_DIR": str(data),
            "KALE_POOL_DEVNET_PORT": "0",
            "KALE_POOL_WALLET_LISTEN": "127.0.0.1:0",
            "KALE_POOL_POOL_LISTEN": "127.0.0.1:0",
            "KALE_POOL_METRICS_PORT": "0",
            "KALE_POOL_WEB_LISTEN": "127.0.0.1:0",
            "KALE_POOL_MINING_THREADS": "1",
            "KALE_POOL_WORK_DELAY_SECONDS": "3",
            "KALE_POOL_BLOCK_POLL_INTERVAL_SECONDS": "1",
            "KALE_POOL_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000",
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


def settings_for(data: Path) -> Settings:
    """Settings of the data directory under test (as the other commands read it)."""
    return Settings(network="devnet", data_dir=data, _env_file=None)  # type: ignore[call-arg]


async def spawn_up(
    data: Path, *args: str, block_seconds: int = 20, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`kale-pool up ARGS --block-seconds N` in the background, output on its stdout."""
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    return await asyncio.create_subprocess_exec(
        KALE_POOL,
        "up",
        *args,
        "--block-seconds",
        str(block_seconds),
        env=env or up_env(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def wait_running(
    data: Path, proc: asyncio.subprocess.Process, poolers: int, within: float = 300
) -> RunState:
    """The run state once every pooler process is up (the stack is farming)."""
    deadline = time.monotonic() + within
    while True:
        state = RunState.load(settings_for(data))
        started = [p for p in state.processes.values() if p.role == "pooler"] if state else []
        if state is not None and len(started) == poolers and state.supervisor_pid == proc.pid:
            return state
        assert proc.returncode is None, "kale-pool up ended before it was running"
        assert time.monotonic() < deadline, "kale-pool up did not get running"
        await asyncio.sleep(0.5)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def nothing_left(state: RunState, data: Path, *, database: bool = True) -> None:
    """Every process the run started is gone, its ports free (and the database stopped)."""
    pids = [state.supervisor_pid, *(p.pid for p in state.processes.values())]
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) or (database and embedded_running(data / "postgres")):
        assert time.monotonic() < deadline, [p for p in pids if alive(p)]
        await asyncio.sleep(0.2)
    addresses = [state.pool_address, state.wallet_address]
    addresses.append(state.rpc_url.removeprefix("http://").rstrip("/"))
    for address in addresses:
        host, port = split_address(address)
        assert port_taken(host, port) is None, address


def rows(conninfo: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row of a query on the stack's database (as the owner, every schema by name)."""
    with psycopg.connect(owner_view(conninfo)) as conn:
        return list(conn.execute(query, params).fetchall())


def duplicates(conninfo: str) -> list[tuple[Any, ...]]:
    """(table, farmer, block) of every success recorded more than once."""
    found: list[tuple[Any, ...]] = []
    for table in ("plantings", "works", "harvests"):
        found += [
            (table, *row)
            for row in rows(
                conninfo,
                f"SELECT farmer_id, block_index FROM {table} WHERE status = 'success'"
                " GROUP BY farmer_id, block_index HAVING count(*) > 1",
            )
        ]
    return found
