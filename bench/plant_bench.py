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
  sent to the same devnet at once and followed to their ledgers, in the same run;
- **plant ceiling**: N independent `plant` calls (one per fresh account holding KALE,
  each staking some, paid and signed by the farmer as the wallet does), built and
  simulated with the chain client's own builders the moment a block is due (a plant's
  footprint names the block it opens), then, with the clock started, sent all at once
  and followed to their ledgers: what the devnet alone can apply of the same kind of
  transaction, in its own block.

It prints the plant rate (farmers/s), both ceilings (transactions/s) and the ratios, and
the CPU seconds each process of the stack spent: during the backend's plant, and during
the plant ceiling's simulations and its application (the devnet's alone is the chain's
cost per plant). No assertion: absolute times depend on what else runs on the machine.

    .venv/bin/python bench/plant_bench.py --farmers 200 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from figures import write_figures
from stellar_sdk import Account, Asset, Keypair, TransactionBuilder, TransactionEnvelope
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from kalepool.amounts import exact_kale
from kalepool.app.demo import confirm_funding
from kalepool.app.funding import KALE, Friendbot, ensure_account, ensure_trustline, wait_for_account
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import PoolerBundle, provision_pooler
from kalepool.app.runstate import RunState
from kalepool.chain import (
    ChainClient,
    SignedTx,
    build_plant,
    current_block,
    read_account,
    sign,
    submit,
)
from kalepool.chain.config import resolve_chain_config
from kalepool.settings import Network, Settings
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import pool_pb2, pooler_pb2, pooler_pb2_grpc

T = TypeVar("T")

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


@dataclass
class PlantCeiling:
    """N plants the devnet applied with no backend in between: built and simulated
    (`prepare_*`), then sent at once and followed to their ledgers."""

    plants: int
    seconds: float
    ledgers: int
    in_first_two: int  # applied in the block's first two ledgers
    prepare_seconds: float
    prepare_cpu: dict[str, float]  # CPU seconds by process while building and simulating
    cpu: dict[str, float]  # ... while sending and applying

    @property
    def rate(self) -> float:
        return self.plants / self.seconds

    def line(self) -> str:
        devnet = self.cpu.get("devnet", 0.0)
        simulate = self.prepare_cpu.get("devnet", 0.0)
        return (
            f"  plant ceiling: {self.plants} in {self.seconds:5.1f} s over {self.ledgers}"
            f" ledgers ({self.rate:6.1f} tx/s; {self.in_first_two} in the first two), prepared"
            f" in {self.prepare_seconds:.1f} s\n  plant ceiling devnet CPU: apply"
            f" {devnet:.1f} s ({devnet / self.plants * 1e3:.1f} ms/plant), simulate"
            f" {simulate:.1f} s ({simulate / self.plants * 1e3:.1f} ms/plant)\n"
            f"  plant ceiling apply {_cpu(self.cpu)}\n  plant ceiling simulate"
            f" {_cpu(self.prepare_cpu)}"
        )


@dataclass
class Run:
    """One N: the plant and the ceilings measured beside it."""

    farmers: int
    planted: int
    plant_seconds: float
    plant_ledgers: int
    ceiling_seconds: float
    ceiling_ledgers: int
    # Added with the plant ceiling (the fields above are the bench's first figures).
    plant_in_first_two: int = 0  # pails in the block's first two ledgers
    plant_cpu: dict[str, float] = field(default_factory=dict)  # CPU s by process, the plant
    plant_ceiling: PlantCeiling | None = None

    @property
    def plant_rate(self) -> float:
        return self.planted / self.plant_seconds

    @property
    def ceiling_rate(self) -> float:
        return self.farmers / self.ceiling_seconds

    @property
    def ratio(self) -> float:
        return self.plant_rate / self.ceiling_rate

    @property
    def plant_ratio(self) -> float | None:
        """The plant rate against the plant ceiling's."""
        return None if self.plant_ceiling is None else self.plant_rate / self.plant_ceiling.rate

    def line(self) -> str:
        text = (
            f"N={self.farmers:5d}  plant: {self.planted} in {self.plant_seconds:6.1f} s over "
            f"{self.plant_ledgers:3d} ledgers ({self.plant_rate:6.1f}/s;"
            f" {self.plant_in_first_two} in the first two)  ceiling: "
            f"{self.ceiling_seconds:5.1f} s over {self.ceiling_ledgers} ledgers "
            f"({self.ceiling_rate:6.1f} tx/s)  ratio {self.ratio:.3f}"
        )
        if self.plant_cpu:
            text += f"\n  plant {_cpu(self.plant_cpu)}"
        if self.plant_ceiling is not None:
            text += f"\n{self.plant_ceiling.line()}\n  ratio to the plant ceiling"
            text += f" {self.plant_ratio:.3f}"
        return text

    def figures(self) -> dict[str, Any]:
        """The JSON figures: the fields and the ratios."""
        rate = None if self.plant_ceiling is None else self.plant_ceiling.rate
        return asdict(self) | {
            "ratio": self.ratio,
            "plant_ceiling_rate": rate,
            "plant_ratio": self.plant_ratio,
        }


