"""How plant throughput grows with 1, 2 and 3 pool replicas (each with its own wallet
process) on one database, beside the devnet's own ceiling.

Starts `kale-pool up --no-demo` as `plant_bench.py` does; for K replicas it starts K-1
more `python -m pool_service` and K-1 more `python -m wallet_service` beside those of
`up`, each with the environment `up` gave its own (read from the running process; only
the ports differ, on 127.0.0.1), each extra pool calling its own extra wallet. For each
K, in its own block: K poolers (pooler j calls replica j only), N farmers split among
them (onboarded before the first K, each K with its own poolers), one `RequestPlant` per
pooler, all sent together the moment the block is due, timed until every pail is on
chain (each planted farmer shown as an assignment); beside it the same N independent
payments as `plant_bench.py`'s ceiling. CPU seconds per process over each plant say
where the work went (devnet, wallets, pools, PostgreSQL, this client).

    .venv/bin/python bench/replicas_bench.py --farmers 500 --replicas 1 2 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from figures import write_figures
from plant_bench import (
    Stack,
    _parts,
    _spent,
    ceiling,
    common_arguments,
    funded_keys,
    onboard,
    plant_block,
    when_due,
)

from kalepool.app.operator import OperatorClient
from kalepool.v1 import pool_pb2


@dataclass
class Replica:
    """One pool process and the wallet process it calls."""

    pool_address: str
    pool_pid: int
    wallet_pid: int
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)


@dataclass
class Run:
    """One K: the plant of N farmers over K replicas, and the ceiling beside it."""

    replicas: int
    farmers: int
    planted: int
    plant_seconds: float
    plant_ledgers: int
    ceiling_seconds: float
    ceiling_ledgers: int
    cpu: dict[str, float]

    @property
    def ratio(self) -> float:
        return (self.planted / self.plant_seconds) / (self.farmers / self.ceiling_seconds)

    def line(self) -> str:
        return (
            f"K={self.replicas} N={self.farmers}: {self.planted} planted in"
            f" {self.plant_seconds:.1f} s ({self.planted / self.plant_seconds:.1f}/s) over"
            f" {self.plant_ledgers} ledgers; ceiling {self.ceiling_seconds:.1f} s over"
            f" {self.ceiling_ledgers} ledgers ({self.farmers / self.ceiling_seconds:.1f} tx/s);"
            f" ratio {self.ratio:.3f}\n  CPU s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.cpu.items()))
        )


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.5)
    raise SystemExit(f"nothing listens on {port}")


async def start_replica(stack: Stack, index: int) -> Replica:
    """Another wallet and pool, with the environment `up` gave its own, other ports."""
    wallet_env = _environ(stack.state.processes["wallet"].pid)
    pool_env = _environ(stack.state.processes["pool"].pid)
    wallet_port, pool_port = _free_port(), _free_port()
    wallet_env |= {
        "KALE_POOL_WALLET_LISTEN": f"127.0.0.1:{wallet_port}",
        "KALE_POOL_METRICS_PORT": str(_free_port()),
    }
    pool_env |= {
        "KALE_POOL_POOL_LISTEN": f"127.0.0.1:{pool_port}",
        "KALE_POOL_WALLET_LISTEN": f"127.0.0.1:{wallet_port}",
        "KALE_POOL_METRICS_PORT": str(_free_port()),
    }
    deadline = time.monotonic() + 120
    procs = []
    for name, env in (("wallet_service", wallet_env), ("pool_service", pool_env)):
        log = (stack.base / f"{name}-{index}.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", name, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        )
        await _listening(wallet_port if name == "wallet_service" else pool_port, deadline)
    address = f"127.0.0.1:{pool_port}"
    while True:
        try:
            async with OperatorClient(stack.settings, address=address, timeout=5) as op:
                await op.pool.ListPoolers(pool_pb2.ListPoolersRequest(), timeout=5)
            break
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    return Replica(address, procs[1].pid, procs[0].pid, procs)


async def stop_replica(replica: Replica) -> None:
    for proc in reversed(replica.procs):
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()


def cpu_by_process(stack: Stack, replicas: list[Replica]) -> dict[str, float]:
    """CPU seconds (user + system) of each process: pool i and wallet i by replica, the
    PostgreSQL processes summed, this client too."""
    names = {stack.proc.pid: "up supervisor"}
    for i, r in enumerate(replicas, 1):
        names |= {r.pool_pid: f"pool {i}", r.wallet_pid: f"wallet {i}"}
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    found = [*_parts(os.getpid(), stack.data), ("up supervisor", stack.proc.pid)]
    for part, pid in found:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(pid, part)
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    me = resource.getrusage(resource.RUSAGE_SELF)
    used["bench client"] = me.ru_utime + me.ru_stime
    return used


async def bench(args: argparse.Namespace) -> list[Run]:
    n, counts = args.farmers, args.replicas
    runs: list[Run] = []
    async with Stack(args, n * len(counts)) as stack:
        first = stack.state.processes
        replicas = [Replica(stack.state.pool_address, first["pool"].pid, first["wallet"].pid)]
        try:
            poolers: dict[int, list[tuple[str, str, int]]] = {}  # K -> (name, key, farmers)
            async with stack.operator() as op:
                for k in counts:
                    poolers[k] = []
                    for j in range(k):
                        share = n // k + (1 if j < n % k else 0)
                        name = f"k{k}-{j + 1}"
                        made = await stack.pooler(op, name)
                        done = await onboard(
                            op,
                            stack.chain,
                            stack.bot,
                            made.pooler.pooler_id,
                            share,
                            args.concurrency,
                            lambda: {},
                        )
                        print(f"{name}: {done.line().splitlines()[0]}", flush=True)
                        poolers[k].append((name, made.api_key, share))
            keys = await funded_keys(stack.chain, stack.bot, n)
            for k in counts:
                while len(replicas) < k:
                    replicas.append(await start_replica(stack, len(replicas) + 1))
                    print(f"replica {len(replicas)} up at {replicas[-1].pool_address}")
                stubs = [
                    stack.pooler_stub(name, replicas[j].pool_address)
                    for j, (name, _, _) in enumerate(poolers[k])
                ]
                c_seconds, c_ledgers = await ceiling(stack.chain, keys)
                block = await when_due(stack.chain)
                cpu0, started = cpu_by_process(stack, replicas), time.monotonic()
                got = await asyncio.gather(
                    *(
                        plant_block(stub, key, block, share)
                        for (_, stub), (_, key, share) in zip(stubs, poolers[k], strict=True)
                    )
                )
                seconds = time.monotonic() - started
                cpu1 = cpu_by_process(stack, replicas)
                ledgers = [ledger for found, _ in got for ledger in found]
                spanned = max(ledgers) - min(ledgers) + 1 if ledgers else 0
                run = Run(
                    k, n, len(ledgers), seconds, spanned, c_seconds, c_ledgers, _spent(cpu0, cpu1)
                )
                print(run.line(), flush=True)
                runs.append(run)
                for channel, _ in stubs:
                    await channel.close()
        finally:
            for replica in replicas[1:]:
                await stop_replica(replica)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, default=500, help="N, split among the poolers")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    common_arguments(parser)
    args = parser.parse_args(argv)
    runs = asyncio.run(bench(args))
    write_figures(args.json, [asdict(r) | {"ratio": r.ratio} for r in runs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
