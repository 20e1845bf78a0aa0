"""The pooler agent: the cycle of DESIGN.md run against the pool, block after block.

Four loops share one event loop:

- the block monitor: `OPENED`/`DUE` -> `RequestPlant(plant_index)`; `OPENED` also cancels
  the searches of older blocks and asks the pool to harvest the blocks that just ended;
- the assignment stream: each assignment is mined (`WorkManager.assign`) until its
  deadline, its work submitted from a channel account, and the result queued for
  `ReportWork`;
- the work reporter: per-block batches sent until acknowledged;
- the heartbeat: hash rate, capacity and the last cursor, at the pool's interval.

`stop()` (SIGINT/SIGTERM in `run_pooler`) stops the monitor and the stream, cancels the
searches and sends what was already queued. Work cancelled by the shutdown is not
reported: the saved cursor stays before it, so a restarted agent gets it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stellar_sdk import Keypair

from kalepool import __version__
from kalepool.chain import ChainClient, Fault
from kalepool.settings import Settings
from kalepool.tls import Identity
from kalepool.v1 import pooler_pb2
from pooler_agent.assignment import Assignment
from pooler_agent.block_monitor import BlockEvent, BlockEventKind, BlockMonitor
from pooler_agent.pool_client import (
    CursorFile,
    CursorTracker,
    PoolClient,
    PoolError,
    StreamTakenOver,
    WorkReporter,
)
from pooler_agent.work_manager import CapacityError, MinedWork, WorkManager
from pooler_agent.work_submitter import WorkResult, WorkStatus, WorkSubmitter

log = logging.getLogger(__name__)


class AgentError(Exception):
    """The agent cannot go on (the pool refused it, another agent took its stream)."""


@dataclass
class AgentStats:
    """What the agent did, for its last log line and for tests."""

    plant_requests: int = 0
    assignments: int = 0
    submitted: int = 0
    succeeded: int = 0
    harvest_requests: int = 0
    harvested: int = 0
    harvest_reward_stroops: int = 0


class PoolerAgent:
    """Runs the cycle until `stop()`; `run()` returns then (or raises AgentError)."""

    def __init__(
        self,
        *,
        pool: PoolClient,
        monitor: BlockMonitor,
        manager: WorkManager,
        submitter: WorkSubmitter,
        cursors: CursorTracker,
        heartbeat_seconds: float = 30.0,
        report_linger: float = 0.2,
        harvest_attempts: int = 20,
    ) -> None:
        self.pool = pool
        self.monitor = monitor
        self.manager = manager
        self.submitter = submitter
        self.cursors = cursors
        self.heartbeat_seconds = heartbeat_seconds
        self.harvest_attempts = harvest_attempts
        self.reporter = WorkReporter(
            pool, cursors, linger=report_linger, on_reported=self._reported
        )
        self.stats = AgentStats()
        self._stop = asyncio.Event()
        self._stopping = False
        self._synced = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outstanding: dict[int, int] = {}  # block -> works assigned, not yet reported
        self._worked: set[int] = set()  # blocks with work that landed, not yet harvested
        self._harvesting: set[int] = set()
        self._newest = -1
        self._fatal: BaseException | None = None

    def stop(self) -> None:
        """Ask `run()` to end (safe from a signal handler)."""
        self._stop.set()

    # ---- the main loop ------------------------------------------------------------------

    async def run(self) -> AgentStats:
        loops = [
            asyncio.create_task(self._watch_blocks(), name="block monitor"),
            asyncio.create_task(self._consume_assignments(), name="assignment stream"),
            asyncio.create_task(self.reporter.run(), name="work reporter"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    self._fatal = task.exception()
        finally:
            await self._shutdown(loops, stopper)
        if self._fatal is not None:
            raise AgentError(str(self._fatal)) from None
        return self.stats

    async def _shutdown(self, loops: list[asyncio.Task[Any]], stopper: asyncio.Task[Any]) -> None:
        self._stopping = True
        self.monitor.stop()
        stopper.cancel()
        reporter = loops[2]
        for task in loops:
            if task is not reporter:
                task.cancel()
        running = self.manager.progress().mining_farmers
        await self.manager.shutdown()
        # The finishing tasks: submissions already under way end by themselves.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.pool.timeout)
        # Let the reporter finish what is queued or in flight, so acknowledged reports
        # also move the saved cursor; then stop it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reporter.wait_idle(), self.pool.timeout)
        reporter.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self.reporter.flush()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info(
            "pooler agent stopped: %d searches cancelled (to be mined again after a restart),"
            " %d works submitted, %d landed",
            running,
            self.stats.submitted,
            self.stats.succeeded,
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- blocks: plant, cancel, harvest -------------------------------------------------

    async def _watch_blocks(self) -> None:
        async for event in self.monitor.events():
            if self.monitor.clock.synced:
                self._synced.set()
            self._on_block_event(event)

    def _on_block_event(self, event: BlockEvent) -> None:
        index = event.plant_index
        if event.kind is BlockEventKind.CHAIN_ERROR or index is None:
            return
        if event.kind is BlockEventKind.OPENED:
            self._newest = max(self._newest, index)
            self.manager.block_opened(index)
            for block in sorted(self._worked):
                self._maybe_harvest(block)
        self._spawn(self._plant(index), f"plant #{index}")

    async def _plant(self, index: int) -> None:
        self.stats.plant_requests += 1
        try:
            answer = await self.pool.request_plant(index, self.manager.capacity)
        except PoolError as exc:
            log.warning("plant in block %d: %s", index, exc)
            return
        s = answer.summary
        log.info(
            "block %d: %d planted, %d failed, %d pending of %d",
            index,
            s.planted,
            s.failed,
            s.pending,
            s.total_requested,
        )

    def _maybe_harvest(self, block: int) -> None:
        """Harvest a block once a newer one opened and all its work is reported."""
        if (
            block in self._worked
            and block < self._newest
            and not self._outstanding.get(block)
            and block not in self._harvesting
        ):
            self._harvesting.add(block)
            self._spawn(self._harvest(block), f"harvest #{block}")

    async def _harvest(self, block: int) -> None:
        self.stats.harvest_requests += 1
        try:
            for attempt in range(self.harvest_attempts):
                try:
                    answer = await self.pool.request_harvest(block)
                except PoolError as exc:
                    # The pool may not have seen the next block yet: ask again shortly.
                    log.info("harvest of block %d: %s", block, exc)
                    await asyncio.sleep(self.pool.backoff.delay(attempt))
                    continue
                if answer.pending:
                    await asyncio.sleep(self.pool.backoff.delay(attempt))
                    continue
                self.stats.harvested += len(answer.harvested)
                self.stats.harvest_reward_stroops += answer.total_reward_stroops
                log.info(
                    "block %d: %d pails harvested (%d stroops reward), %d failed",
                    block,
                    len(answer.harvested),
                    answer.total_reward_stroops,
                    len(answer.failed),
                )
                self._worked.discard(block)
                return
            log.warning("block %d: harvest not settled; the pool keeps harvesting it", block)
            self._worked.discard(block)
        finally:
            self._harvesting.discard(block)

    # ---- assignments: mine, submit, report ----------------------------------------------

    async def _consume_assignments(self) -> None:
        await self._synced.wait()  # mining times against the chain's clock
        try:
            async for message in self.pool.assignments(self.cursors):
                self._take(message)
        except StreamTakenOver as exc:
            raise AgentError(
                f"another agent with this API key took over the assignment stream ({exc.detail})"
            ) from None

    def _take(self, message: pooler_pb2.Assignment) -> None:
        try:
            assignment = Assignment.from_proto(message)
        except ValueError as exc:
            log.error("malformed assignment %d skipped: %s", message.cursor, exc)
            self.cursors.done([message.cursor])
            return
        try:
            task = self.manager.assign(assignment)
        except CapacityError as exc:
            self._count(assignment.block_index, +1)
            self.reporter.add(_not_mined(assignment, str(exc)))
            return
        if task is None:  # already mining this (farmer, block)
            self.cursors.done([message.cursor])
            return
        self.stats.assignments += 1
        self._count(assignment.block_index, +1)
        self._spawn(self._finish(task), f"work {assignment.farmer_address}")

    async def _finish(self, task: asyncio.Task[MinedWork]) -> None:
        mined = await task
        if self._stopping and not mined.sendable and not mined.block_closed:
            return  # cancelled by the shutdown: left for the restarted agent
        if mined.sendable:
            self.stats.submitted += 1
        result = await self.submitter.submit(mined)
        if result.status is WorkStatus.SUCCESS:
            self.stats.succeeded += 1
        self.reporter.add(result)

    def _count(self, block: int, delta: int) -> None:
        self._outstanding[block] = self._outstanding.get(block, 0) + delta
        if self._outstanding[block] <= 0:
            del self._outstanding[block]

    def _reported(
        self, block: int, results: list[WorkResult], answer: pooler_pb2.ReportWorkResponse
    ) -> None:
        self._count(block, -len(results))
        if any(r.status is WorkStatus.SUCCESS for r in results):
            self._worked.add(block)
        self._maybe_harvest(block)

    # ---- heartbeat ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.heartbeat_seconds
        while True:
            progress = self.manager.progress()
            latest = self.monitor.latest
            try:
                answer = await self.pool.heartbeat(
                    pooler_pb2.HeartbeatRequest(
                        agent_version=__version__,
                        capacity=self.manager.capacity,
                        hashes_per_second=int(progress.hashes_per_second),
                        threads=self.manager.threads or 0,
                        mining_farmers=progress.mining_farmers,
                        observed_block_index=latest.index if latest else 0,
                        last_cursor=self.cursors.received,
                    )
                )
                if answer.interval_seconds:
                    interval = min(float(answer.interval_seconds), self.heartbeat_seconds)
            except PoolError as exc:
                log.warning("heartbeat: %s", exc)
            await asyncio.sleep(interval)


def _not_mined(assignment: Assignment, why: str) -> WorkResult:
    return WorkResult(
        assignment=assignment,
        status=WorkStatus.FAILED,
        nonce=0,
        hash=b"",
        zeros=0,
        hashes=0,
        fault=Fault.POOLER,
        message=f"not mined: {why}",
    )


# ---- building the agent from settings ---------------------------------------------------


def state_path(settings: Settings) -> Path:
    """The agent's cursor file under the data directory, one per pooler certificate."""
    return settings.layout().root / "pooler" / f"{settings.pooler_cert_name}-cursor.json"


