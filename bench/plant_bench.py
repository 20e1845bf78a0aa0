"""How fast one backend (pool + wallet) plants N farmers, beside the devnet's own ceiling.

Starts `kale-pool up --no-demo` (the services alone: embedded PostgreSQL, the devnet, the
wallet and the pool, each its own process) in a temporary data directory, then works only
through the public API, as a pooler and an operator would: one pooler, the largest N
farmers registered, funded with the devnet's friendbot and confirmed (`ConfirmFunding`).
For each N, in its own block:

- **plant**: one `RequestPlant` for N farmers the moment a block is due (the plant opens
  the next block); it answers once the plants are sent, and is timed until every planted
  farmer shows as an assignment of the block (its pail on chain, recorded by the pool;
  looked for every 0.5 s); the ledgers the pails landed in are counted;
- **ceiling**: N independent XLM payments (one per account, so no sequence conflicts)
  sent to the same devnet at once and followed to their ledgers, in the same run.

It prints the plant rate (farmers/s), the ceiling (transactions/s) and their ratio. No
assertion: absolute times depend on what else runs on the machine.

    .venv/bin/python bench/plant_bench.py --farmers 200 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from stellar_sdk import Account, Asset, Keypair, TransactionBuilder

from kalepool.app.demo import confirm_funding
from kalepool.app.funding import Friendbot, ensure_account
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import PoolerBundle, provision_pooler
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, SignedTx, current_block, read_account, submit
from kalepool.chain.config import resolve_chain_config
from kalepool.settings import Network, Settings
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import pool_pb2, pooler_pb2, pooler_pb2_grpc

T = TypeVar("T")

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


@dataclass
class Run:
    """One N: the plant and the ceiling measured beside it."""

    farmers: int
    planted: int
    plant_seconds: float
    plant_ledgers: int
    ceiling_seconds: float
    ceiling_ledgers: int

    @property
    def plant_rate(self) -> float:
        return self.planted / self.plant_seconds

    @property
    def ceiling_rate(self) -> float:
        return self.farmers / self.ceiling_seconds

    @property
    def ratio(self) -> float:
        return self.plant_rate / self.ceiling_rate

    def line(self) -> str:
        return (
            f"N={self.farmers:5d}  plant: {self.planted} in {self.plant_seconds:6.1f} s over "
            f"{self.plant_ledgers:3d} ledgers ({self.plant_rate:6.1f}/s)  ceiling: "
            f"{self.ceiling_seconds:5.1f} s over {self.ceiling_ledgers} ledgers "
            f"({self.ceiling_rate:6.1f} tx/s)  ratio {self.ratio:.3f}"
        )


def stack_env(data: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALE_POOL_", "DATABASE_URL"))}
    biggest = str(max(args.farmers))
    env.update(
        {
            "KALE_POOL_DATA_DIR": str(data),
            "KALE_POOL_DEVNET_PORT": "0",
            "KALE_POOL_WALLET_LISTEN": "127.0.0.1:0",
            "KALE_POOL_POOL_LISTEN": "127.0.0.1:0",
            "KALE_POOL_METRICS_PORT": "0",
            "KALE_POOL_WEB_LISTEN": "127.0.0.1:0",
            "KALE_POOL_DEVNET_LEDGER_SECONDS": str(args.ledger_seconds),
            "KALE_POOL_MAX_FARMERS_PER_POOLER": biggest,
            "KALE_POOL_MAX_FARMERS_CAPACITY": biggest,
            "KALE_POOL_RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000",
            "KALE_POOL_RATE_LIMIT_OPERATOR_PER_MINUTE": "1000000",
            "KALE_POOL_RATE_LIMIT_WALLET_PER_MINUTE": "1000000",
        }
    )
    env.update(dict(kv.split("=", 1) for kv in args.env))
    return env


async def start_stack(
    data: Path, args: argparse.Namespace
) -> tuple[asyncio.subprocess.Process, RunState]:
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    env = stack_env(data, args)
    log = (data.parent / "up.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL,
        "up",
        "--no-demo",
        "--block-seconds",
        str(args.block_seconds),
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    settings = Settings(network=Network.DEVNET, data_dir=data, _env_file=None)  # type: ignore[call-arg]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(f"kale-pool up exited ({proc.returncode}); see {log.name}")
        state = RunState.load(settings)
        if state is not None and state.pool_address and state.rpc_url:
            try:
                async with OperatorClient(settings, address=state.pool_address, timeout=5) as op:
                    await op.pool.ListPoolers(pool_pb2.ListPoolersRequest(), timeout=5)
                return proc, state
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(1)
    raise SystemExit("the stack did not come up in 300 s")


async def gather_limited(limit: int, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `coros`, at most `limit` at once (the setup, not what is measured)."""
    gate = asyncio.Semaphore(limit)

    async def one(c: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def register_farmers(
    op: OperatorClient, chain: ChainClient, bot: Friendbot, pooler_id: str, n: int
) -> None:
    async def one() -> None:
        made = await op.pool.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler_id, payout_address=Keypair.random().public_key
            ),
            timeout=60,
        )
        await ensure_account(chain, bot, made.custodial_address)
        await confirm_funding(op, made.farmer.farmer_id, 1.0)

    started = time.monotonic()
    await gather_limited(32, [one() for _ in range(n)])
    print(f"registered, funded and confirmed {n} farmers in {time.monotonic() - started:.1f} s")


