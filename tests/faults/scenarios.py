"""The fault matrix: for plant, work, harvest, payout and deposit, faults struck at the
moment they hurt most, into the real processes of `kale-pool up`.

Each scenario waits for its moment (read from the database, the chain or a pooler's
journal), strikes (SIGKILL of a process or of the whole machine, lost `sendTransaction`
answers, RPC errors, a ledger stall, a PostgreSQL restart, the pool frozen for a block,
a second pool replica racing, every plant refused), and leaves the farm running again
(restarting `kale-pool up` when the fault stopped it). It returns the block the fault
hit; `run_scenario` then measures recovery and the books (see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from kalepool.app.files import read_env_file
from kalepool.app.poolers import PoolerBundle
from kalepool.app.probes import free_port
from kalepool.app.stack import part_env
from kalepool.db.embedded import restart_embedded
from kalepool.db.roles import POOL, as_role
from kalepool.settings import ENV_PREFIX
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import pool_pb2, pooler_pb2, pooler_pb2_grpc
from tests.faults.harness import Farm, FarmError, journal_entries
from tests.stackkit import KALE_POOL

KALE = 10_000_000


@dataclass(frozen=True)
class Struck:
    """Where a fault hit: the block, and what it caught unrecorded (the evidence that it
    struck between the send and the record, not before or after)."""

    block: int
    caught: str


Strike = Callable[[Farm, random.Random], Awaitable[Struck]]

_UNSETTLED = "('prepared', 'submitted', 'pending')"


@dataclass(frozen=True)
class Scenario:
    """One row of the matrix."""

    name: str
    phase: str  # plant | work | harvest | payout | deposit
    strike: Strike
    quick: bool = False  # part of the fast subset the test suite runs


# ---- moments ----------------------------------------------------------------------------


async def _in_flight(farm: Farm, kind: str, within: float | None = None) -> int:
    """Wait until the wallet holds a `kind` transaction sent and not settled yet (the
    pool has not recorded its outcome); its block (0 for a payout)."""
    since = farm.query("SELECT coalesce(max(created_at), now()) FROM transactions")[0][0]
    found: list[int] = []

    async def sent() -> bool:
        got = farm.query(
            "SELECT coalesce(block_index, 0) FROM transactions WHERE kind = %s"
            f" AND status IN {_UNSETTLED} AND created_at > %s LIMIT 1",
            kind,
            since,
        )
        if got:
            found.append(int(got[0][0]))
        return bool(got)

    await farm.until(f"a {kind} in flight", sent, within or 4 * farm.block_seconds + 30, 0.02)
    return found[0]


_RECORDS = {"plant": "plantings", "harvest": "harvests"}


def unrecorded(farm: Farm, kind: str) -> int:
    """Right after a fault: the wallet's `kind` transactions the pool has not recorded
    (sent and unsettled, or settled with no event of the pool's for their hash)."""
    if kind == "payout":
        return int(farm.query("SELECT count(*) FROM payouts WHERE status = 'pending'")[0][0])
    table = _RECORDS[kind]
    return int(
        farm.query(
            f"SELECT count(*) FROM transactions t WHERE t.kind = %s AND NOT t.rejected"
            f" AND t.status <> 'expired' AND (t.status IN {_UNSETTLED}"
            f" OR NOT EXISTS (SELECT 1 FROM {table} e WHERE e.tx_hash = t.tx_hash))",
            kind,
        )[0][0]
    )


async def _restarted(farm: Farm) -> None:
    """`up` stops every part after one died: wait for it, and start it again."""
    await farm.ended()
    await farm.start()


def _jitter(rng: random.Random, most: float = 0.3) -> Awaitable[None]:
    """A random moment within the phase, not always its first instant."""
    return asyncio.sleep(rng.uniform(0, most))


# ---- plant ------------------------------------------------------------------------------


async def crash_while_planting(farm: Farm, rng: random.Random) -> Struck:
    """The whole machine loses power between the wallet's send and the pool's record."""
    block = await _in_flight(farm, "plant")
    farm.crash()  # at once: the plant seen in flight is still unrecorded
    caught = unrecorded(farm, "plant")
    await farm.ended()
    await farm.start()
    return Struck(block, f"{caught} plants sent, not recorded")


def kill_while(kind: str, part: str) -> Strike:
    async def strike(farm: Farm, rng: random.Random) -> Struck:
        if kind == "payout":
            payouts = asyncio.create_task(_request_payouts(farm))
        block = await _in_flight(farm, kind)
        await _jitter(rng)
        farm.signal(part)
        caught = unrecorded(farm, kind)
        if kind == "payout":
            with contextlib.suppress(Exception):
                await payouts
            block = await farm.current()
        await _restarted(farm)
        return Struck(
            block, f"{caught} {kind}s {'pending' if kind == 'payout' else 'sent, not recorded'}"
        )

    return strike


async def _request_payouts(farm: Farm) -> None:
    """Two farmers ask for a tenth of their balance (through the pool, as `farmer payout`)."""
    assert farm.op is not None
    listed = await farm.op.pool.ListFarmers(pool_pb2.ListFarmersRequest())
    chosen = [f for f in listed.farmers if f.balance_stroops >= 10 * KALE][:2]
    await asyncio.gather(
        *(
            farm.op.pool.RequestPayout(
                pool_pb2.RequestPayoutRequest(
                    farmer_id=f.farmer_id,
                    amount_stroops=f.balance_stroops // 10,
                    idempotency_key=f"fault-payout-{f.farmer_id}-{time.time_ns()}",
                ),
                timeout=60,
            )
            for f in chosen
        ),
        return_exceptions=True,
    )


async def lost_send_answers(farm: Farm, rng: random.Random) -> Struck:
    """Half of the `sendTransaction` answers never arrive, for a whole block."""

    def lost() -> int:  # the wallet marks a transaction `submitted` when its answer is lost
        got = farm.query("SELECT count(*) FROM transaction_events WHERE to_status = 'submitted'")
        return int(got[0][0])

    block = await farm.current()
    before = lost()
    await farm.devnet("devnet_setFaults", lost_send_rate=0.5, seed=rng.randrange(1 << 30))
    try:
        await farm.next_block()
        await asyncio.sleep(farm.block_seconds)
    finally:
        await farm.devnet("devnet_setFaults", lost_send_rate=0.0)
    return Struck(block, f"{lost() - before} wallet send answers lost")


async def rpc_errors(farm: Farm, rng: random.Random) -> Struck:
    """Three RPC calls in ten fail, for a whole block."""
    block = await farm.current()
    await farm.devnet("devnet_setFaults", error_rate={"*": 0.3}, seed=rng.randrange(1 << 30))
    try:
        await farm.next_block()
        await asyncio.sleep(farm.block_seconds)
    finally:
        await farm.devnet("devnet_setFaults", error_rate={})
    return Struck(block, f"3 in 10 calls failed for {farm.block_seconds * 2} s")


async def ledger_stall(farm: Farm, rng: random.Random) -> Struck:
    """No ledger closes for ten seconds, struck while plants are in flight."""
    block = await _in_flight(farm, "plant")
    await farm.devnet("devnet_setFaults", stall_seconds=10)
    caught = unrecorded(farm, "plant")
    await asyncio.sleep(11)
    return Struck(block, f"{caught} plants sent when ledgers stopped")


async def database_restart(farm: Farm, rng: random.Random) -> Struck:
    """PostgreSQL restarted while plants are in flight: every connection breaks."""
    block = await _in_flight(farm, "plant")
    await _jitter(rng, 0.1)
    caught = unrecorded(farm, "plant")
    if not await asyncio.to_thread(restart_embedded, farm.data / "postgres"):
        raise FarmError("the embedded PostgreSQL was not running")
    return Struck(block, f"{caught} plants sent, not recorded")


async def every_plant_refused(farm: Farm, rng: random.Random) -> Struck:
    """Every `sendTransaction` refused from just before a block is due, for a block and a
    half: no plant lands, so no block opens; then the fault clears."""
    assert farm.chain is not None
    from kalepool.chain import current_block

    now = await current_block(farm.chain)
    latest = await farm.chain.latest_ledger()
    await asyncio.sleep(max(0.0, now.next_block_at - latest.close_time - 2))
    await farm.devnet("devnet_setFaults", error_rate={"sendTransaction": 1.0})
    try:
        await asyncio.sleep(1.5 * farm.block_seconds)
        if await farm.current() != now.index:
            raise FarmError("a block opened while every plant was refused")
    finally:
        await farm.devnet("devnet_setFaults", error_rate={})
    return Struck(now.index, f"no block opened for {1.5 * farm.block_seconds:.0f} s")


# ---- work -------------------------------------------------------------------------------


async def kill_pooler_after_work_sent(farm: Farm, rng: random.Random) -> Struck:
    """A pooler SIGKILLed after it sent a work transaction and before the pool recorded it."""
    name = f"pooler-{rng.randrange(farm.poolers) + 1}"
    found: list[int] = []

    async def sent_unrecorded() -> bool:
        sent, reported = journal_entries(farm, name)
        for tx_hash, entry in sent.items():
            if tx_hash in reported:
                continue
            if not farm.query("SELECT 1 FROM works WHERE tx_hash = %s", tx_hash):
                found.append(int(entry["assignment"]["block_index"]))
                return True
        return False

    await farm.until(f"{name} sending work", sent_unrecorded, 4 * farm.block_seconds + 30, 0.02)
    farm.signal(name)
    sent, reported = journal_entries(farm, name)
    caught = sum(
        1
        for tx in sent
        if tx not in reported and not farm.query("SELECT 1 FROM works WHERE tx_hash = %s", tx)
    )
    await _restarted(farm)
    return Struck(found[0], f"{caught} works sent, not reported")


# ---- deposit ----------------------------------------------------------------------------


async def deposit_while_pool_down(farm: Farm, rng: random.Random) -> Struck:
    """The pool is SIGKILLed; while it is down, farmers deposit KALE on the chain; the
    pool starts again and must credit each deposit exactly once."""
    block = await farm.current()
    farm.signal("pool")
    await farm.ended()
    farmers = [
        str(a) for (a,) in farm.query("SELECT custodial_public_key FROM farmers ORDER BY id")
    ][:2]
    before = int(farm.query("SELECT count(*) FROM deposits")[0][0])
    await _deposit_on_a_chain_without_the_pool(farm, farmers, 7 * KALE)
    await farm.start()

    async def credited() -> bool:
        n = int(farm.query("SELECT count(*) FROM deposits")[0][0])
        if n > before + len(farmers):
            raise FarmError(f"{n - before} deposits credited for {len(farmers)} payments")
        return n == before + len(farmers)

    await farm.until("the deposits credited", credited, 60, 0.5)
    return Struck(block, f"{len(farmers)} deposits made while the pool was down")


async def _deposit_on_a_chain_without_the_pool(
    farm: Farm, addresses: list[str], stroops: int
) -> None:
    """Run the farm's chain alone (`kale-pool devnet` on its saved state) and mint KALE to
    `addresses` through its friendbot, as deposits made while the pool is down."""
    import aiohttp

    settings = farm.settings
    assert KALE_POOL is not None
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL,
        "devnet",
        "--port",
        "0",
        "--ledger-seconds",
        str(max(1, farm.block_seconds // 30)),
        "--block-seconds",
        str(farm.block_seconds),
        "--state",
        str(settings.layout().devnet_state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = first.rsplit(" ", 1)[-1].strip()
        async with aiohttp.ClientSession() as http:
            for address in addresses:
                async with http.get(
                    f"{url}/friendbot", params={"addr": address, "kale": str(stroops)}
                ) as r:
                    if r.status != 200:
                        raise FarmError(f"friendbot: {r.status} {await r.text()}")
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)


# ---- the pool ---------------------------------------------------------------------------


async def pool_frozen_for_a_block(farm: Farm, rng: random.Random) -> Struck:
    """The pool does not answer for a whole block (its process stopped, then continued)."""
    block = await farm.current()
    farm.signal("pool", signal.SIGSTOP)
    try:
        await asyncio.sleep(farm.block_seconds + 5)
    finally:
        farm.signal("pool", signal.SIGCONT)
    return Struck(block, f"the pool stopped for {farm.block_seconds + 5} s")


async def two_pool_replicas(farm: Farm, rng: random.Random) -> Struck:
    """A second pool process on the same database races the first: both run their
    reconciler, harvest loop, deposit follower and compensations, and the same poolers'
    plant requests reach both at once, for two blocks."""
    assert farm.state is not None
    settings = farm.settings.model_copy(update={"rpc_url": farm.state.rpc_url})
    port = free_port()
    env = part_env(settings, "pool")  # what `up` gives its own pool: no master key
    env.update(
        {
            "DATABASE_URL": as_role(farm.conninfo, POOL),  # the pool's own role, as in `up`
            f"{ENV_PREFIX}POOL_LISTEN": f"127.0.0.1:{port}",
            f"{ENV_PREFIX}WALLET_LISTEN": farm.state.wallet_address,
            f"{ENV_PREFIX}METRICS_PORT": str(free_port()),
        }
    )
    log = (farm.data / "logs" / "pool-replica.log").open("ab")
    replica = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pool_service", env=env, stdout=log, stderr=log
    )
    block = await farm.current()
    asked = 0
    try:
        stubs = [_pooler_stub(farm, f"pooler-{i}", f"127.0.0.1:{port}") for i in range(1, 3)]
        end = time.monotonic() + 2 * farm.block_seconds
        while time.monotonic() < end:
            index = await farm.current()
            # Whatever the agents ask of the first replica, ask the second too.
            for _channel, stub, key in stubs:
                for target in (index, index + 1):
                    asked += 1
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.RequestPlant(
                            pooler_pb2.RequestPlantRequest(block_index=target),
                            metadata=(("authorization", f"Bearer {key}"),),
                            timeout=30,
                        )
            await asyncio.sleep(rng.uniform(0.2, 1.0))
        for channel, _, _ in stubs:
            await channel.close()
    finally:
        replica.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(replica.wait(), 60)
        except TimeoutError:
            replica.kill()
            await replica.wait()
        log.close()
    return Struck(block, f"{asked} plant requests raced on the second replica")


def _pooler_stub(
    farm: Farm, name: str, address: str
) -> tuple[grpc.aio.Channel, pooler_pb2_grpc.PoolerServiceStub, str]:
    """A pooler's own credentials (its certificate and API key from its bundle)."""
    bundle = PoolerBundle.of(farm.settings, name)
    identity = Identity(bundle.cert.read_bytes(), bundle.key.read_bytes())
    channel = grpc.aio.secure_channel(
        address,
        channel_credentials(identity, bundle.ca.read_bytes()),
        options=[("grpc.ssl_target_name_override", POOL_SERVER)],
    )
    key = read_env_file(bundle.env_file)[f"{ENV_PREFIX}POOLER_API_KEY"]
    return channel, pooler_pb2_grpc.PoolerServiceStub(channel), key


# ---- the matrix -------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "plant: the whole machine crashes between the wallet's send and the pool's record",
        "plant",
        crash_while_planting,
        quick=True,
    ),
    Scenario(
        "plant: wallet SIGKILLed with plants in flight", "plant", kill_while("plant", "wallet")
    ),
    Scenario("plant: pool SIGKILLed with plants in flight", "plant", kill_while("plant", "pool")),
    Scenario(
        "plant: half the sendTransaction answers lost for a block", "plant", lost_send_answers
    ),
    Scenario("plant: PostgreSQL restarted with plants in flight", "plant", database_restart),
    Scenario("plant: no ledger closes for 10 s with plants in flight", "plant", ledger_stall),
    Scenario(
        "plant: every plant refused, no block opens, then the fault clears",
        "plant",
        every_plant_refused,
    ),
    Scenario(
        "work: a pooler SIGKILLed after sending work, before its report",
        "work",
        kill_pooler_after_work_sent,
        quick=True,
    ),
    Scenario("work: RPC errors on 30 % of calls for a block", "work", rpc_errors),
    Scenario(
        "harvest: pool SIGKILLed with harvests in flight", "harvest", kill_while("harvest", "pool")
    ),
    Scenario(
        "harvest: wallet SIGKILLed with harvests in flight",
        "harvest",
        kill_while("harvest", "wallet"),
    ),
    Scenario("harvest: the pool unreachable for a whole block", "harvest", pool_frozen_for_a_block),
    Scenario(
        "harvest: two pool replicas race on the same poolers and blocks",
        "harvest",
        two_pool_replicas,
    ),
    Scenario(
        "payout: wallet SIGKILLed with payouts in flight", "payout", kill_while("payout", "wallet")
    ),
    Scenario(
        "payout: pool SIGKILLed with payouts in flight", "payout", kill_while("payout", "pool")
    ),
    Scenario(
        "deposit: KALE deposited while the pool is down",
        "deposit",
        deposit_while_pool_down,
        quick=True,
    ),
)


