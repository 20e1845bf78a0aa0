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
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kalepool.chain import Fault
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import common_pb2, pooler_pb2, pooler_pb2_grpc, records_pb2
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
        return float(min(self.maximum, self.initial * (2**attempt)))


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
        self._done.update(c for c in cursors if c > 0)
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

_STATUS = {
    WorkStatus.SUCCESS: records_pb2.EVENT_STATUS_SUCCEEDED,
    WorkStatus.FAILED: records_pb2.EVENT_STATUS_FAILED,
    WorkStatus.PENDING: records_pb2.EVENT_STATUS_PENDING,
}
_FAULT = {
    Fault.NONE: common_pb2.FAULT_PARTY_NONE,
    Fault.FARMER: common_pb2.FAULT_PARTY_FARMER,
    Fault.POOL: common_pb2.FAULT_PARTY_POOL,
    Fault.POOLER: common_pb2.FAULT_PARTY_POOLER,
    Fault.CHAIN: common_pb2.FAULT_PARTY_CHAIN,
}


def work_report(result: WorkResult) -> pooler_pb2.WorkReport:
    """The wire form of one farmer's result.

    A work never found or never sent (mining cancelled because the block ended) has no
    hash: the report then carries none, and no transaction. A failure always names a
    party: one the submitter could not attribute is the pooler's (its work did not land).
    """
    report = pooler_pb2.WorkReport(
        farmer_id=result.assignment.farmer_id,
        status=_STATUS[result.status],
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
                status=_tx_status(result.status),
                ledger=result.ledger or 0,
            )
        )
    if result.submitted_at is not None:
        report.submitted_at.CopyFrom(_timestamp(result.submitted_at))
    if result.status is WorkStatus.FAILED:
        fault = result.fault if result.fault is not Fault.NONE else Fault.POOLER
        code = _failure_code(result)
        report.failure.CopyFrom(
            common_pb2.Failure(
                code=code,
                fault=_FAULT[fault],
                contract_error=result.contract_error or 0,
                message=(result.message or "")[:500],
            )
        )
    return report


def _failure_code(result: WorkResult) -> common_pb2.FailureCode.ValueType:
    """The proto's code of the submitter's failure name; a failure without one (nothing
    was mined) is the miner's."""
    if result.failure is None:
        return common_pb2.FAILURE_CODE_MINER_FAILED
    try:
        return common_pb2.FailureCode.Value(f"FAILURE_CODE_{result.failure.value}")
    except ValueError:
        return common_pb2.FAILURE_CODE_MINER_FAILED


def _tx_status(status: WorkStatus) -> common_pb2.TxStatus.ValueType:
    if status is WorkStatus.SUCCESS:
        return common_pb2.TX_STATUS_SUCCESS
    if status is WorkStatus.FAILED:
        return common_pb2.TX_STATUS_FAILED
    return common_pb2.TX_STATUS_PENDING


def _timestamp(seconds: float) -> Timestamp:
    whole = int(seconds)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9))


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
            pooler_pb2.RequestPlantRequest(block_index=block_index, max_farmers=max_farmers),
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
        (bad key, disabled pooler) raises PoolError.
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
            if code not in _TRANSIENT and code is not grpc.StatusCode.CANCELLED:
                raise PoolError("StreamAssignments", code, detail)
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.warning(
                "assignment stream: %s (%s); reconnecting in %.1fs", code.name, detail, delay
            )
            await asyncio.sleep(delay)


# --- reporting work ------------------------------------------------------------------


class WorkReporter:
    """Sends work results to the pool in per-block batches, retrying until acknowledged.

    `add()` queues a result; the running `run()` waits `linger` seconds for the rest of
    the block's results to arrive, then sends each block's batch. A batch the pool
    cannot take now is sent again with backoff until it is acknowledged (repeating an
    identical report is harmless); one it refuses for good is logged and dropped (sending
    it again would be refused again). `on_reported` sees each acknowledged batch.
    """

    def __init__(
        self,
        client: PoolClient,
        cursors: CursorTracker,
        *,
        linger: float = 0.2,
        on_reported: Callable[[int, list[WorkResult], pooler_pb2.ReportWorkResponse], None]
        | None = None,
    ) -> None:
        self.client = client
        self.cursors = cursors
        self.linger = linger
        self.on_reported = on_reported
        self._queue: asyncio.Queue[WorkResult] = asyncio.Queue()
        self.reported = 0  # results acknowledged
        self.dropped = 0  # results the pool refused for good
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, result: WorkResult) -> None:
        self._idle.clear()
        self._queue.put_nowait(result)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being sent."""
        return self._queue.empty() and self._sending == 0

    async def wait_idle(self) -> None:
        """Until everything queued was sent (acknowledged or dropped)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Send batches until cancelled."""
        while True:
            batch = [await self._queue.get()]
            self._sending += 1
            try:
                await asyncio.sleep(self.linger)
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                by_block: dict[int, list[WorkResult]] = {}
                for result in batch:
                    by_block.setdefault(result.block_index, []).append(result)
                for block, results in sorted(by_block.items()):
                    await self._send(block, results)
            finally:
                self._sending -= 1
                if self.idle:
                    self._idle.set()

    async def flush(self) -> None:
        """Send whatever is queued now (at shutdown), trying each batch once more."""
        batch: list[WorkResult] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        by_block: dict[int, list[WorkResult]] = {}
        for result in batch:
            by_block.setdefault(result.block_index, []).append(result)
        for block, results in sorted(by_block.items()):
            with contextlib.suppress(PoolError):
                await self._send_once(block, results)

    async def _send(self, block: int, results: list[WorkResult]) -> None:
        attempt = 0
        while True:
            try:
                await self._send_once(block, results)
                return
            except PoolError as exc:
                if exc.code is grpc.StatusCode.CANCELLED:
                    # The channel closed under us (shutdown): not acknowledged, not refused.
                    raise asyncio.CancelledError from None
                if exc.code in _TRANSIENT or exc.code is grpc.StatusCode.INTERNAL:
                    delay = self.client.backoff.delay(attempt)
                    attempt += 1
                    log.warning(
                        "report of block %d not acknowledged (%s); again in %.1fs",
                        block,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                log.error("report of block %d refused, dropped: %s", block, exc)
                self.dropped += len(results)
                self.cursors.done([r.assignment.cursor for r in results])
                if self.on_reported is not None:
                    self.on_reported(block, results, pooler_pb2.ReportWorkResponse())
                return

    async def _send_once(self, block: int, results: list[WorkResult]) -> None:
        reports = [work_report(r) for r in results]
        answer = await self.client.report_work(block, reports)
        self.reported += len(results)
        self.cursors.done([r.assignment.cursor for r in results])
        log.info(
            "block %d: reported %d results (%d new, %d repeated), %d ready for harvest",
            block,
            len(results),
            answer.recorded,
            answer.already_recorded,
            len(answer.ready_for_harvest),
        )
        if self.on_reported is not None:
            self.on_reported(block, results, answer)
