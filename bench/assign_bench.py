"""Plant-to-assignment latency on the StreamAssignments stream, beside a bare gRPC stream.

The pool's test stage (`bench/poolkit.py`: embedded PostgreSQL, in-process devnet, the
real wallet and pool servers over mutual TLS), 10 poolers x 200 farmers registered
through the API. The poolers' clients run in a separate process: 10 `StreamAssignments`
streams, one per pooler, each presenting its pooler's certificate and API key.

- **feed**: every farmer's plant of the block recorded the way the planter records a
  wallet's answer (`PlantingStore.open_plant_requests`, then `record_planting` in one
  transaction, then the feed woken: `Planter`'s `on_planted`, `Feeds.notify`), all 2,000
  at once, 64 in flight (a block's first ledger answering every plant together);
  latency = the stream delivering the assignment - the record's commit (wall clocks of
  the two processes, one machine);
- **reference**: a bare `grpc.aio` server in the same process as the pool, the same
  mutual TLS, 10 server-streaming calls from the client process; 2,000 messages of an
  assignment's size pushed the same way (64 at once); latency = delivery - push.

The wallet's signing and the chain's ledger are not in this figure (`bench/plant_bench.py`
measures those); it is the pool's part from a recorded plant to the pooler's machine.

    .venv/bin/python bench/assign_bench.py --poolers 10 --farmers 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from figures import write_figures
from poolkit import Pooler, bench_database, ms, percentiles, register, staged_pool

from kalepool.chain import current_block, read_block
from kalepool.tls import POOL_SERVER, Identity, channel_credentials, server_credentials
from kalepool.v1 import pooler_pb2, pooler_pb2_grpc
from pool_service.books.enums import EventStatus
from pool_service.books.plantings import NewPlanting, PlantingStore
from pool_service.planting import plant_key
from tests.pool.conftest import PoolStage
from tests.waits import until

TARGET_P99 = 0.100
IN_FLIGHT = 64
BARE = "/kalepool.bench.Bare/Stream"
PAYLOAD = 200  # bytes: about an Assignment's size on the wire


# --- the client process --------------------------------------------------------------------


def clients(
    port: int,
    ca: bytes,
    streams: list[tuple[Identity, str]],
    bare_port: int,
    expect: dict[str, int],
    ready: Any,
    done: Any,
) -> None:
    """The poolers' machines: open the streams, report each arrival's wall time."""
    try:
        asyncio.run(_clients(port, ca, streams, bare_port, expect, ready, done))
    except BaseException as exc:  # the parent waits on the queues: tell it
        ready.put(exc)
        done.put(exc)
        raise


async def _clients(
    port: int,
    ca: bytes,
    streams: list[tuple[Identity, str]],
    bare_port: int,
    expect: dict[str, int],
    ready: Any,
    done: Any,
) -> None:
    arrived: dict[str, dict[int, float]] = {"feed": {}, "bare": {}}
    got = asyncio.Event()

    def channel(identity: Identity, where: int) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            f"127.0.0.1:{where}",
            channel_credentials(identity, ca),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )

    async def feed(identity: Identity, key: str) -> None:
        async with channel(identity, port) as ch:
            stub = pooler_pb2_grpc.PoolerServiceStub(ch)
            call = stub.StreamAssignments(
                pooler_pb2.StreamAssignmentsRequest(after_cursor=0),
                metadata=(("authorization", f"Bearer {key}"),),
            )
            async for message in call:
                arrived["feed"][message.assignment.cursor] = time.time()
                if len(arrived["feed"]) >= expect["feed"]:
                    got.set()

    async def bare(identity: Identity, i: int) -> None:
        async with channel(identity, bare_port) as ch:
            call = ch.unary_stream(BARE)(i.to_bytes(4, "big"))
            async for message in call:
                arrived["bare"][int.from_bytes(message[:8], "big")] = time.time()
                if len(arrived["bare"]) >= expect["bare"]:
                    got.set()

    tasks = [asyncio.create_task(feed(ident, key)) for ident, key in streams]
    tasks += [asyncio.create_task(bare(ident, i)) for i, (ident, _) in enumerate(streams)]
    ready.put("streams open")
    for which in ("feed", "bare"):
        got.clear()
        if len(arrived[which]) < expect[which]:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(got.wait(), 120)
    done.put(arrived)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the reference: a bare server-streaming server -----------------------------------------


class Bare:
    """One queue per stream; `push` stamps a message and hands it to its stream."""

    def __init__(self, streams: int) -> None:
        self.queues = [asyncio.Queue[bytes]() for _ in range(streams)]
        self.attached = 0
        self.sent: dict[int, float] = {}

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        queue = self.queues[int.from_bytes(request, "big")]
        self.attached += 1
        while True:
            yield await queue.get()

    async def push(self, n: int, stream: int) -> None:
        self.sent[n] = time.time()
        self.queues[stream].put_nowait(n.to_bytes(8, "big") + bytes(PAYLOAD - 8))


async def bare_server(bare: Bare, identity: Identity, ca: bytes) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(bare.stream)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("kalepool.bench.Bare", {"Stream": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(identity, ca))
    await server.start()
    return server, port


# --- the pool side -------------------------------------------------------------------------


async def open_block(stage: PoolStage, first: Pooler) -> tuple[int, int, int]:
    """A block opened by a real plant after another one finished (so the previous block
    can be asked about too): one funded farmer of `first` planted through RequestPlant in
    the current block, the chain's clock moved to the next block's time, and the farmer
    planted again, opening it. (block index, its latest ledger, plants of it so far)."""

    async def target() -> int:
        current = await current_block(stage.chain)
        return current.plant_target((await stage.chain.latest_ledger()).close_time)

    block = await target()
    await stage.funded_farmer(first.pooler_id)
    stub = stage.pooler()
    got = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=first.auth
    )
    assert got.summary.planted == 1, got
    now = await current_block(stage.chain)
    await stage.stage.advance(now.next_block_at - (await stage.chain.latest_ledger()).close_time)

    async def due() -> bool:
        current = await current_block(stage.chain)
        return current.can_open_next((await stage.chain.latest_ledger()).close_time)

    await until(due)
    block = await target()
    got = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=first.auth
    )
    assert got.summary.planted == 1, got
    assert await read_block(stage.chain, block) is not None
    latest = await stage.chain.latest_ledger()
    return block, latest.sequence, 1


async def record_all(
    stage: PoolStage, poolers: list[Pooler], block: int, ledger: int
) -> dict[int, float]:
    """Every farmer's plant recorded as the planter records it; the commit time of each."""
    assert stage.server is not None
    store = PlantingStore(stage.server.pool)
    notify = stage.server.feeds.notify
    gate = asyncio.Semaphore(IN_FLIGHT)
    committed: dict[int, float] = {}

    async def one(pooler_id: UUID, farmer_id: UUID) -> None:
        async with gate:
            (request,) = await store.open_plant_requests(
                pooler_id, block, [(farmer_id, plant_key(farmer_id, block), 0)]
            )
            outcome = NewPlanting(
                farmer_id=farmer_id,
                block_index=block,
                stake=0,
                status=EventStatus.SUCCESS,
                tx_hash=secrets.token_hex(32),
                ledger=ledger,
            )
            row, _ = await store.record_planting(request, outcome)
            assert row is not None
            committed[row.id] = time.time()
            notify(pooler_id)

    await asyncio.gather(*(one(UUID(p.pooler_id), UUID(f)) for p in poolers for f in p.farmer_ids))
    return committed


