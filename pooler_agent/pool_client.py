"""The agent's side of PoolerService: calls over mutual TLS, the resumable assignment
feed, batched work reports and heartbeats.

Every call presents the pooler's client certificate and its API key as
`authorization: Bearer <key>` metadata, has a deadline (`request_timeout_seconds`) and is
retried with backoff while the pool is UNAVAILABLE (`retry_attempts`). The key is never
logged and never part of an error.

The feed resumes after the cursor of the last assignment received; across restarts the
agent resumes from the cursor saved in a small state file, which only moves past an
assignment once its work report was acknowledged, so a crash loses no assignment (a
repeated one is harmless: the work manager ignores duplicates and the pool ignores an
identical report).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from kalepool import wire
from kalepool.chain import Fault
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import common_pb2, pooler_pb2, pooler_pb2_grpc
from pooler_agent.work_submitter import WorkResult, WorkStatus

log = logging.getLogger(__name__)

Response = TypeVar("Response")

# Codes worth trying again: the pool is restarting, overloaded or slow; nothing was done.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


# The feed is opened again after these too: the pool failing inside (a restart, its
# database away) must not stop the agent; a refusal (a bad key, a disabled pooler) does.
_STREAM_AGAIN = frozenset(
    {grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)


class PoolError(Exception):
    """A pool call failed for good; the message names the call and the pool's reason."""

    def __init__(self, call: str, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{call}: {code.name}: {detail}")
        self.call = call
        self.code = code
        self.detail = detail


class StreamTakenOver(PoolError):
    """A newer assignment stream of this pooler (another agent with the same key) ended ours."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between tries: doubling from `initial` up to `maximum` seconds."""

    initial: float = 0.2
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        # The exponent capped: tries that go on for hours must not overflow a float.
        return float(min(self.maximum, self.initial * (2 ** min(attempt, 64))))


# --- the cursor kept across restarts ---------------------------------------------------


class CursorFile:
    """The last assignment cursor whose work is reported, in a small JSON file.

    Saved atomically (write, fsync, rename), so a crash leaves the old or the new value.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        """The saved cursor; 0 when there is none yet (or the file is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
            cursor = int(data["cursor"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            log.warning("assignment cursor file %s is unreadable; starting from 0", self.path)
            return 0
        return max(cursor, 0)

    def save(self, cursor: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w") as fh:
            json.dump({"cursor": cursor}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class CursorTracker:
    """Which assignments are received and which are reported; saves the safe cursor.

    The feed sends cursors in increasing order; the saved cursor is the largest one
    with every assignment up to it reported, so a restart replays only unreported ones.
    """

    def __init__(self, store: CursorFile) -> None:
        self.store = store
        self.saved = store.load()
        self.received = self.saved  # the last cursor the stream delivered (resume point)
        self._open: list[int] = []  # received, not yet reported, in order
        self._done: set[int] = set()

    def receive(self, cursor: int) -> None:
        if cursor <= self.received:
            return
        self.received = cursor
        self._open.append(cursor)

    def done(self, cursors: Sequence[int]) -> None:
        """These assignments are dealt with (reported, or held by the work journal)."""
        self._done.update(c for c in cursors if c > self.saved)
        moved = False
        while self._open and self._open[0] in self._done:
            self.saved = self._open.pop(0)
            self._done.discard(self.saved)
            moved = True
        if moved:
            self.store.save(self.saved)

    def reset(self) -> None:
        """The pool does not know our cursor (a new pool database): start over."""
        self.saved = self.received = 0
        self._open.clear()
        self._done.clear()
        self.store.save(0)


# --- WorkResult -> WorkReport -------------------------------------------------------------


def work_report(result: WorkResult) -> pooler_pb2.WorkReport:
    """The wire form of one farmer's result.

    A work never found or never sent (mining cancelled because the block ended) has no
    hash: the report then carries none, and no transaction. A failure always names a
    party: one the submitter could not attribute is the pooler's (its work did not land).
    """
    report = pooler_pb2.WorkReport(
        farmer_id=result.assignment.farmer_id,
        status=wire.event_status(result.status),
        hashes_computed=max(result.hashes, 0),
    )
    if len(result.hash) == 32:
        report.nonce = result.nonce
        report.hash = result.hash
        report.zeros = result.zeros
    if result.gap is not None and result.gap > 0:
        report.gap = result.gap
    if result.tx_hash:
        report.transaction.CopyFrom(
            common_pb2.TransactionRef(
                tx_hash=result.tx_hash,
                status=wire.tx_status(result.status),
                ledger=result.ledger or 0,
            )
        )
    if result.submitted_at is not None:
        report.submitted_at.CopyFrom(wire.epoch(result.submitted_at))
    if result.status is WorkStatus.FAILED:
        fault = result.fault if result.fault is not Fault.NONE else Fault.POOLER
        # A failure without a code (nothing was mined) is the miner's.
        miner = common_pb2.FAILURE_CODE_MINER_FAILED
        code = wire.failure_code(result.failure, unknown=miner) if result.failure else miner
        report.failure.CopyFrom(
            wire.failure(
                code,
                fault,
                (result.message or "")[:500],
                contract_error=result.contract_error or 0,
            )
        )
    return report


# --- the client ----------------------------------------------------------------------


class PoolClient:
    """PoolerService over mutual TLS, with the pooler's API key on every call."""

    def __init__(
        self,
        address: str,
        identity: Identity,
        ca_pem: bytes,
        api_key: str,
        *,
        server_name: str | None = POOL_SERVER,
        timeout: float = 30.0,
        retry_attempts: int = 3,
        backoff: Backoff = Backoff(),
    ) -> None:
        if not api_key.strip():
            raise ValueError("the pooler's API key is empty")
        # gRPC's own reconnect backoff grows to minutes by default: after a pool restart the
        # channel would stay down long after the pool is back. Keep it within ours.
        options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", int(backoff.initial * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(backoff.initial * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff.maximum * 1000)),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = grpc.aio.secure_channel(
            address, channel_credentials(identity, ca_pem), options=options
        )
        self.stub = pooler_pb2_grpc.PoolerServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key.strip()}"),)
        self.address = address
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self.backoff = backoff

    async def close(self) -> None:
        await self._channel.close()

    async def _call(
        self, name: str, call: Callable[..., Awaitable[Response]], request: object
    ) -> Response:
        """One unary call with a deadline; UNAVAILABLE (and the like) retried with backoff."""
        attempt = 0
        while True:
            try:
                return await call(request, metadata=self._metadata, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code not in _TRANSIENT or attempt >= self.retry_attempts:
                    raise PoolError(name, code, exc.details() or "") from None
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("%s: %s; retry %d in %.1fs", name, code.name, attempt, delay)
                await asyncio.sleep(delay)

    async def request_plant(
        self, block_index: int, max_farmers: int = 0
    ) -> pooler_pb2.RequestPlantResponse:
        return await self._call(
            "RequestPlant",
            self.stub.RequestPlant,
            # Answered once the plants are sent: each lands on the assignment stream.
            pooler_pb2.RequestPlantRequest(
                block_index=block_index, max_farmers=max_farmers, answer_when_sent=True
            ),
        )

    async def report_work(
        self, block_index: int, reports: Sequence[pooler_pb2.WorkReport]
    ) -> pooler_pb2.ReportWorkResponse:
        return await self._call(
            "ReportWork",
            self.stub.ReportWork,
            pooler_pb2.ReportWorkRequest(block_index=block_index, results=list(reports)),
        )

    async def request_harvest(self, block_index: int) -> pooler_pb2.RequestHarvestResponse:
        return await self._call(
            "RequestHarvest",
            self.stub.RequestHarvest,
            pooler_pb2.RequestHarvestRequest(block_index=block_index),
        )

    async def get_assignments(self, block_index: int = 0) -> pooler_pb2.GetAssignmentsResponse:
        return await self._call(
            "GetAssignments",
            self.stub.GetAssignments,
            pooler_pb2.GetAssignmentsRequest(block_index=block_index),
        )

    async def heartbeat(self, request: pooler_pb2.HeartbeatRequest) -> pooler_pb2.HeartbeatResponse:
        return await self._call("Heartbeat", self.stub.Heartbeat, request)

    async def assignments(self, cursors: CursorTracker) -> AsyncIterator[pooler_pb2.Assignment]:
        """The assignment feed, reconnected after each disconnect from the last cursor
        received, forever (until the caller stops iterating).

        A cursor the pool never issued (OUT_OF_RANGE: a new pool database) starts the feed
        over from 0; a newer stream of this pooler raises StreamTakenOver; a refusal
        (bad key, disabled pooler) raises PoolError. The pool away or failing inside
        (UNAVAILABLE, INTERNAL, ...) is waited out.
        """
        attempt = 0
        while True:
            call = self.stub.StreamAssignments(
                pooler_pb2.StreamAssignmentsRequest(after_cursor=cursors.received),
                metadata=self._metadata,
            )
            try:
                async for message in call:
                    attempt = 0
                    cursors.receive(message.assignment.cursor)
                    yield message.assignment
                code, detail = grpc.StatusCode.UNAVAILABLE, "the pool ended the stream"
            except grpc.aio.AioRpcError as exc:
                code, detail = exc.code(), exc.details() or ""
            finally:
                call.cancel()
            if code is grpc.StatusCode.ABORTED:
                raise StreamTakenOver("StreamAssignments", code, detail)
            if code is grpc.StatusCode.OUT_OF_RANGE:
                log.warning(
                    "the pool does not know cursor %d; the feed starts over", cursors.received
                )
                cursors.reset()
                continue
            if code not in _TRANSIENT and code not in _STREAM_AGAIN:
                raise PoolError("StreamAssignments", code, detail)
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.warning(
                "assignment stream: %s (%s); reconnecting in %.1fs", code.name, detail, delay
            )
            await asyncio.sleep(delay)


# --- reporting work ------------------------------------------------------------------


class ReportOutcome(StrEnum):
    """What the pool did with one reported result (the proto's ReportOutcome)."""

    RECORDED = "recorded"  # recorded by this report
    ALREADY_RECORDED = "already_recorded"  # recorded identically before
    PENDING = "pending"  # a pending result, acknowledged: report it again once it settles
    RETRY = "retry"  # could not be checked now: report it again later
    REFUSED = "refused"  # refused for good: sending it again would be refused again

    @property
    def final(self) -> bool:
        """Nothing more will come of reporting this result again."""
        return self in (
            ReportOutcome.RECORDED,
            ReportOutcome.ALREADY_RECORDED,
            ReportOutcome.REFUSED,
        )


_OUTCOME = {
    pooler_pb2.REPORT_OUTCOME_RECORDED: ReportOutcome.RECORDED,
    pooler_pb2.REPORT_OUTCOME_ALREADY_RECORDED: ReportOutcome.ALREADY_RECORDED,
    pooler_pb2.REPORT_OUTCOME_PENDING: ReportOutcome.PENDING,
    pooler_pb2.REPORT_OUTCOME_RETRY: ReportOutcome.RETRY,
    pooler_pb2.REPORT_OUTCOME_REFUSED: ReportOutcome.REFUSED,
}


def report_outcomes(
    results: Sequence[WorkResult], answer: pooler_pb2.ReportWorkResponse
) -> list[tuple[ReportOutcome, str]]:
    """One (outcome, message) per result, in order.

    A pool that answers no `outcomes` (one from before per-result outcomes) accepted the
    whole batch: pending results as pending, the others as recorded. Outcomes are matched
    by farmer (each farmer appears once in a batch), else by position; a result the
    answer says nothing of is reported again (RETRY).
    """
    if not answer.outcomes:
        return [
            (
                ReportOutcome.PENDING if r.status is WorkStatus.PENDING else ReportOutcome.RECORDED,
                "",
            )
            for r in results
        ]
    by_farmer = {o.farmer_id: o for o in answer.outcomes if o.farmer_id}
    positional = len(answer.outcomes) == len(results)
    found: list[tuple[ReportOutcome, str]] = []
    for position, result in enumerate(results):
        one = by_farmer.get(result.assignment.farmer_id)
        if one is None and positional:
            one = answer.outcomes[position]
        if one is None or one.outcome not in _OUTCOME:
            found.append((ReportOutcome.RETRY, "the pool's answer gave no outcome for it"))
            continue
        found.append((_OUTCOME[one.outcome], one.message))
    return found


class ReportJournal(Protocol):
    """Where sent work is journaled (`pooler_agent.journal.WorkJournal`)."""

    async def reported(self, tx_hash: str) -> None: ...


@dataclass
class _Item:
    result: WorkResult
    serial: int  # the order results were added: a newer one for the same pail supersedes
    attempts: int = 0  # reports that came back RETRY (for the backoff)


# At most this many results per ReportWork (the pool takes up to 1000).
MAX_BATCH = 500


class WorkReporter:
    """Sends work results to the pool in per-block batches; every result is answered.

    `add()` queues a result; the running `run()` waits `linger` seconds for the rest of
    the block's results to arrive, then sends each block's batch. A newer result for the
    same (farmer, block) (the settled outcome of a pending one) supersedes one still
    queued. Each result's outcome is handled on its own:

    - RECORDED / ALREADY_RECORDED: acknowledged: the saved cursor may move past it, its
      journal entry is closed;
    - PENDING (for a pending result): acknowledged, and the agent keeps following the
      transaction; its settled result is reported later;
    - RETRY (or PENDING for a settled result): reported again after a backoff;
    - REFUSED: logged once at warning level with the pool's message and acknowledged
      (sending it again would be refused again).

    A report the pool could not take at all now (UNAVAILABLE, INTERNAL and the like) goes
    back to the queue after a backoff, until it is answered: beside the other blocks'
    reports, so a batch the pool keeps failing holds none of them back. One refused as a
    whole (a pool from before per-result outcomes refuses the whole batch for one bad
    result) is sent again result by result, so only the bad one is refused.
    `on_acknowledged(result, outcome)` sees each acknowledged result.
    """

    def __init__(
        self,
        client: PoolClient,
        cursors: CursorTracker,
        *,
        linger: float = 0.2,
        journal: ReportJournal | None = None,
        on_acknowledged: Callable[[WorkResult, ReportOutcome], None] | None = None,
    ) -> None:
        self.client = client
        self.cursors = cursors
        self.linger = linger
        self.journal = journal
        self.on_acknowledged = on_acknowledged
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._serials = itertools.count(1)
        self._latest: dict[tuple[str, int], int] = {}  # pail -> serial of its newest result
        self._later: set[asyncio.Task[None]] = set()  # results waiting to be sent again
        self.reported = 0  # results acknowledged
        self.refused = 0  # results the pool refused for good
        self.retried = 0  # RETRY answers
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, result: WorkResult) -> None:
        serial = next(self._serials)
        self._latest[result.key] = serial
        self._put(_Item(result, serial))

    def _put(self, item: _Item) -> None:
        self._idle.clear()
        self._queue.put_nowait(item)

    def _current(self, item: _Item) -> bool:
        return self._latest.get(item.result.key) == item.serial

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing being sent, nothing waiting to be sent again."""
        return self._queue.empty() and self._sending == 0 and not self._later

    def _check_idle(self) -> None:
        if self.idle:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until everything queued was sent and answered."""
        await self._idle.wait()

    def _batches(self, items: list[_Item]) -> list[tuple[int, list[_Item]]]:
        """Per block, the newest result of each pail (a superseded one is not sent)."""
        by_block: dict[int, dict[tuple[str, int], _Item]] = {}
        for item in items:
            if self._current(item):
                by_block.setdefault(item.result.block_index, {})[item.result.key] = item
        batches = []
        for block, pails in sorted(by_block.items()):
            listed = list(pails.values())
            for start in range(0, len(listed), MAX_BATCH):
                batches.append((block, listed[start : start + MAX_BATCH]))
        return batches

    async def run(self) -> None:
        """Send batches until cancelled."""
        while True:
            first = await self._queue.get()
            self._sending += 1
            try:
                await asyncio.sleep(self.linger)
                batch = [first]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                for block, items in self._batches(batch):
                    await self._send(block, items)
            finally:
                self._sending -= 1
                self._check_idle()

    async def flush(self) -> None:
        """Send whatever is queued now (at shutdown), each batch tried once more."""
        batch: list[_Item] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        for block, items in self._batches(batch):
            with contextlib.suppress(PoolError):
                await self._answered(block, items, await self._report(block, items))

    async def _report(self, block: int, items: list[_Item]) -> pooler_pb2.ReportWorkResponse:
        return await self.client.report_work(block, [work_report(i.result) for i in items])

    async def _send(self, block: int, items: list[_Item]) -> None:
        """Report one batch once. One the pool could not take now goes back to the queue
        after a backoff, beside the others: a batch the pool keeps failing holds no other
        block's report back, and is never dropped."""
        try:
            answer = await self._report(block, items)
        except PoolError as exc:
            if exc.code is grpc.StatusCode.CANCELLED:
                # The channel closed under us (shutdown): not acknowledged, not refused.
                raise asyncio.CancelledError from None
            if exc.code in _TRANSIENT or exc.code is grpc.StatusCode.INTERNAL:
                self._again(items, f"report of block {block} not answered ({exc})", logging.WARNING)
                return
            if len(items) > 1:
                log.info(
                    "report of %d results of block %d refused as a whole (%s):"
                    " reporting each on its own",
                    len(items),
                    block,
                    exc,
                )
                for item in items:
                    await self._send(block, [item])
                return
            await self._handle(items, [(ReportOutcome.REFUSED, f"{exc.code.name}: {exc.detail}")])
            return
        await self._answered(block, items, answer)

    async def _answered(
        self, block: int, items: list[_Item], answer: pooler_pb2.ReportWorkResponse
    ) -> None:
        outcomes = report_outcomes([i.result for i in items], answer)
        log.info(
            "block %d: reported %d results (%d new, %d repeated, %d refused, %d to retry),"
            " %d ready for harvest",
            block,
            len(items),
            sum(1 for o, _ in outcomes if o is ReportOutcome.RECORDED),
            sum(1 for o, _ in outcomes if o is ReportOutcome.ALREADY_RECORDED),
            sum(1 for o, _ in outcomes if o is ReportOutcome.REFUSED),
            sum(1 for o, _ in outcomes if o is ReportOutcome.RETRY),
            len(answer.ready_for_harvest),
        )
        await self._handle(items, outcomes)

    async def _handle(self, items: list[_Item], outcomes: list[tuple[ReportOutcome, str]]) -> None:
        acknowledged: list[tuple[_Item, ReportOutcome]] = []
        for item, (outcome, message) in zip(items, outcomes, strict=True):
            result = item.result
            pending = result.status is WorkStatus.PENDING
            if outcome is ReportOutcome.RETRY or (outcome is ReportOutcome.PENDING and not pending):
                self.retried += 1
                self._again(
                    [item],
                    f"work report of farmer {result.assignment.farmer_id or result.farmer_address}"
                    f" in block {result.block_index}: "
                    + (message or "the pool could not check it now"),
                )
                continue
            if outcome is ReportOutcome.REFUSED:
                self.refused += 1
                log.warning(
                    "work report of farmer %s in block %d refused for good: %s",
                    result.assignment.farmer_id or result.farmer_address,
                    result.block_index,
                    message or "no reason given",
                )
            acknowledged.append((item, outcome))
        if not acknowledged:
            return
        self.reported += len(acknowledged)
        # The cursor first, then the journal: a crash in between reports the work again
        # (harmless) rather than mining an assignment again.
        self.cursors.done([item.result.assignment.cursor for item, _ in acknowledged])
        for item, _ in acknowledged:
            result = item.result
            if result.status is WorkStatus.PENDING and not result.final:
                continue  # still followed: its settled result comes later
            if self.journal is not None and result.tx_hash:
                await self.journal.reported(result.tx_hash)
            if self._current(item):
                del self._latest[result.key]  # nothing more will come for this pail
        if self.on_acknowledged is not None:
            for item, outcome in acknowledged:
                self.on_acknowledged(item.result, outcome)

    def _again(self, items: list[_Item], why: str, level: int = logging.INFO) -> None:
        """Queue these results again after a backoff (each one a newer result does not
        supersede by then); the backoff grows with every try of theirs."""
        attempts = max(item.attempts for item in items)
        delay = self.client.backoff.delay(attempts)
        for item in items:
            item.attempts = attempts + 1
        log.log(level, "%s; again in %.1fs", why, delay)

        async def later() -> None:
            await asyncio.sleep(delay)
            for item in items:
                if self._current(item):
                    self._put(item)

        task = asyncio.get_running_loop().create_task(later())
        self._later.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._later.discard(done)
            self._check_idle()

        task.add_done_callback(finished)

    def cancel_later(self) -> None:
        """Drop the results waiting to be sent again (at shutdown: their cursors are not
        saved and their journal entries stay, so a restart reports them)."""
        for task in list(self._later):
            task.cancel()