@dataclass
class Outcome:
    """What one run of a scenario showed."""

    scenario: Scenario
    block: int  # the block the fault hit
    caught: str  # what the fault caught unrecorded
    recovered: int  # the first block farmed normally after it
    blocks_affected: int  # blocks from the fault to recovery not farmed normally
    data_lost: int  # chain facts the books lack after settling
    applied_twice: int
    differences: int  # books-vs-chain differences after settling
    seconds: float
    notes: list[str]


_LOST = (
    "no planting",
    "neither a harvest nor a deposit",
    "no payout",
    "no successful work",
    "no such",
    "no harvest is recorded",
)


async def run_scenario(farm: Farm, scenario: Scenario, rng: random.Random) -> Outcome:
    """Strike, wait for a block farmed normally, settle the books, measure."""
    started = time.monotonic()
    struck = await scenario.strike(farm, rng)
    block = struck.block
    recovered = await farm.recover(block)
    affected = 0
    for index in range(block, recovered):
        got = await farm.outcome(index)
        if not (got.settled and got.planted and got.worked == got.planted == got.harvested):
            affected += 1
    check = await farm.settled_check()
    twice = await farm.applied_twice()
    lost = [d for d in check.differences if any(word in d for word in _LOST)]
    return Outcome(
        scenario=scenario,
        block=block,
        caught=struck.caught,
        recovered=recovered,
        blocks_affected=affected,
        data_lost=len(lost),
        applied_twice=len(twice),
        differences=len(check.differences),
        seconds=time.monotonic() - started,
        notes=[*check.differences, *twice],
    )


def scenario_named(prefix: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name.startswith(prefix))


def data_dir(base: Path) -> Path:
    path = base / "farm"
    path.mkdir(parents=True, exist_ok=True)
    return path