async def replay(bare: Bare, poolers: list[Pooler], schedule: list[float]) -> None:
    """The same number of messages, spread over the streams the same way, each pushed at
    the moment (relative to the first) the feed's matching plant was committed."""
    streams = [s for s, p in enumerate(poolers) for _ in p.farmer_ids]
    start = time.monotonic()
    for n, (offset, stream) in enumerate(zip(schedule, streams, strict=False), 1):
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await bare.push(n, stream)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with bench_database() as (_, conninfo):
        async with staged_pool(conninfo) as stage:
            assert stage.server is not None
            poolers = await register(stage, args.poolers, args.farmers)
            block, ledger, warm = await open_block(stage, poolers[0])
            await stage.wallet.closer.hold()  # the chain stands still: no ledger work meanwhile
            expect = args.poolers * args.farmers
            bare = Bare(args.poolers)
            server_identity = stage.pki.server(POOL_SERVER)
            bare_srv, bare_port = await bare_server(bare, server_identity, stage.pki.ca_pem)
            streams = [(stage.pki.client(p.cert), p.api_key) for p in poolers]
            counts = {"feed": expect + warm, "bare": expect}
            ctx = multiprocessing.get_context("spawn")
            ready, done = ctx.Queue(), ctx.Queue()
            child = ctx.Process(
                target=clients,
                args=(stage.server.port, stage.pki.ca_pem, streams, bare_port, counts, ready, done),
            )
            child.start()
            loop = asyncio.get_running_loop()
            if isinstance(got := await loop.run_in_executor(None, ready.get, True, 60), Exception):
                raise got
            feeds = stage.server.feeds
            await until(
                lambda: (
                    bare.attached == args.poolers
                    and all(feeds.connected(UUID(p.pooler_id)) for p in poolers)
                ),
                60,
                what="every stream open",
            )
            await asyncio.sleep(1.0)  # the warm-up plant's assignment delivered and settled
            started = time.monotonic()
            committed = await record_all(stage, poolers, block, ledger)
            print(f"recorded {len(committed)} plants in {time.monotonic() - started:.2f} s")
            await asyncio.sleep(2.0)
            first = min(committed.values())
            await replay(bare, poolers, sorted(t - first for t in committed.values()))
            arrived = await loop.run_in_executor(None, done.get, True, 180)
            if isinstance(arrived, Exception):
                raise arrived
            child.join(10)
            await bare_srv.stop(0)
            stage.wallet.closer.release()
    feed_lat = [arrived["feed"][i] - t for i, t in committed.items() if i in arrived["feed"]]
    bare_lat = [arrived["bare"][i] - t for i, t in bare.sent.items() if i in arrived["bare"]]
    feed, ref = percentiles(feed_lat), percentiles(bare_lat)
    print(f"\nplant recorded -> assignment delivered ({args.poolers} streams, {expect} plants)")
    print(f"  StreamAssignments : {ms(feed)}")
    print(f"  bare gRPC stream  : {ms(ref)}")
    print(f"  delivered {len(feed_lat)} of {expect} assignments")
    verdict = "PASS" if feed["p99"] < TARGET_P99 else "FAIL"
    print(f"  p99 ratio feed / bare: x{feed['p99'] / ref['p99']:.1f}")
    print(f"  target p99 < {TARGET_P99 * 1e3:.0f} ms: {verdict}")
    return {
        "poolers": args.poolers,
        "farmers_per_pooler": args.farmers,
        "in_flight": IN_FLIGHT,
        "feed_seconds": feed,
        "bare_seconds": ref,
        "delivered": len(feed_lat),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poolers", type=int, default=10)
    parser.add_argument("--farmers", type=int, default=200, help="per pooler")
    parser.add_argument("--json", type=Path, default=Path("bench/results/assignments.json"))
    args = parser.parse_args(argv)
    result = asyncio.run(bench(args))
    write_figures(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