async def funded_keys(chain: ChainClient, bot: Friendbot, n: int) -> list[Keypair]:
    keys = [Keypair.random() for _ in range(n)]
    await gather_limited(32, [ensure_account(chain, bot, k.public_key) for k in keys])
    return keys


async def ceiling(chain: ChainClient, keys: list[Keypair]) -> tuple[float, int]:
    """N independent payments sent at once: seconds until all applied, ledgers spanned."""
    passphrase = chain.config.network_passphrase
    accounts = await asyncio.gather(*(read_account(chain, k.public_key) for k in keys))
    signed = []
    for key, acc in zip(keys, accounts, strict=True):
        assert acc is not None
        tx = (
            TransactionBuilder(Account(key.public_key, acc.sequence), passphrase, base_fee=100)
            .append_payment_op(keys[0].public_key, Asset.native(), "0.0000001")
            .set_timeout(120)
            .build()
        )
        tx.sign(key)
        signed.append(SignedTx.from_envelope(tx.to_xdr(), passphrase))
    started = time.monotonic()
    outcomes = await asyncio.gather(*(submit(chain, s) for s in signed))
    seconds = time.monotonic() - started
    bad = [o.describe() for o in outcomes if not o.ok]
    if bad:
        raise SystemExit(f"ceiling payments failed: {bad[:3]}")
    ledgers = [o.ledger or 0 for o in outcomes]
    return seconds, max(ledgers) - min(ledgers) + 1


async def when_due(chain: ChainClient) -> int:
    """Wait until the current block is due; the block a plant now opens."""
    while True:
        block = await current_block(chain)
        latest = await chain.latest_ledger()
        target = block.plant_target(latest.close_time)
        if target == block.index + 1:
            return target
        await asyncio.sleep(0.2)


async def plant(stub: Any, key: str, chain: ChainClient, n: int) -> tuple[int, float, int]:
    """(planted, seconds until the last pail's assignment, ledgers spanned).

    `RequestPlant` answers once the plants are sent; each planted farmer then shows as an
    assignment of the block (what a pooler's stream carries), looked for every 0.5 s."""
    block = await when_due(chain)
    auth = (("authorization", f"Bearer {key}"),)
    started = time.monotonic()
    got = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block, max_farmers=n, answer_when_sent=True),
        metadata=auth,
        timeout=900,
    )
    answered = time.monotonic() - started
    s = got.summary
    print(
        f"  block {block}: answered in {answered:.1f} s: {s.planted} planted,"
        f" {s.pending} sent, {s.failed} failed"
    )
    wanted = s.planted + s.pending
    deadline = time.monotonic() + 300
    while True:
        listed = await stub.GetAssignments(
            pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=auth, timeout=60
        )
        ledgers = [a.plant_ledger for a in listed.assignments]
        if len(ledgers) >= wanted or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    seconds = time.monotonic() - started
    if len(ledgers) < n:
        print(f"  block {block}: {len(ledgers)} of {n} planted")
    spanned = max(ledgers) - min(ledgers) + 1 if ledgers else 0
    return len(ledgers), seconds, spanned


async def bench(args: argparse.Namespace) -> list[Run]:
    base = Path(tempfile.mkdtemp(prefix="plant-bench-"))
    data = base / "data"
    proc, state = await start_stack(data, args)
    runs: list[Run] = []
    try:
        settings = Settings(  # type: ignore[call-arg]
            network=Network.DEVNET, data_dir=data, rpc_url=state.rpc_url, _env_file=None
        )
        chain = ChainClient(await resolve_chain_config(settings), poll_interval=1.0)
        bot = await Friendbot.for_network(settings, state.rpc_url)
        assert bot is not None
        biggest = max(args.farmers)
        async with OperatorClient(settings, address=state.pool_address, timeout=60) as op:
            made = await provision_pooler(
                op,
                settings,
                "bench",
                pool_address=state.pool_address,
                rpc_url=state.rpc_url,
                chain=chain,
                friendbot=bot,
                max_farmers=biggest,
            )
            await register_farmers(op, chain, bot, made.pooler.pooler_id, biggest)
        keys = await funded_keys(chain, bot, biggest)
        bundle = PoolerBundle.of(settings, "bench")
        channel = grpc.aio.secure_channel(
            state.pool_address,
            channel_credentials(
                Identity(bundle.cert.read_bytes(), bundle.key.read_bytes()), bundle.ca.read_bytes()
            ),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )
        stub = pooler_pb2_grpc.PoolerServiceStub(channel)
        for n in args.farmers:
            c_seconds, c_ledgers = await ceiling(chain, keys[:n])
            planted, p_seconds, p_ledgers = await plant(stub, made.api_key, chain, n)
            run = Run(n, planted, p_seconds, p_ledgers, c_seconds, c_ledgers)
            print(run.line(), flush=True)
            runs.append(run)
        await channel.close()
        await bot.close()
        await chain.aclose()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--ledger-seconds", type=int, default=5)
    parser.add_argument("--block-seconds", type=int, default=240)
    parser.add_argument("--env", nargs="*", default=[], help="KALE_POOL_X=Y for the stack")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args(argv)
    runs = asyncio.run(bench(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
