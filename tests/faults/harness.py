"""A farm under fault: `kale-pool up` on a temporary data directory, faults injected from
outside into its real processes, and what must hold afterwards measured.

`Farm` runs `kale-pool up` (the devnet, the wallet and pool services and the pooler
agents, each its own process, exactly as `make run` starts them) and gives a scenario
what it needs to strike at the right moment: the run state (pids, addresses), the
database, the chain, the pool's API as the operator, the devnet's fault injection.
`up` stops every part when one dies by itself, so a scenario that kills a process
waits for the supervisor to stop, and starts `up` again on the same data directory:
recovery is a restart, as a machine's would be.

After each scenario `Farm.recover` waits until a block opened after the fault is farmed
normally (every active farmer planted, worked and harvested), and `Farm.settled_check`
runs `kale-pool check` until the books agree with the chain (in-flight items may
settle meanwhile) or the time is up. `Farm.measure` counts what the matrix reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kalepool.app.cycles import BlockOutcome, assess
from kalepool.app.operator import OperatorClient
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, current_block, read_farm_call, resolve_chain_config
from kalepool.db.embedded import embedded_running, start_embedded
from kalepool.settings import Settings
from kalepool.v1 import pool_pb2
from tests.stackkit import KALE_POOL, alive, rows, settings_for, spawn_up, up_env, wait_running

_DIFFERENCE = re.compile(r"^difference: (.*)$")
_IN_FLIGHT = re.compile(r"^in flight: (.*)$")


class FarmError(AssertionError):
    """The farm did not do what a scenario waited for."""


@dataclass
class CheckResult:
    """One `kale-pool check`."""

    code: int
    differences: list[str]
    in_flight: list[str]
    output: str


@dataclass
class Farm:
    """`kale-pool up` on one data directory, started and restarted by scenarios."""

    data: Path
    poolers: int = 2
    farmers: int = 6
    block_seconds: int = 20
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    state: RunState | None = None
    chain: ChainClient | None = None
    op: OperatorClient | None = None
    starts: int = 0
    _output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _db: Any = None

    @property
    def settings(self) -> Settings:
        return settings_for(self.data)

    @property
    def log(self) -> str:
        """Everything every `up` of this farm printed."""
        return "".join(self._output)

    # ---- the stack ----------------------------------------------------------------------

    async def start(self) -> RunState:
        """`kale-pool up` (again): farming once every pooler runs."""
        env = up_env(self.data, **self.extra_env)
        self.proc = await spawn_up(
            self.data,
            "--poolers",
            str(self.poolers),
            "--farmers",
            str(self.farmers),
            block_seconds=self.block_seconds,
            env=env,
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc))
        self.state = await wait_running(self.data, self.proc, self.poolers)
        config = await resolve_chain_config(
            self.settings.model_copy(update={"rpc_url": self.state.rpc_url})
        )
        self.chain = ChainClient(config, poll_interval=0.2)
        self.op = OperatorClient(self.settings, address=self.state.pool_address)
        return self.state

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self._output.append(line.decode(errors="replace"))

    async def _forget_clients(self) -> None:
        if self.op is not None:
            await self.op.close()
            self.op = None
        if self.chain is not None:
            await self.chain.aclose()
            self.chain = None

    async def ended(self, within: float = 120) -> int:
        """Wait for `up` to end (after a part died, or a stop) and return its exit code."""
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise FarmError(f"kale-pool up did not stop within {within} s") from None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 10)
        await self._forget_clients()
        # The children may outlive the supervisor by their grace period.
        if self.state is not None:
            deadline = time.monotonic() + 60
            pids = [p.pid for p in self.state.processes.values()]
            while any(alive(pid) for pid in pids):
                if time.monotonic() > deadline:
                    raise FarmError(f"processes left running: {[p for p in pids if alive(p)]}")
                await asyncio.sleep(0.2)
        return code

    async def stop(self) -> int:
        """Ctrl-C: stop everything gracefully."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        return await self.ended(180)

    async def close(self) -> None:
        """Stop the stack (if running) and release the database handle."""
        if self.proc is not None and self.proc.returncode is None:
            await self.stop()
        await self._forget_clients()
        if self._db is not None:
            await asyncio.to_thread(self._db.release)
            self._db = None

    def pid(self, part: str) -> int:
        """The pid of a part (`devnet`, `wallet`, `pool`, `pooler-1`, ...) or `up` itself."""
        assert self.state is not None
        if part == "up":
            return self.state.supervisor_pid
        return self.state.processes[part].pid

    def signal(self, part: str, sig: int = signal.SIGKILL) -> None:
        os.kill(self.pid(part), sig)

    def crash(self) -> None:
        """Every process of the stack killed at once, as a machine losing power."""
        assert self.state is not None
        pids = [self.state.supervisor_pid, *(p.pid for p in self.state.processes.values())]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ---- reading it -----------------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        if self._db is None:
            self._db = start_embedded(self.data / "postgres")
        return str(self._db.conninfo)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return rows(self.conninfo, sql, params)

    async def current(self) -> int:
        assert self.chain is not None
        return (await current_block(self.chain)).index

    async def devnet(self, method: str, **params: Any) -> Any:
        """A devnet admin call (`devnet_setFaults`, `devnet_closeLedger`, ...)."""
        assert self.state is not None
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with aiohttp.ClientSession() as http, http.post(self.state.rpc_url, json=body) as r:
            got = await r.json()
        if "error" in got:
            raise FarmError(f"{method}: {got['error']}")
        return got["result"]

    async def outcome(self, index: int) -> BlockOutcome:
        assert self.op is not None
        block = await self.op.pool.GetBlock(pool_pb2.GetBlockRequest(block_index=index))
        return assess(block)

    async def active_farmers(self) -> int:
        return int(
            self.query("SELECT count(*) FROM farmers WHERE status = 'active' AND is_funded")[0][0]
        )

    # ---- waiting --------------------------------------------------------------------------

    async def until(
        self, what: str, check: Callable[[], Awaitable[bool]], within: float, poll: float = 0.05
    ) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if self.proc is not None and self.proc.returncode is not None:
                raise FarmError(f"kale-pool up ended while waiting for {what}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise FarmError(f"{what}: not within {within:.0f} s")
            await asyncio.sleep(poll)

    async def next_block(self, within: float | None = None) -> int:
        """Wait for the next block to open; its index."""
        now = await self.current()

        async def opened() -> bool:
            return await self.current() > now

        await self.until("the next block", opened, within or 3 * self.block_seconds, 0.2)
        return await self.current()

    async def recover(self, after: int, within: float | None = None) -> int:
        """Wait until a block above `after` is farmed normally: every active farmer planted,
        worked and harvested. Returns that block."""
        within = within or 8 * self.block_seconds + 120
        found: list[int] = []

        async def farmed() -> bool:
            assert self.op is not None
            try:
                current = await self.current()
                for index in range(after + 1, current):
                    got = await self.outcome(index)
                    active = await self.active_farmers()
                    if (
                        got.settled
                        and got.planted == active
                        and got.worked == got.planted
                        and got.harvested == got.worked
                    ):
                        found.append(index)
                        return True
            except Exception:  # the pool may still be starting: ask again
                return False
            return False

        await self.until(f"a block after {after} farmed normally", farmed, within, 1.0)
        return found[0]

    # ---- what must hold -------------------------------------------------------------------

    async def check(self) -> CheckResult:
        """`kale-pool check` as an operator runs it."""
        assert KALE_POOL is not None
        proc = await asyncio.create_subprocess_exec(
            KALE_POOL,
            "check",
            env=up_env(self.data),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
        text = out.decode(errors="replace")
        differences, in_flight = [], []
        for line in text.splitlines():
            if m := _DIFFERENCE.match(line):
                differences.append(m.group(1))
            elif m := _IN_FLIGHT.match(line):
                in_flight.append(m.group(1))
        assert proc.returncode is not None
        return CheckResult(proc.returncode, differences, in_flight, text)

    async def settled_check(self, within: float = 90) -> CheckResult:
        """`kale-pool check` again until it passes (what is in flight settles) or time is up."""
        deadline = time.monotonic() + within
        while True:
            result = await self.check()
            if result.code == 0 or time.monotonic() > deadline:
                return result
            await asyncio.sleep(3)

    async def applied_twice(self) -> list[str]:
        """Anything the chain or the books hold twice: a (farmer, block) planted, worked or
        harvested twice in the books; a planting, harvest or deposit recorded twice for one
        transaction or event; a (farmer, block) harvested by two transactions on chain."""
        found = [
            f"{table}: farmer {farmer} block {block} succeeded {n} times"
            for table in ("plantings", "works", "harvests")
            for farmer, block, n in self.query(
                f"SELECT farmer_id, block_index, count(*) FROM {table} WHERE status = 'success'"
                " GROUP BY farmer_id, block_index HAVING count(*) > 1"
            )
        ]
        found += [
            f"{table}: transaction {tx} recorded {n} times"
            for table in ("plantings", "harvests", "deposits")
            for tx, n in self.query(
                f"SELECT tx_hash, count(*) FROM {table} WHERE tx_hash IS NOT NULL"
                + (" AND status = 'success'" if table != "deposits" else "")
                + " GROUP BY tx_hash HAVING count(*) > 1"
            )
        ]
        # On chain: every harvest transaction the wallet sent that applied, by (farmer, block).
        assert self.chain is not None
        harvested: Counter[tuple[str, int]] = Counter()
        for (tx_hash,) in self.query(
            "SELECT tx_hash FROM transactions WHERE kind = 'harvest' AND status = 'success'"
        ):
            call = await read_farm_call(self.chain, tx_hash)
            if call is not None and call.succeeded and call.index is not None:
                harvested[(call.farmer, call.index)] += 1
        found += [f"pail {k} harvested {n} times on chain" for k, n in harvested.items() if n > 1]
        return found


def journal_entries(farm: Farm, pooler: str) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """A pooler's work journal: the entries sent (by tx hash) and those reported."""
    directory = farm.data / "poolers" / pooler / "pooler"
    sent: dict[str, dict[str, Any]] = {}
    reported: set[str] = set()
    for path in directory.glob("*-journal.jsonl"):
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if "sent" in item:
                sent[item["sent"]["tx_hash"]] = item["sent"]
            elif "reported" in item:
                reported.add(item["reported"])
    return sent, reported


def database_up(farm: Farm) -> bool:
    return embedded_running(farm.data / "postgres")
