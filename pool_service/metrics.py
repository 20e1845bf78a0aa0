"""The pool service's metrics: outcomes of plants, works and harvests, block participation,
custodial wallets' balances, poolers' heartbeats; and the monitor's reads behind them.

Counters are bumped where the outcome is recorded (`planting`, `work`, `harvesting`);
gauges are set by :class:`Monitor` once a pass (`monitor_interval_seconds`), from the
database and from one batched chain read of every active farmer's custodial account.
The same pass's :class:`Observation` is what the alert rules judge (`pool_service.alerts`).

Cardinality: the wallet gauges carry one series per active farmer (`farmer_id`), the
pooler gauges one per pooler (`pooler_id`, `pooler`); every other label is a fixed set.
A pool of 10,000 farmers exports 20,000 wallet series: docs/operations.md says when to
drop them (relabel) and keep the alert, which reads the pass, not the metric.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from prometheus_client import Counter, Gauge

from kalepool.chain import ChainClient
from kalepool.chain.farm_state import account_key, get_entries, trustline_key
from kalepool.db.health import DatabaseHealth, check_database
from kalepool.db.reads import Pool

PLANTS = Counter(
    "kalepool_pool_plants_total",
    "Plants recorded, by outcome (success, failed).",
    ["outcome"],
)
WORK_REPORTS = Counter(
    "kalepool_pool_work_reports_total",
    "Reported work results, by outcome (recorded, already_recorded, refused, retry).",
    ["outcome"],
)
HARVESTS = Counter(
    "kalepool_pool_harvests_total",
    "Harvests recorded, by outcome (success, failed).",
    ["outcome"],
)
BLOCK_INDEX = Gauge(
    "kalepool_pool_block_index", "The newest block with plants recorded (participation's block)."
)
BLOCK_PLANTED_FARMERS = Gauge(
    "kalepool_pool_block_planted_farmers", "Farmers planted successfully in that block."
)
ACTIVE_FARMERS = Gauge("kalepool_pool_active_farmers", "Active, funded farmers.")
BLOCK_PARTICIPATION = Gauge(
    "kalepool_pool_block_participation_ratio",
    "Farmers planted in the newest block over active farmers (the plan's target: > 0.95).",
)
WALLET_XLM = Gauge(
    "kalepool_pool_wallet_xlm",
    "XLM of an active farmer's custodial account (pays its fees), by farmer id.",
    ["farmer_id"],
)
WALLET_KALE = Gauge(
    "kalepool_pool_wallet_kale",
    "KALE of an active farmer's custodial account (its trustline), by farmer id.",
    ["farmer_id"],
)
POOLER_LAST_SEEN = Gauge(
    "kalepool_pool_pooler_last_heartbeat_timestamp_seconds",
    "When an active pooler last beat (Unix time; 0 before its first heartbeat).",
    ["pooler_id", "pooler"],
)
POOLER_HASH_RATE = Gauge(
    "kalepool_pool_pooler_hashes_per_second",
    "An active pooler's hash rate, as its last heartbeat said.",
    ["pooler_id", "pooler"],
)
POOLER_CAPACITY = Gauge(
    "kalepool_pool_pooler_capacity",
    "Farmers an active pooler can mine at once, as its last heartbeat said.",
    ["pooler_id", "pooler"],
)
POOLER_CPU = Gauge(
    "kalepool_pool_pooler_cpu_percent",
    "CPU in use on an active pooler's machine, as its last heartbeat said.",
    ["pooler_id", "pooler"],
)
POOLER_MEMORY = Gauge(
    "kalepool_pool_pooler_memory_percent",
    "Memory in use on an active pooler's machine, as its last heartbeat said.",
    ["pooler_id", "pooler"],
)

STROOPS_PER_UNIT = 10_000_000


@dataclass(frozen=True, slots=True)
class PoolerSeen:
    """An active pooler's last heartbeat, as the monitor read it."""

    pooler_id: UUID
    name: str
    last_heartbeat_at: dt.datetime | None
    capacity: int | None
    hashes_per_second: int | None
    cpu_percent: int | None
    memory_percent: int | None


@dataclass(frozen=True, slots=True)
class WalletBalance:
    """An active farmer's custodial account on chain (None: the account does not exist)."""

    farmer_id: UUID
    address: str
    xlm_stroops: int | None
    kale_stroops: int | None


@dataclass(frozen=True, slots=True)
class Observation:
    """What one monitor pass saw. A part it could not read is None (judged next pass)."""

    at: dt.datetime
    database: DatabaseHealth
    poolers: list[PoolerSeen] | None
    wallets: list[WalletBalance] | None


