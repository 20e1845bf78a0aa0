"""The alert engine: the plan's rules judged once a monitor pass in the pool service, each
incident posted once to a Discord- or Slack-compatible webhook, and once more when it
clears.

Why here: the pool service already reads everything the rules need (its own calls, the
poolers' heartbeats, the custodial wallets' balances, the database) and runs as several
replicas, which the incident table (`pool.alerts`, migration 0021) keeps from posting
twice: opening an incident is an INSERT that at most one replica wins (a partial unique
index allows one open incident per rule and subject), resolving it an UPDATE that at
most one replica wins. Rules over a replica's own calls (`api_latency`, `api_success`,
`contract_failures`) name the replica in their subject, so each replica owns its
incidents. "Database unreachable" cannot be stored in the database it is about: its
state lives in each replica's memory, and each replica posts its own.

Posts go through `kalepool.webhook.Webhook` (Discord- and Slack-compatible, retried, never
raising, redacted). No text holds a secret: subjects are ids, names and public addresses.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kalepool.db.reads import Pool
from kalepool.grpc_server import RPC_COUNT, RPC_LATENCY
from kalepool.settings import Settings
from kalepool.v1 import pool_pb2, pooler_pb2
from kalepool.webhook import Webhook
from pool_service.contract_watch import ContractWatch
from pool_service.metrics import HARVESTS, PLANTS, STROOPS_PER_UNIT, Monitor, Observation

log = logging.getLogger("pool_service.alerts")

#: Status codes that are the service's failure, not the caller's mistake (a refused bad
#: request or a spent rate limit is the service working): what `api_success` counts.
SERVER_FAULT_CODES = frozenset(
    {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}
)


def streaming_methods() -> frozenset[str]:
    """Methods whose call lasts as long as a stream: their latency is no response time."""
    names = {"Watch", "ServerReflectionInfo"}  # grpc.health.v1 and reflection
    for module in (pool_pb2, pooler_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names |= {m.name for m in service.methods if m.server_streaming or m.client_streaming}
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule true of one subject now, and the sentence that says so."""

    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class RpcWindow:
    """One RPC's calls since the last pass."""

    service: str
    method: str
    calls: float
    failures: float
    seconds: float  # summed latency


@dataclass(frozen=True, slots=True)
class Window:
    """This replica's calls since the last pass: RPCs, and plants and harvests by outcome."""

    rpcs: list[RpcWindow]
    contract_calls: dict[str, tuple[float, float]]  # function -> (calls, failures)


def _samples(metric: object, suffix: str) -> dict[tuple[str, ...], float]:
    """A metric's cumulative sample values ending in `suffix`, by label values."""
    found: dict[tuple[str, ...], float] = {}
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name == family.name + suffix:
                found[tuple(sample.labels.values())] = sample.value
    return found