def channel_secrets(settings: Settings) -> list[str]:
    """The channel accounts' secret keys from the setting or its file (never echoed)."""
    if settings.pooler_channel_secrets is not None:
        raw = settings.pooler_channel_secrets.get_secret_value().replace("\n", ",")
    elif settings.pooler_channel_secrets_file is not None:
        path = settings.pooler_channel_secrets_file.expanduser()
        try:
            raw = path.read_text().replace("\n", ",")
        except OSError as exc:
            raise ValueError(
                f"KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: cannot read {path} ({exc.strerror})"
            ) from None
    else:
        raise ValueError(
            "set KALE_POOL_POOLER_CHANNEL_SECRETS (S… keys, comma-separated) or"
            " KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: work is paid from those accounts"
        )
    secrets = [part.strip() for part in raw.split(",") if part.strip()]
    if not secrets:
        raise ValueError("no channel account secret key is configured")
    for position, secret in enumerate(secrets, start=1):
        try:
            Keypair.from_secret(secret)
        except Exception:
            # Named by position only: a near-miss of a key is still secret.
            raise ValueError(f"channel account {position}: not a valid secret key") from None
    return secrets


def pooler_identity(settings: Settings) -> tuple[Identity, bytes]:
    """The pooler's client certificate and the CA, from `certs/` in the data directory."""
    certs = settings.layout().certs
    name = settings.pooler_cert_name
    paths = (certs / f"{name}.pem", certs / f"{name}-key.pem", certs / "ca.pem")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"the pooler's certificate is missing: {', '.join(missing)}"
            " (KALE_POOL_POOLER_CERT_NAME names certs/<name>.pem and certs/<name>-key.pem)"
        )
    return Identity(paths[0].read_bytes(), paths[1].read_bytes()), paths[2].read_bytes()