def stack_env(data: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALE_POOL_", "DATABASE_URL"))}
    biggest = str(getattr(args, "capacity", None) or max(args.farmers))
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


# The processes of `kale-pool up`, told apart by their command line (the first match).
PARTS = (
    ("devnet", "kalepool.app.cli devnet"),
    ("wallet", "-m wallet_service"),
    ("pool", "-m pool_service"),
    ("pooler agent", "kalepool.app.cli pooler"),
    ("postgres", "postgres"),
)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc: Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _parts(pid: int, data: Path) -> list[tuple[str, int]]:
    """(part, pid) of every process of the stack: those below `pid` and those naming its
    data directory (PostgreSQL's server leaves the process tree when it starts)."""
    found = []
    below = set(_descendants(pid))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(data) in _cmdline(int(entry.name)):
            below.update([int(entry.name), *_descendants(int(entry.name))])
    for child in sorted(below):
        cmdline = _cmdline(child)
        part = next((name for name, mark in PARTS if mark in cmdline), None)
        if part is not None:
            found.append((part, child))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def peak_rss(pid: int, data: Path) -> dict[str, int]:
    """Peak resident memory (VmHWM, bytes) of each part of the stack; for PostgreSQL,
    several processes sharing their buffers, the largest of them (a sum would count the
    shared pages once per process)."""
    peaks: dict[str, int] = {}
    for part, child in _parts(pid, data):
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        hwm = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
        if hwm is not None:
            peaks[part] = max(peaks.get(part, 0), int(hwm.split()[1]) * 1024)
    return peaks


def cpu_seconds(pid: int, data: Path) -> dict[str, float]:
    """CPU time (user + system) each part of the stack has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for part, child in _parts(pid, data):
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[part] = used.get(part, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def print_peak_rss(peaks: dict[str, int]) -> None:
    print("peak RSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(peaks.items())))


class Stack:
    """`kale-pool up --no-demo` in a temporary directory, a chain client and the
    friendbot: what every bench here starts from."""

    def __init__(self, args: argparse.Namespace, farmers: int) -> None:
        self.args = args
        self.farmers = farmers
        self.base = Path(tempfile.mkdtemp(prefix="kale-pool-bench-"))
        self.data = self.base / "data"

    async def __aenter__(self) -> Stack:
        self.args.capacity = self.farmers
        self.proc, self.state = await start_stack(self.data, self.args)
        self.settings = Settings(  # type: ignore[call-arg]
            network=Network.DEVNET, data_dir=self.data, rpc_url=self.state.rpc_url, _env_file=None
        )
        self.chain = ChainClient(await resolve_chain_config(self.settings), poll_interval=1.0)
        bot = await Friendbot.for_network(self.settings, self.state.rpc_url)
        assert bot is not None
        self.bot = bot
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bot.close()
        await self.chain.aclose()
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print(f"kept {self.base}")

    def operator(self) -> OperatorClient:
        return OperatorClient(self.settings, address=self.state.pool_address, timeout=120)

    async def pooler(self, op: OperatorClient, name: str = "bench") -> Any:
        """A pooler for every farmer of the run (its account funded by the friendbot)."""
        return await provision_pooler(
            op,
            self.settings,
            name,
            pool_address=self.state.pool_address,
            rpc_url=self.state.rpc_url,
            chain=self.chain,
            friendbot=self.bot,
            max_farmers=self.farmers,
        )

    def pooler_stub(
        self, name: str = "bench", address: str | None = None
    ) -> tuple[grpc.aio.Channel, Any]:
        """Pooler `name`'s client of the pool at `address` (the stack's pool unless named)."""
        bundle = PoolerBundle.of(self.settings, name)
        channel = grpc.aio.secure_channel(
            address or self.state.pool_address,
            channel_credentials(
                Identity(bundle.cert.read_bytes(), bundle.key.read_bytes()), bundle.ca.read_bytes()
            ),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )
        return channel, pooler_pb2_grpc.PoolerServiceStub(channel)

    def peak_rss(self) -> dict[str, int]:
        return peak_rss(self.proc.pid, self.data)

    def cpu(self) -> dict[str, float]:
        return cpu_seconds(self.proc.pid, self.data)


# Create-account operations per transaction (the network's limit is 100).
OPS_PER_TX = 100


async def create_accounts(
    chain: ChainClient, bot: Friendbot, addresses: list[str], xlm: int = 50
) -> None:
    """Create `addresses` with `xlm` XLM each: a friendbot-funded account per hundred,
    each sending one transaction of a hundred create-account operations, all at once
    (the friendbot alone funds 32 accounts a ledger: 2,000 would take a minute's ledgers)."""
    chunks = [addresses[i : i + OPS_PER_TX] for i in range(0, len(addresses), OPS_PER_TX)]
    funders = [Keypair.random() for _ in chunks]
    await gather_limited(32, [ensure_account(chain, bot, f.public_key) for f in funders])

    async def one(funder: Keypair, chunk: list[str]) -> None:
        builder = await _funder_builder(chain, funder)
        for address in chunk:
            builder.append_create_account_op(address, str(xlm))
        tx = builder.build()
        tx.sign(funder)
        await send_batch(chain, tx, "creating accounts")

    await asyncio.gather(*(one(f, c) for f, c in zip(funders, chunks, strict=True)))


async def _funder_builder(chain: ChainClient, funder: Keypair) -> TransactionBuilder:
    """A transaction of the funder's, its operations to be appended (many accounts a
    transaction: fewer to send)."""
    acc = await read_account(chain, funder.public_key)
    assert acc is not None
    return TransactionBuilder(
        Account(funder.public_key, acc.sequence), chain.config.network_passphrase, base_fee=100
    ).set_timeout(120)


async def send_batch(chain: ChainClient, tx: TransactionEnvelope, what: str) -> None:
    """Send a signed transaction of many operations and wait until it applies (by hand:
    the chain client's submission takes one operation)."""
    sent = await chain.rpc.send_transaction(tx)
    if sent.status != SendTransactionStatus.PENDING:
        raise SystemExit(f"{what} refused: {sent.status} {sent.error_result_xdr}")
    while True:
        await asyncio.sleep(1)
        got = await chain.rpc.get_transaction(sent.hash)
        if got.status == GetTransactionStatus.SUCCESS:
            return
        if got.status != GetTransactionStatus.NOT_FOUND:
            raise SystemExit(f"{what} failed: {got.status} {got.result_xdr}")


# Accounts given KALE per transaction: each signs its trustline, and an envelope holds 20
# signatures at most (the funder's is one).
KALE_PER_TX = 19


async def give_kale(chain: ChainClient, bot: Friendbot, keys: list[Keypair], stroops: int) -> None:
    """A KALE trustline and `stroops` of KALE for each of `keys` (existing accounts): a
    funder per nineteen, given the KALE by the friendbot, sends one transaction of their
    trustlines (each signed by its account) and payments, all at once."""
    chunks = [keys[i : i + KALE_PER_TX] for i in range(0, len(keys), KALE_PER_TX)]
    funders = [Keypair.random() for _ in chunks]

    async def funder_ready(funder: Keypair, chunk: list[Keypair]) -> None:
        await ensure_account(chain, bot, funder.public_key)
        await ensure_trustline(chain, funder)
        await bot.kale_stroops(funder.public_key, stroops * len(chunk))
        await wait_for_account(chain, funder.public_key, kale_at_least=stroops * len(chunk))

    await gather_limited(16, [funder_ready(f, c) for f, c in zip(funders, chunks, strict=True)])
    amount = exact_kale(stroops)

    async def one(funder: Keypair, chunk: list[Keypair]) -> None:
        builder = await _funder_builder(chain, funder)
        for key in chunk:
            builder.append_change_trust_op(chain.config.asset, source=key.public_key)
            builder.append_payment_op(key.public_key, chain.config.asset, amount)
        tx = builder.build()
        for signer in (funder, *chunk):
            tx.sign(signer)
        await send_batch(chain, tx, "giving KALE")

    await asyncio.gather(*(one(f, c) for f, c in zip(funders, chunks, strict=True)))


@dataclass
class Onboarded:
    """N farmers registered, their accounts created, their funding confirmed."""

    farmers: int
    farmer_ids: list[str]
    register_seconds: float
    fund_seconds: float
    confirm_seconds: float
    # CPU seconds each process used while registering and while confirming.
    register_cpu: dict[str, float]
    confirm_cpu: dict[str, float]

    def line(self) -> str:
        n = self.farmers
        return (
            f"N={n:5d}  RegisterFarmer: {self.register_seconds:6.1f} s"
            f" ({n / self.register_seconds:6.1f}/s)  accounts created: {self.fund_seconds:5.1f} s"
            f"  ConfirmFunding: {self.confirm_seconds:6.1f} s ({n / self.confirm_seconds:6.1f}/s)"
            f"\n  register {_cpu(self.register_cpu)}\n  confirm {_cpu(self.confirm_cpu)}"
        )


def _cpu(used: dict[str, float]) -> str:
    return "CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items()))


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


async def onboard(
    op: OperatorClient,
    chain: ChainClient,
    bot: Friendbot,
    pooler_id: str,
    n: int,
    concurrency: int,
    cpu: Callable[[], dict[str, float]],
) -> Onboarded:
    """Register N farmers, create their custodial accounts, confirm their funding (the
    KALE trustline), each step for all N before the next, `concurrency` calls at once."""

    async def register() -> pool_pb2.RegisterFarmerResponse:
        return await op.pool.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler_id, payout_address=Keypair.random().public_key
            ),
            timeout=120,
        )

    cpu0, started = cpu(), time.monotonic()
    made = await gather_limited(concurrency, [register() for _ in range(n)])
    cpu1, registered = cpu(), time.monotonic()
    await create_accounts(chain, bot, [m.custodial_address for m in made])
    cpu2, funded = cpu(), time.monotonic()
    ids = [m.farmer.farmer_id for m in made]
    retried = 0

    async def confirm(farmer_id: str) -> None:
        # UNAVAILABLE says "retry" (the call is idempotent); counted, and printed.
        nonlocal retried
        for _ in range(5):
            try:
                await confirm_funding(op, farmer_id, 1.0)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                retried += 1
                print(f"  ConfirmFunding retried: {exc.details()}", flush=True)
        raise SystemExit(f"ConfirmFunding of {farmer_id} stayed unavailable")

    await gather_limited(concurrency, [confirm(i) for i in ids])
    cpu3, confirmed = cpu(), time.monotonic()
    return Onboarded(
        n,
        ids,
        registered - started,
        funded - registered,
        confirmed - funded,
        _spent(cpu0, cpu1),
        _spent(cpu2, cpu3),
    )