class Windows:
    """Turns the process's cumulative counters into what happened since the last take."""

    def __init__(self) -> None:
        self._last: dict[str, dict[tuple[str, ...], float]] = {}
        self.take()

    def _delta(self, name: str, now: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
        before = self._last.get(name, {})
        self._last[name] = now
        return {k: v - before.get(k, 0.0) for k, v in now.items() if v - before.get(k, 0.0) > 0}

    def take(self) -> Window:
        counts = self._delta("count", _samples(RPC_COUNT, "_total"))
        sums = self._delta("sum", _samples(RPC_LATENCY, "_sum"))
        calls: dict[tuple[str, str], list[float]] = {}
        for (service, method, code), n in counts.items():
            row = calls.setdefault((service, method), [0.0, 0.0])
            row[0] += n
            if code in SERVER_FAULT_CODES:
                row[1] += n
        rpcs = [
            RpcWindow(s, m, n, f, sums.get((s, m), 0.0)) for (s, m), (n, f) in sorted(calls.items())
        ]
        contract: dict[str, tuple[float, float]] = {}
        for function, metric in (("plant", PLANTS), ("harvest", HARVESTS)):
            got = self._delta(function, _samples(metric, "_total"))
            total = sum(got.values())
            if total:
                contract[function] = (total, got.get(("failed",), 0.0))
        return Window(rpcs, contract)


# --- the rules ---------------------------------------------------------------------------

Judge = Callable[[Observation, Window, Settings, str], list[Finding] | None]
"""A rule: what is true now (None: it cannot be judged this pass; nothing changes)."""


def api_latency(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding]:
    streams = streaming_methods()
    found = []
    for rpc in window.rpcs:
        if rpc.method in streams or not rpc.calls:
            continue
        mean = rpc.seconds / rpc.calls
        if mean > s.alert_api_latency_seconds:
            found.append(
                Finding(
                    f"{rpc.service}/{rpc.method} on {host}",
                    f"mean response {mean:.3g} s over {rpc.calls:.0f} calls"
                    f" (threshold {s.alert_api_latency_seconds:g} s)",
                )
            )
    return found


def api_success(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding]:
    found = []
    for rpc in window.rpcs:
        if rpc.calls < s.alert_min_calls:
            continue
        ratio = (rpc.calls - rpc.failures) / rpc.calls
        if ratio < s.alert_min_success_ratio:
            found.append(
                Finding(
                    f"{rpc.service}/{rpc.method} on {host}",
                    f"success {ratio:.1%} over {rpc.calls:.0f} calls"
                    f" (threshold {s.alert_min_success_ratio:.0%})",
                )
            )
    return found


def contract_failures(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding]:
    found = []
    for function, (calls, failures) in sorted(window.contract_calls.items()):
        if calls < s.alert_min_calls:
            continue
        if failures / calls > s.alert_max_contract_failure_ratio:
            found.append(
                Finding(
                    f"{function} on {host}",
                    f"{failures:.0f} of {calls:.0f} {function} calls failed"
                    f" (threshold {s.alert_max_contract_failure_ratio:.0%})",
                )
            )
    return found


def wallet_xlm(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding] | None:
    if seen.wallets is None:
        return None
    floor = round(s.alert_min_xlm * STROOPS_PER_UNIT)
    return [
        Finding(
            f"farmer {w.farmer_id} ({w.address})",
            f"custodial account holds {(w.xlm_stroops or 0) / STROOPS_PER_UNIT:.7f} XLM"
            f" (threshold {s.alert_min_xlm:g}): its plants and harvests cannot pay fees",
        )
        for w in seen.wallets
        if (w.xlm_stroops or 0) < floor
    ]


def pooler_unseen(
    seen: Observation, window: Window, s: Settings, host: str
) -> list[Finding] | None:
    if seen.poolers is None:
        return None
    limit = dt.timedelta(minutes=s.alert_pooler_unseen_minutes)
    found = []
    for p in seen.poolers:
        # A pooler that never beat has never run: nothing stopped.
        if p.last_heartbeat_at is not None and seen.at - p.last_heartbeat_at > limit:
            quiet = (seen.at - p.last_heartbeat_at).total_seconds() / 60
            found.append(
                Finding(
                    f"pooler {p.name} ({p.pooler_id})",
                    f"no heartbeat for {quiet:.0f} min"
                    f" (threshold {s.alert_pooler_unseen_minutes:g} min)",
                )
            )
    return found


def _pooler_load(what: str, attr: str, threshold: str) -> Judge:
    def judge(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding] | None:
        if seen.poolers is None:
            return None
        limit: int = getattr(s, threshold)
        return [
            Finding(
                f"pooler {p.name} ({p.pooler_id})",
                f"{what} at {getattr(p, attr)} % (threshold {limit} %)",
            )
            for p in seen.poolers
            if getattr(p, attr) is not None and getattr(p, attr) > limit
        ]

    return judge


def database_unreachable(
    seen: Observation, window: Window, s: Settings, host: str
) -> list[Finding]:
    if seen.database.up:
        return []
    return [Finding(f"database from {host}", f"unreachable: {seen.database.error}")]


def contract_held(watch: ContractWatch | None) -> Judge:
    """The contract watch's hold (the farm's code changed unacknowledged, or paused)."""

    def judge(seen: Observation, window: Window, s: Settings, host: str) -> list[Finding] | None:
        state = watch.latest if watch is not None else None
        if state is None:
            return None  # not checked yet: nothing to judge, nothing to resolve
        return [] if state.ok else [Finding("farm contract", state.reason())]

    return judge


#: Rules whose incidents live in `pool.alerts`, by name (docs/operations.md's runbook).
STORED_RULES: dict[str, Judge] = {
    "api_latency": api_latency,
    "api_success": api_success,
    "contract_failures": contract_failures,
    "wallet_xlm_low": wallet_xlm,
    "pooler_unseen": pooler_unseen,
    "pooler_cpu": _pooler_load("CPU", "cpu_percent", "alert_pooler_max_cpu_percent"),
    "pooler_memory": _pooler_load("memory", "memory_percent", "alert_pooler_max_memory_percent"),
}
#: The contract watch's rule, stored like the others; judged from the pool's own watch.
CONTRACT_RULE = "contract_watch"
#: Rules about this replica's own calls: only this replica resolves their incidents.
PER_REPLICA_RULES = frozenset({"api_latency", "api_success", "contract_failures"})
DATABASE_RULE = "database_unreachable"


# --- incidents and the webhook -------------------------------------------------------------


class IncidentStore:
    """Open incidents in `pool.alerts`: at most one per rule and subject (any replica)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def open_subjects(self, rule: str) -> set[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT subject FROM alerts WHERE rule = %s AND resolved_at IS NULL", (rule,)
            )
            return {row[0] for row in await cur.fetchall()}

    async def open(self, rule: str, finding: Finding) -> bool:
        """Open an incident; whether this call opened it (False: it was open already)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO alerts (rule, subject, message) VALUES (%s, %s, %s)"
                " ON CONFLICT (rule, subject) WHERE resolved_at IS NULL DO NOTHING RETURNING id",
                (rule, finding.subject[:300], finding.message[:2000]),
            )
            return await cur.fetchone() is not None

    async def resolve(self, rule: str, subject: str) -> dt.datetime | None:
        """Close an open incident; when it opened (None: another replica closed it)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE alerts SET resolved_at = greatest(now(), opened_at)"
                " WHERE rule = %s AND subject = %s AND resolved_at IS NULL RETURNING opened_at",
                (rule, subject),
            )
            row = await cur.fetchone()
            return None if row is None else row[0]


@dataclass
class AlertEngine:
    """One monitor pass and the rules' verdicts on it (`run_once`, on a pool loop)."""

    monitor: Monitor
    store: IncidentStore
    webhook: Webhook
    settings: Settings
    watch: ContractWatch | None = None
    host: str = field(default_factory=socket.gethostname)
    windows: Windows = field(default_factory=Windows)
    # The database rule's open incidents (subject -> when it opened): in memory, see above.
    _database_open: dict[str, dt.datetime] = field(default_factory=dict)

    async def run_once(self) -> Observation:
        """Observe, then judge every rule; post what opened and what cleared."""
        seen = await self.monitor.observe()
        down = database_unreachable(seen, Window([], {}), self.settings, self.host)
        await self._judge_in_memory(down)
        if not seen.database.up:
            return seen  # the window keeps growing until the rules can be judged again
        window = self.windows.take()
        judges = {**STORED_RULES, CONTRACT_RULE: contract_held(self.watch)}
        for rule, judge in judges.items():
            findings = judge(seen, window, self.settings, self.host)
            if findings is not None:
                await self._judge_stored(rule, findings)
        return seen

    async def _judge_stored(self, rule: str, findings: Iterable[Finding]) -> None:
        now = {f.subject: f for f in findings}
        for finding in now.values():
            if await self.store.open(rule, finding):
                await self.webhook.post(_firing(rule, finding))
        mine = f" on {self.host}"
        for subject in await self.store.open_subjects(rule):
            if subject in now or (rule in PER_REPLICA_RULES and not subject.endswith(mine)):
                continue
            opened = await self.store.resolve(rule, subject)
            if opened is not None:
                await self.webhook.post(_resolved(rule, subject, opened))

    async def _judge_in_memory(self, findings: list[Finding]) -> None:
        now = {f.subject: f for f in findings}
        for subject, finding in now.items():
            if subject not in self._database_open:
                self._database_open[subject] = dt.datetime.now(dt.UTC)
                await self.webhook.post(_firing(DATABASE_RULE, finding))
        for subject in [s for s in self._database_open if s not in now]:
            opened = self._database_open.pop(subject)
            await self.webhook.post(_resolved(DATABASE_RULE, subject, opened))


def _firing(rule: str, finding: Finding) -> str:
    return f"[kale-pool] FIRING {rule}: {finding.subject}: {finding.message}"


def _resolved(rule: str, subject: str, opened: dt.datetime) -> str:
    lasted = dt.datetime.now(dt.UTC) - opened
    minutes = max(0, round(lasted.total_seconds() / 60))
    since = f"{opened:%Y-%m-%d %H:%M} UTC"
    return f"[kale-pool] RESOLVED {rule}: {subject} (open {minutes} min, since {since})"
