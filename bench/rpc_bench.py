"""Latency of every PoolerService RPC under 10 poolers and 2,000 farmers, beside the
gRPC health check on the same server.

The pool's test stage (`bench/poolkit.py`), 10 poolers x 200 farmers registered through
the API, and every farmer's plant of the current block recorded as the planter records
it (`bench/assign_bench.py`). The poolers' machines run in a separate process, one
channel each (its own certificate and API key); for each RPC, all 10 call it at once,
`--calls` times each, one after another, and then the 10 call `grpc.health.v1.Health/Check`
on the same server (the operator's certificate: health is the operator's) the same way:
the reference, measured right after, under the same load. What each call asks:

- `Heartbeat`: an agent's figures;
- `GetAssignments`: the current block (200 assignments in the answer);
- `StreamAssignments`: a stream opened from cursor 0 until its 200th assignment (replay);
- `RequestPlant`: the current block again, every plant already recorded (a repeat);
- `ReportWork`: 200 results (one per farmer) still pending on chain (checked, acknowledged);
- `RequestHarvest`: the previous block, finished, nothing of the pooler's in it.

    .venv/bin/python bench/rpc_bench.py --poolers 10 --farmers 200 --calls 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).parent))
from assign_bench import open_block, record_all
from figures import write_figures
from poolkit import Pooler, bench_database, ms, percentiles, register, staged_pool

from kalepool.tls import OPERATOR, POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import pooler_pb2, pooler_pb2_grpc, records_pb2

RPCS = (
    "Heartbeat",
    "GetAssignments",
    "StreamAssignments",
    "RequestPlant",
    "ReportWork",
    "RequestHarvest",
)


def clients(
    port: int,
    ca: bytes,
    poolers: list[tuple[Identity, str, list[str]]],
    operator: Identity,
    block: int,
    calls: int,
    done: Any,
) -> None:
    """The poolers' machines: every RPC, then the health check, `calls` times each."""
    try:
        done.put(asyncio.run(_clients(port, ca, poolers, operator, block, calls)))
    except BaseException as exc:  # the parent waits on the queue: tell it
        done.put(exc)
        raise


async def _clients(
    port: int,
    ca: bytes,
    poolers: list[tuple[Identity, str, list[str]]],
    operator: Identity,
    block: int,
    calls: int,
) -> dict[str, dict[str, list[float]]]:
    def channel(identity: Identity) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            channel_credentials(identity, ca),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )

    pooler_channels = [channel(identity) for identity, _, _ in poolers]
    health_channels = [channel(operator) for _ in poolers]
    stubs = [pooler_pb2_grpc.PoolerServiceStub(ch) for ch in pooler_channels]
    health = [health_pb2_grpc.HealthStub(ch) for ch in health_channels]

    def call(rpc: str, i: int) -> Callable[[], Awaitable[Any]]:
        stub, (_, key, farmers) = stubs[i], poolers[i]
        auth = (("authorization", f"Bearer {key}"),)
        if rpc == "Heartbeat":
            request: Any = pooler_pb2.HeartbeatRequest(
                agent_version="bench", capacity=50, hashes_per_second=20_000_000, threads=2,
                mining_farmers=len(farmers), observed_block_index=block, cpu_percent=50,
                memory_percent=10,
            )  # fmt: skip
            return lambda: stub.Heartbeat(request, metadata=auth, timeout=30)
        if rpc == "GetAssignments":
            request = pooler_pb2.GetAssignmentsRequest(block_index=block)
            return lambda: stub.GetAssignments(request, metadata=auth, timeout=30)
        if rpc == "StreamAssignments":

            async def replay() -> None:
                stream = stub.StreamAssignments(
                    pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=auth
                )
                got = 0
                async for _ in stream:
                    got += 1
                    if got >= len(farmers):
                        break
                stream.cancel()

            return replay
        if rpc == "RequestPlant":
            request = pooler_pb2.RequestPlantRequest(block_index=block)
            return lambda: stub.RequestPlant(request, metadata=auth, timeout=60)
        if rpc == "ReportWork":
            request = pooler_pb2.ReportWorkRequest(
                block_index=block,
                results=[
                    pooler_pb2.WorkReport(farmer_id=f, status=records_pb2.EVENT_STATUS_PENDING)
                    for f in farmers
                ],
            )
            return lambda: stub.ReportWork(request, metadata=auth, timeout=60)
        if rpc == "RequestHarvest":
            request = pooler_pb2.RequestHarvestRequest(block_index=block - 1)
            return lambda: stub.RequestHarvest(request, metadata=auth, timeout=60)
        check = health[i].Check
        ask = health_pb2.HealthCheckRequest()
        return lambda: check(ask, timeout=30)

    async def worker(rpc: str, i: int, out: list[float]) -> None:
        one = call(rpc, i)
        for _ in range(calls):
            started = time.perf_counter()
            await one()
            out.append(time.perf_counter() - started)

    async def phase(rpc: str) -> list[float]:
        out: list[float] = []
        await asyncio.gather(*(worker(rpc, i, out) for i in range(len(poolers))))
        return out

    for rpc in (*RPCS, "Health"):  # warm every path once (channels, caches)
        await asyncio.gather(*(call(rpc, i)() for i in range(len(poolers))))
    results: dict[str, dict[str, list[float]]] = {}
    for rpc in RPCS:
        results[rpc] = {"rpc": await phase(rpc), "health": await phase("Health")}
    for ch in (*pooler_channels, *health_channels):
        await ch.close()
    return results


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with bench_database() as (_, conninfo):
        async with staged_pool(conninfo) as stage:
            assert stage.server is not None
            poolers: list[Pooler] = await register(stage, args.poolers, args.farmers)
            block, ledger, _ = await open_block(stage, poolers[0])
            started = time.monotonic()
            recorded = await record_all(stage, poolers, block, ledger)
            print(f"recorded {len(recorded)} plants in {time.monotonic() - started:.1f} s")
            await stage.wallet.closer.hold()  # the chain stands still: no ledger work meanwhile
            ctx = multiprocessing.get_context("spawn")
            done = ctx.Queue()
            child = ctx.Process(
                target=clients,
                args=(
                    stage.server.port,
                    stage.pki.ca_pem,
                    [(stage.pki.client(p.cert), p.api_key, p.farmer_ids) for p in poolers],
                    stage.pki.client(OPERATOR),
                    block,
                    args.calls,
                    done,
                ),
            )
            child.start()
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(None, done.get, True, 1800)
            if isinstance(results, Exception):
                raise results
            child.join(10)
            stage.wallet.closer.release()
    print(f"\n{args.poolers} poolers at once, {args.farmers} farmers each, {args.calls} calls each")
    summary: dict[str, Any] = {}
    for rpc, got in results.items():
        mine, ref = percentiles(got["rpc"]), percentiles(got["health"])
        summary[rpc] = {"rpc_seconds": mine, "health_seconds": ref}
        print(f"  {rpc:<18}: {ms(mine)}")
        print(f"  {'  health check':<18}: {ms(ref)}   p95 ratio x{mine['p95'] / ref['p95']:.1f}")
    return {
        "poolers": args.poolers,
        "farmers_per_pooler": args.farmers,
        "calls": args.calls,
        "cpus": os.cpu_count(),
        "rpcs": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poolers", type=int, default=10)
    parser.add_argument("--farmers", type=int, default=200, help="per pooler")
    parser.add_argument("--calls", type=int, default=30, help="per pooler and RPC")
    parser.add_argument("--json", type=Path, default=Path("bench/results/rpc.json"))
    args = parser.parse_args(argv)
    result = asyncio.run(bench(args))
    write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