async def funded_keys(chain: ChainClient, bot: Friendbot, n: int) -> list[Keypair]:
    keys = [Keypair.random() for _ in range(n)]
    await create_accounts(chain, bot, [k.public_key for k in keys])
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


def in_first_two(ledgers: list[int]) -> int:
    """How many of a block's pails landed in its first two ledgers (the first pail's
    ledger opened the block)."""
    return sum(1 for ledger in ledgers if ledger <= min(ledgers) + 1) if ledgers else 0


async def plant_ceiling(
    chain: ChainClient, keys: list[Keypair], stake: int, cpu: Callable[[], dict[str, float]]
) -> PlantCeiling:
    """N independent plants, one per account of `keys` (each holding at least `stake`
    stroops of KALE), each paid and signed by its farmer as the wallet's are. Built and
    simulated once a block is due (a plant's footprint names the block it would open, and
    nobody else plants here), with time bounds wide enough for them all; then, clock
    started, sent at once and followed to their ledgers."""
    await when_due(chain)
    cpu0, started = cpu(), time.monotonic()
    accounts = await gather_limited(64, [read_account(chain, k.public_key) for k in keys])
    now = (await chain.latest_ledger()).close_time
    max_time = now + 600

    async def build(key: Keypair, acc: Any) -> SignedTx:
        assert acc is not None
        assert stake == 0 or (acc.kale is not None and acc.kale.balance >= stake)
        account = Account(key.public_key, acc.sequence)
        return sign(
            await build_plant(
                chain, key.public_key, stake, source=account, now=now, max_time=max_time
            ),
            key,
        )

    signed = await gather_limited(16, [build(k, a) for k, a in zip(keys, accounts, strict=True)])
    cpu1, prepared = cpu(), time.monotonic()
    prepare_seconds, started = prepared - started, prepared
    outcomes = await asyncio.gather(*(submit(chain, s) for s in signed))
    seconds = time.monotonic() - started
    cpu2 = cpu()
    bad = [o.describe() for o in outcomes if not o.ok]
    if bad:
        raise SystemExit(f"ceiling plants failed ({len(bad)}): {bad[:3]}")
    ledgers = [o.ledger or 0 for o in outcomes]
    return PlantCeiling(
        len(keys),
        seconds,
        max(ledgers) - min(ledgers) + 1,
        in_first_two(ledgers),
        prepare_seconds,
        _spent(cpu0, cpu1),
        _spent(cpu1, cpu2),
    )