_POOLERS = (
    "SELECT id, name, last_heartbeat_at, heartbeat_capacity, heartbeat_hashes_per_second,"
    " heartbeat_cpu_percent, heartbeat_memory_percent FROM poolers WHERE is_active"
    " ORDER BY name"
)
_WALLETS = (
    "SELECT id, custodial_public_key FROM farmers WHERE status = 'active' AND is_funded ORDER BY id"
)
_PARTICIPATION = (
    "WITH newest AS (SELECT max(block_index) AS b FROM plantings)"
    " SELECT newest.b, count(DISTINCT p.farmer_id) FILTER (WHERE p.status = 'success')"
    " FROM newest LEFT JOIN plantings p ON p.block_index = newest.b GROUP BY newest.b"
)


class Monitor:
    """Reads the pool's state into its gauges once a pass, and returns what it saw."""

    def __init__(self, pool: Pool, chain: ChainClient, conninfo: str, db_timeout: float) -> None:
        self.pool = pool
        self.chain = chain
        self.conninfo = conninfo
        self.db_timeout = db_timeout

    async def observe(self) -> Observation:
        """One pass: database health, then (when it is up) poolers, participation and
        the custodial wallets' balances."""
        at = dt.datetime.now(dt.UTC)
        health = await check_database(self.conninfo, self.db_timeout)
        if not health.up:
            return Observation(at, health, None, None)
        poolers = await self._poolers()
        farmers = await self._participation()
        wallets = await self._wallets(farmers)
        return Observation(at, health, poolers, wallets)

    async def _poolers(self) -> list[PoolerSeen]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_POOLERS)).fetchall()
        seen = [PoolerSeen(*row) for row in rows]
        for gauge in (POOLER_LAST_SEEN, POOLER_HASH_RATE, POOLER_CAPACITY, POOLER_CPU):
            gauge.clear()  # a pooler disabled since the last pass leaves no stale series
        POOLER_MEMORY.clear()
        for p in seen:
            labels = (str(p.pooler_id), p.name)
            beat = p.last_heartbeat_at
            POOLER_LAST_SEEN.labels(*labels).set(beat.timestamp() if beat else 0)
            POOLER_HASH_RATE.labels(*labels).set(p.hashes_per_second or 0)
            POOLER_CAPACITY.labels(*labels).set(p.capacity or 0)
            if p.cpu_percent is not None:
                POOLER_CPU.labels(*labels).set(p.cpu_percent)
            if p.memory_percent is not None:
                POOLER_MEMORY.labels(*labels).set(p.memory_percent)
        return seen

    async def _participation(self) -> list[tuple[UUID, str]]:
        """Participation's gauges; the active farmers' (id, custodial address)."""
        async with self.pool.connection() as conn:
            farmers = [(row[0], row[1]) for row in await (await conn.execute(_WALLETS)).fetchall()]
            newest = await (await conn.execute(_PARTICIPATION)).fetchone()
        block, planted = newest if newest is not None else (None, 0)
        ACTIVE_FARMERS.set(len(farmers))
        BLOCK_INDEX.set(block or 0)
        BLOCK_PLANTED_FARMERS.set(planted or 0)
        BLOCK_PARTICIPATION.set((planted or 0) / len(farmers) if farmers else 0)
        return farmers

    async def _wallets(self, farmers: list[tuple[UUID, str]]) -> list[WalletBalance] | None:
        """Every active custodial account and its KALE trustline, in batched reads."""
        keys = []
        for _, address in farmers:
            keys += [account_key(address), trustline_key(self.chain, address)]
        try:
            entries, _ = await get_entries(self.chain, keys)
        except Exception:  # the chain unreadable this pass: judged again the next
            return None
        WALLET_XLM.clear()
        WALLET_KALE.clear()
        found = []
        for i, (farmer_id, address) in enumerate(farmers):
            account, line = entries[2 * i], entries[2 * i + 1]
            xlm = (
                account.data.account.balance.int64
                if account is not None and account.data.account is not None
                else None
            )
            kale = (
                line.data.trust_line.balance.int64
                if line is not None and line.data.trust_line is not None
                else None
            )
            found.append(WalletBalance(farmer_id, address, xlm, kale))
            WALLET_XLM.labels(str(farmer_id)).set((xlm or 0) / STROOPS_PER_UNIT)
            WALLET_KALE.labels(str(farmer_id)).set((kale or 0) / STROOPS_PER_UNIT)
        return found