async def run_agent(settings: Settings, *, install_signals: bool = True) -> AgentStats:
    """Build every part from settings and run the agent until SIGINT/SIGTERM."""
    import aiohttp

    from kalepool.chain import resolve_chain_config
    from pooler_agent.clock import ChainClock
    from pooler_agent.work_manager import WorkTiming
    from pooler_agent.work_submitter import ChannelPool

    if settings.pooler_api_key is None or not settings.pooler_api_key.get_secret_value().strip():
        raise ValueError("KALE_POOL_POOLER_API_KEY is required (the key the operator issued)")
    secrets = channel_secrets(settings)
    identity, ca_pem = pooler_identity(settings)
    async with aiohttp.ClientSession() as http:
        config = await resolve_chain_config(settings, session=http)
    chain = ChainClient(config)
    pool = PoolClient(
        settings.pool_address,
        identity,
        ca_pem,
        settings.pooler_api_key.get_secret_value(),
        timeout=settings.request_timeout_seconds,
        retry_attempts=settings.retry_attempts,
    )
    clock = ChainClock()
    manager = WorkManager(
        WorkTiming(
            block_seconds=config.block_seconds,
            work_delay_seconds=settings.work_delay_seconds,
            submit_margin_seconds=settings.pooler_submit_margin_seconds,
        ),
        clock,
        capacity=settings.max_farmers_capacity,
        threads=settings.mining_threads,
    )
    try:
        channels = ChannelPool.from_secrets(chain, secrets, clock=clock)
        agent = PoolerAgent(
            pool=pool,
            monitor=BlockMonitor(chain, interval=settings.block_poll_interval_seconds, clock=clock),
            manager=manager,
            submitter=WorkSubmitter(chain, channels),
            cursors=CursorTracker(CursorFile(state_path(settings))),
        )
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, agent.stop)
        log.info(
            "pooler agent: pool %s, %d channel accounts, capacity %d",
            settings.pool_address,
            channels.size,
            manager.capacity,
        )
        return await agent.run()
    finally:
        await manager.shutdown()
        await pool.close()
        await chain.aclose()


def run_pooler(settings: Settings) -> None:
    """`kale-pool pooler`: the agent in the foreground until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_agent(settings))


__all__ = [
    "AgentError",
    "AgentStats",
    "PoolerAgent",
    "channel_secrets",
    "pooler_identity",
    "run_agent",
    "run_pooler",
    "state_path",
]