async def when_due(chain: ChainClient) -> int:
    """Wait until the current block is due; the block a plant now opens."""
    while True:
        block = await current_block(chain)
        latest = await chain.latest_ledger()
        target = block.plant_target(latest.close_time)
        if target == block.index + 1:
            return target
        await asyncio.sleep(0.2)


async def plant(
    stub: Any, key: str, chain: ChainClient, n: int, cpu: Callable[[], dict[str, float]]
) -> tuple[list[int], float, dict[str, float]]:
    """(the ledger of each planted pail, seconds until the last pail's assignment, CPU
    seconds by process meanwhile), the plant sent the moment a block is due."""
    block = await when_due(chain)
    before = cpu()
    ledgers, seconds = await plant_block(stub, key, block, n)
    return ledgers, seconds, _spent(before, cpu())


async def plant_block(stub: Any, key: str, block: int, n: int) -> tuple[list[int], float]:
    """(the ledger of each planted pail, seconds until the last pail's assignment).

    `RequestPlant` answers once the plants are sent; each planted farmer then shows as an
    assignment of the block (what a pooler's stream carries), looked for every 0.5 s."""
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
    return ledgers, seconds


async def bench(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    biggest = max(args.farmers)
    stake = args.stake_kale * KALE
    async with Stack(args, biggest) as stack:
        made = await onboarded_pooler(stack, biggest, args.concurrency)
        keys = await funded_keys(stack.chain, stack.bot, biggest)
        if args.plant_ceiling and stake > 0:
            # Each account plants once per N: enough KALE for every stake.
            await give_kale(stack.chain, stack.bot, keys, stake * len(args.farmers))
        channel, stub = stack.pooler_stub()
        for n in args.farmers:
            c_seconds, c_ledgers = await ceiling(stack.chain, keys[:n])
            pc = None
            if args.plant_ceiling:
                pc = await plant_ceiling(stack.chain, keys[:n], stake, stack.cpu)
            ledgers, p_seconds, p_cpu = await plant(stub, made.api_key, stack.chain, n, stack.cpu)
            spanned = max(ledgers) - min(ledgers) + 1 if ledgers else 0
            run = Run(
                n,
                len(ledgers),
                p_seconds,
                spanned,
                c_seconds,
                c_ledgers,
                in_first_two(ledgers),
                p_cpu,
                pc,
            )
            print(run.line(), flush=True)
            runs.append(run)
        await channel.close()
        print_peak_rss(stack.peak_rss())
    return runs


async def onboarded_pooler(stack: Stack, n: int, concurrency: int) -> Any:
    """One pooler registered on the stack with `n` farmers onboarded to it (registered,
    funded, confirmed; the line printed): the pooler as `Stack.pooler` made it."""
    async with stack.operator() as op:
        made = await stack.pooler(op)
        onboarded = await onboard(
            op, stack.chain, stack.bot, made.pooler.pooler_id, n, concurrency, stack.cpu
        )
    print(onboarded.line(), flush=True)
    return made


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The stack's options, shared by the benches here."""
    parser.add_argument("--ledger-seconds", type=int, default=5)
    parser.add_argument("--block-seconds", type=int, default=240)
    parser.add_argument(
        "--concurrency", type=int, default=1000, help="onboarding calls at once (the client's)"
    )
    parser.add_argument("--env", nargs="*", default=[], help="KALE_POOL_X=Y for the stack")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, nargs="+", default=[200, 500])
    parser.add_argument(
        "--no-plant-ceiling",
        dest="plant_ceiling",
        action="store_false",
        help="skip the ceiling of N plants (a block of its own per N)",
    )
    parser.add_argument(
        "--stake-kale",
        type=int,
        default=1,
        help="each ceiling plant's stake, in KALE (0: no KALE moves, as for this bench's"
        " farmers, who hold none)",
    )
    common_arguments(parser)
    args = parser.parse_args(argv)
    if args.stake_kale < 0:
        parser.error("--stake-kale must be 0 or more")
    runs = asyncio.run(bench(args))
    write_figures(args.json, [r.figures() for r in runs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
