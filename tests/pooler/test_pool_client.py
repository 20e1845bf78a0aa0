"""The agent's pool-facing part: the WorkResult -> WorkReport converter, the saved cursor,
retries, authentication, and plant -> stream -> work -> report against the real pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kalepool.chain import Fault, current_block
from kalepool.settings import Settings
from kalepool.tls import POOL_CLIENT, POOL_SERVER, DevPki
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2
from pool_service.server import start_pool_server
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock
from pooler_agent.pool_client import (
    Backoff,
    CursorFile,
    CursorTracker,
    PoolClient,
    PoolError,
    ReportOutcome,
    StreamTakenOver,
    WorkReporter,
    work_report,
)
from pooler_agent.work_manager import MinedWork
from pooler_agent.work_submitter import (
    ChannelPool,
    FailureCode,
    WorkResult,
    WorkStatus,
    WorkSubmitter,
)
from tests.chain.stage import mine
from tests.pool.conftest import KALE, PoolStage, until

FARMER = "GBDQHVGYMXRXND7GR6LSSYTLAMADT5L2UV6TRCNQDITL73KETRW6YHPI"


def _assignment(cursor: int = 7) -> Assignment:
    return Assignment(
        farmer_address=FARMER,
        block_index=5,
        entropy=bytes(32),
        stake_stroops=0,
        plant_ledger=10,
        block_opened_at=1_000.0,
        cursor=cursor,
        farmer_id="f-1",
    )


async def _reported(reporter: WorkReporter, count: int) -> None:
    async def enough() -> bool:
        return reporter.reported >= count

    await until(enough, 10)


# --- the converter ----------------------------------------------------------------------


def test_a_success_carries_hash_gap_and_transaction() -> None:
    result = WorkResult(
        _assignment(),
        WorkStatus.SUCCESS,
        nonce=42,
        hash=b"\x00" + b"\x11" * 31,
        zeros=2,
        hashes=1000,
        gap=3,
        tx_hash="ab" * 32,
        ledger=13,
        submitted_at=1_700_000_000.5,
    )
    report = work_report(result)
    assert report.farmer_id == "f-1"
    assert report.status == records_pb2.EVENT_STATUS_SUCCEEDED
    assert (report.nonce, report.hash, report.zeros, report.gap) == (42, result.hash, 2, 3)
    assert report.transaction.tx_hash == "ab" * 32 and report.transaction.ledger == 13
    assert report.transaction.status == common_pb2.TX_STATUS_SUCCESS
    assert report.submitted_at.seconds == 1_700_000_000 and report.hashes_computed == 1000
    assert not report.HasField("failure")


def test_work_never_found_is_reported_without_hash_and_blamed_on_the_pooler() -> None:
    # A search cancelled because the block ended has no hash: none is sent, none reported.
    late = WorkResult(
        _assignment(),
        WorkStatus.FAILED,
        nonce=0,
        hash=b"",
        zeros=0,
        hashes=0,
        fault=Fault.POOLER,
        failure=FailureCode.WORK_LATE,
        message="not sent: block 6 opened",
    )
    report = work_report(late)
    assert report.status == records_pb2.EVENT_STATUS_FAILED
    assert report.hash == b"" and report.nonce == 0 and not report.HasField("transaction")
    assert report.failure.code == common_pb2.FAILURE_CODE_WORK_LATE
    assert report.failure.fault == common_pb2.FAULT_PARTY_POOLER
    # No code and no party: the pooler's, as a miner failure (the pool refuses a failure
    # without a party).
    bare = work_report(
        WorkResult(_assignment(), WorkStatus.FAILED, nonce=0, hash=b"", zeros=0, hashes=0)
    )
    assert bare.failure.code == common_pb2.FAILURE_CODE_MINER_FAILED
    assert bare.failure.fault == common_pb2.FAULT_PARTY_POOLER
    chain = work_report(
        WorkResult(
            _assignment(),
            WorkStatus.FAILED,
            nonce=1,
            hash=b"\x22" * 32,
            zeros=0,
            hashes=5,
            fault=Fault.CHAIN,
            failure=FailureCode.PAIL_MISSING,
            contract_error=9,
        )
    )
    assert chain.failure.code == common_pb2.FAILURE_CODE_PAIL_MISSING
    assert chain.failure.fault == common_pb2.FAULT_PARTY_CHAIN
    assert chain.failure.contract_error == 9 and chain.hash == b"\x22" * 32


def test_a_pending_work_names_its_transaction() -> None:
    report = work_report(
        WorkResult(
            _assignment(),
            WorkStatus.PENDING,
            nonce=1,
            hash=b"\x33" * 32,
            zeros=0,
            hashes=1,
            tx_hash="cd" * 32,
        )
    )
    assert report.status == records_pb2.EVENT_STATUS_PENDING
    assert report.transaction.tx_hash == "cd" * 32
    assert report.transaction.status == common_pb2.TX_STATUS_PENDING


# --- the saved cursor -------------------------------------------------------------------


def test_the_saved_cursor_moves_only_past_reported_assignments(tmp_path: Path) -> None:
    store = CursorFile(tmp_path / "state" / "cursor.json")
    assert store.load() == 0
    tracker = CursorTracker(store)
    for cursor in (3, 8, 12):
        tracker.receive(cursor)
    tracker.receive(8)  # a replay moves nothing
    assert tracker.received == 12
    tracker.done([8])  # 3 is not reported yet: nothing saved
    assert store.load() == 0 and tracker.saved == 0
    tracker.done([3])
    assert store.load() == 8
    tracker.done([12])
    assert store.load() == 12
    # A restarted agent resumes after what was reported.
    again = CursorTracker(store)
    assert again.saved == again.received == 12
    again.reset()
    assert store.load() == 0


def test_an_unreadable_cursor_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "cursor.json"
    path.write_text("{not json")
    assert CursorFile(path).load() == 0


# --- calls ------------------------------------------------------------------------------


async def test_unavailable_is_retried_with_backoff_then_reported(
    pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens there: every try is UNAVAILABLE.
    client = PoolClient(
        "127.0.0.1:1",
        pki.client("rig-retry"),
        pki.ca_pem,
        "secret-api-key-value",
        timeout=2.0,
        retry_attempts=2,
        backoff=Backoff(initial=0.01, maximum=0.02),
    )
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(PoolError) as failed:
            await client.request_plant(5)
    finally:
        await client.close()
    assert failed.value.code.name == "UNAVAILABLE"
    retries = [r for r in caplog.records if "RequestPlant: UNAVAILABLE; retry" in r.getMessage()]
    assert len(retries) == 2
    assert all("secret-api-key-value" not in r.getMessage() for r in caplog.records)


async def test_a_wrong_key_is_refused_without_echoing_it(pool: PoolStage) -> None:
    assert pool.server is not None
    client = PoolClient(
        f"127.0.0.1:{pool.server.port}", pool.pki.client("rig-x"), pool.pki.ca_pem, "not-a-key"
    )
    try:
        with pytest.raises(PoolError) as refused:
            await client.request_plant((await current_block(pool.chain)).index)
    finally:
        await client.close()
    assert refused.value.code.name == "UNAUTHENTICATED"
    assert "not-a-key" not in str(refused.value)


async def test_plant_stream_work_report_and_a_restart_resumes_after_the_reported(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=10_000)
    pooler, key = await pool.register_pooler("rig-stream")
    farmers = [await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE) for _ in range(3)]
    assert pool.server is not None
    address = f"127.0.0.1:{pool.server.port}"
    client = PoolClient(address, pool.pki.client("rig-stream"), pool.pki.ca_pem, key)
    store = CursorFile(tmp_path / "cursor.json")
    tracker = CursorTracker(store)
    try:
        block = (await current_block(pool.chain)).index
        planted = await client.request_plant(block)
        # Answered once sent (the client asks so): planted, or on the way.
        assert planted.summary.planted + planted.summary.pending == 3
        assert not planted.summary.failed
        # The stream brings the three assignments (cursor order) as they land.
        stream = client.assignments(tracker)
        messages = [await asyncio.wait_for(anext(stream), 10) for _ in range(3)]
        await stream.aclose()
        assert sorted(m.farmer_id for m in messages) == sorted(f.farmer_id for f in farmers)
        cursors = [m.cursor for m in messages]
        assert cursors == sorted(cursors) and tracker.received == cursors[-1]
        assignments = [Assignment.from_proto(m) for m in messages]

        # Two works mined and sent from a channel account; the third never found.
        clock = ChainClock()
        latest = await pool.chain.latest_ledger()
        clock.observe(latest.sequence, latest.close_time)
        channel = await pool.stage.account()
        submitter = WorkSubmitter(pool.chain, ChannelPool(pool.chain, [channel], clock=clock))
        results = []
        for a in assignments[:2]:
            nonce, digest, zeros = mine(block, a.entropy, a.farmer_address, 1)
            mined = MinedWork(a, nonce, digest, zeros, 1, 0.0, "target")
            results.append(await submitter.submit(mined))
        assert [r.status for r in results] == [WorkStatus.SUCCESS] * 2
        lost = MinedWork(
            assignments[2], 0, b"", 0, 0, 0.0, "cancelled", cancelled="late", block_closed=True
        )
        results.append(await submitter.submit(lost))
        assert results[2].status is WorkStatus.FAILED and results[2].hash == b""

        # Reported in one batch; the first two are acknowledged before the third.
        answers: list[ReportOutcome] = []
        reporter = WorkReporter(
            client, tracker, linger=0.01, on_acknowledged=lambda r, o: answers.append(o)
        )
        for r in results[:2]:
            reporter.add(r)
        runner = asyncio.create_task(reporter.run())
        await _reported(reporter, 2)
        assert answers == [ReportOutcome.RECORDED] * 2
        assert store.load() == cursors[1]  # the third is not reported yet
    finally:
        runner.cancel()
        await client.close()

    # A restarted agent (a new client, the same file) gets only the unreported assignment.
    client = PoolClient(address, pool.pki.client("rig-stream"), pool.pki.ca_pem, key)
    tracker = CursorTracker(store)
    try:
        stream = client.assignments(tracker)
        again = await asyncio.wait_for(anext(stream), 10)
        assert again.cursor == cursors[2]
        nothing_else = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait([nothing_else], timeout=0.6)
        assert not done, "an assignment already reported came again"
        nothing_else.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nothing_else
        await stream.aclose()
        reporter = WorkReporter(client, tracker, linger=0.01)
        reporter.add(results[2])  # the empty-hash failure
        for r in results[:2]:
            reporter.add(r)  # repeated reports are harmless
        answer_log: list[ReportOutcome] = []
        reporter.on_acknowledged = lambda r, o: answer_log.append(o)
        runner = asyncio.create_task(reporter.run())
        await _reported(reporter, 3)
        # A pool from before per-result outcomes answers none: the batch was accepted.
        assert len(answer_log) == 3 and set(answer_log) <= {
            ReportOutcome.RECORDED,
            ReportOutcome.ALREADY_RECORDED,
        }
        assert store.load() == cursors[2]
        assert await pool.count("works") == 3
    finally:
        runner.cancel()
        await client.close()


async def test_the_feed_reconnects_after_the_pool_restarts_and_repeats_nothing(
    pool: PoolStage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pooler_agent.pool_client")
    await pool.start(rate_limit_requests_per_minute=10_000)
    pooler, key = await pool.register_pooler("rig-reconnect")
    first = await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    assert pool.server is not None
    port = pool.server.port
    client = PoolClient(
        f"127.0.0.1:{port}",
        pool.pki.client("rig-reconnect"),
        pool.pki.ca_pem,
        key,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    tracker = CursorTracker(CursorFile(tmp_path / "cursor.json"))
    stream = client.assignments(tracker)
    waiting: asyncio.Future[pooler_pb2.Assignment] | None = None
    try:
        block = (await current_block(pool.chain)).index
        await client.request_plant(block)
        got = await asyncio.wait_for(anext(stream), 10)
        assert got.farmer_id == first.farmer_id
        waiting = asyncio.ensure_future(anext(stream))

        # The pool goes away (the feed sees it gone and tries again, in vain, at least once)
        # and comes back on the same address.
        def reconnects() -> int:
            return sum("reconnecting" in r.getMessage() for r in caplog.records)

        await pool.server.stop(0)
        await until(lambda: reconnects() >= 2, what="a reconnect attempt while the pool is away")
        pool.server = await start_pool_server(
            address=f"127.0.0.1:{port}",
            conninfo=pool.service_conninfo,
            chain=pool.chain,
            identity=pool.pki.server(POOL_SERVER),
            ca_pem=pool.pki.ca_pem,
            wallet_address=f"127.0.0.1:{pool.wallet.server.port}",
            wallet_identity=pool.pki.client(POOL_CLIENT),
            settings=Settings(
                network="devnet",
                data_dir=pool.data_dir,
                _env_file=None,
                rate_limit_requests_per_minute=10_000,
            ),
            pool_size=8,
            feed_poll_seconds=0.2,
        )
        second = await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
        await client.request_plant(block)  # plants the new farmer only
        after = await asyncio.wait_for(waiting, 15)
        assert after.farmer_id == second.farmer_id and after.cursor > got.cursor
        assert tracker.received == after.cursor
    finally:
        if waiting is not None and not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await stream.aclose()
        await client.close()


async def test_a_second_agent_with_the_same_key_takes_the_stream_over(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=10_000)
    pooler, key = await pool.register_pooler("rig-twice")
    await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    assert pool.server is not None
    address = f"127.0.0.1:{pool.server.port}"
    one = PoolClient(address, pool.pki.client("rig-twice"), pool.pki.ca_pem, key)
    two = PoolClient(address, pool.pki.client("rig-twice"), pool.pki.ca_pem, key)
    first = one.assignments(CursorTracker(CursorFile(tmp_path / "one.json")))
    second = two.assignments(CursorTracker(CursorFile(tmp_path / "two.json")))
    try:
        await one.request_plant((await current_block(pool.chain)).index)
        await asyncio.wait_for(anext(first), 10)
        waiting = asyncio.ensure_future(anext(first))
        await asyncio.wait_for(anext(second), 10)  # the newer stream replays from 0
        with pytest.raises(StreamTakenOver):
            await asyncio.wait_for(waiting, 10)
    finally:
        await second.aclose()
        await one.close()
        await two.close()


class _Call:
    """A StreamAssignments call that fails with `code`, or yields `messages`."""

    def __init__(self, code: grpc.StatusCode | None, messages: list[pooler_pb2.Assignment]) -> None:
        self.code = code
        self.messages = messages

    def cancel(self) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[pooler_pb2.StreamAssignmentsResponse]:
        return self._run()

    async def _run(self) -> AsyncIterator[pooler_pb2.StreamAssignmentsResponse]:
        if self.code is not None:
            raise grpc.aio.AioRpcError(
                self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "the pool failed inside"
            )
        for message in self.messages:
            yield pooler_pb2.StreamAssignmentsResponse(assignment=message)
        await asyncio.Event().wait()  # then nothing more, as an open stream


@pytest.mark.parametrize(
    ("codes", "fatal"),
    [
        ([grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE], False),
        ([grpc.StatusCode.UNAUTHENTICATED], True),
    ],
)
async def test_the_feed_waits_out_a_failing_pool_but_not_a_refusal(
    pki: DevPki, tmp_path: Path, codes: list[grpc.StatusCode], fatal: bool
) -> None:
    client = PoolClient(
        "127.0.0.1:1",
        pki.client("rig-feed"),
        pki.ca_pem,
        "key",
        backoff=Backoff(initial=0.01, maximum=0.02),
    )
    calls = [_Call(code, []) for code in codes] + [_Call(None, [_assignment(9).to_proto()])]
    client.stub = type("Stub", (), {"StreamAssignments": lambda self, *a, **k: calls.pop(0)})()
    stream = client.assignments(CursorTracker(CursorFile(tmp_path / "cursor.json")))
    try:
        if fatal:
            with pytest.raises(PoolError) as refused:
                await asyncio.wait_for(anext(stream), 5)
            assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
        else:
            got = await asyncio.wait_for(anext(stream), 5)
            assert got.cursor == 9 and calls == []
    finally:
        await stream.aclose()
        await client.close()
