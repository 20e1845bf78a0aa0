"""Reporting work, each result answered on its own (a fake pool: the agent's logic alone),
and the work journal on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import pytest
from stellar_sdk import Keypair

from kalepool.v1 import pooler_pb2, records_pb2
from pooler_agent.journal import WorkJournal
from pooler_agent.pool_client import (
    CursorFile,
    CursorTracker,
    PoolClient,
    PoolError,
    ReportOutcome,
    WorkReporter,
    report_outcomes,
)
from pooler_agent.work_manager import MinedWork
from pooler_agent.work_submitter import WorkResult, WorkStatus
from tests.waits import until

from .fakes import PASSPHRASE, FakePool, farmer_assignment, signed

R = pooler_pb2


def _result(
    cursor: int, status: WorkStatus = WorkStatus.SUCCESS, tx: bool = True, block: int = 7
) -> WorkResult:
    a = farmer_assignment(block, 999_000.0, cursor)
    return WorkResult(
        a,
        status,
        nonce=cursor,
        hash=bytes(32),
        zeros=64,
        hashes=10,
        gap=2 if status is WorkStatus.SUCCESS else None,
        tx_hash=f"{cursor:064x}" if tx else None,
        ledger=100 if status is WorkStatus.SUCCESS else None,
    )


class Journal:
    """Records which envelopes the reporter closed."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def reported(self, tx_hash: str) -> None:
        self.closed.append(tx_hash)


def _reporter(
    pool: FakePool, tmp_path: Path, journal: Journal | None = None
) -> tuple[WorkReporter, CursorTracker, list[tuple[WorkResult, ReportOutcome]]]:
    cursors = CursorTracker(CursorFile(tmp_path / "cursor.json"))
    seen: list[tuple[WorkResult, ReportOutcome]] = []
    reporter = WorkReporter(
        cast(PoolClient, pool),
        cursors,
        linger=0.01,
        journal=journal,
        on_acknowledged=lambda r, o: seen.append((r, o)),
    )
    return reporter, cursors, seen


def _outcome(report: pooler_pb2.WorkReport, outcome: int, message: str = "") -> R.WorkReportOutcome:
    return R.WorkReportOutcome(farmer_id=report.farmer_id, outcome=outcome, message=message)  # type: ignore[arg-type]


async def test_each_result_is_answered_on_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = [
        _result(1),
        _result(2),
        _result(3, WorkStatus.PENDING),
        _result(4),
        _result(5, WorkStatus.FAILED),
    ]
    retried = {results[3].assignment.farmer_id}
    script = [
        R.REPORT_OUTCOME_RECORDED,
        R.REPORT_OUTCOME_ALREADY_RECORDED,
        R.REPORT_OUTCOME_PENDING,
        R.REPORT_OUTCOME_RETRY,
        R.REPORT_OUTCOME_REFUSED,
    ]

    def answer(reports: list[pooler_pb2.WorkReport]) -> pooler_pb2.ReportWorkResponse:
        if len(reports) == 1 and reports[0].farmer_id in retried:  # checkable the second time
            return R.ReportWorkResponse(outcomes=[_outcome(reports[0], R.REPORT_OUTCOME_RECORDED)])
        return R.ReportWorkResponse(
            outcomes=[
                _outcome(r, o, "a conflict with what is recorded" if o == 5 else "")
                for r, o in zip(reports, script, strict=True)
            ]
        )

    pool = FakePool(answer=answer)
    journal = Journal()
    reporter, cursors, seen = _reporter(pool, tmp_path, journal)
    for cursor in range(1, 6):
        cursors.receive(cursor)
    for r in results:
        reporter.add(r)
    runner = asyncio.create_task(reporter.run())
    try:
        with caplog.at_level(logging.WARNING):
            await until(lambda: len(seen) == 5)
            await asyncio.wait_for(reporter.wait_idle(), 5)
    finally:
        runner.cancel()
    outcomes = {r.assignment.cursor: o for r, o in seen}
    assert outcomes == {
        1: ReportOutcome.RECORDED,
        2: ReportOutcome.ALREADY_RECORDED,
        3: ReportOutcome.PENDING,
        4: ReportOutcome.RECORDED,  # after a RETRY
        5: ReportOutcome.REFUSED,
    }
    assert [len(batch) for _, batch in pool.reports] == [5, 1]
    assert cursors.saved == 5  # every result acknowledged
    # The pending one stays journaled (its transaction is still followed); the rest closed.
    assert sorted(journal.closed) == sorted(results[i].tx_hash or "" for i in (0, 1, 3, 4))
    refusals = [r for r in caplog.records if "refused for good" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    assert "a conflict with what is recorded" in refusals[0].getMessage()
    assert reporter.refused == 1 and reporter.retried == 1


async def test_a_pool_without_per_result_outcomes_accepted_the_batch(tmp_path: Path) -> None:
    pool = FakePool()  # answers no outcomes, as the pool did before
    journal = Journal()
    reporter, cursors, seen = _reporter(pool, tmp_path, journal)
    results = [_result(1), _result(2, WorkStatus.PENDING)]
    for r in results:
        cursors.receive(r.assignment.cursor)
        reporter.add(r)
    runner = asyncio.create_task(reporter.run())
    try:
        await until(lambda: len(seen) == 2)
    finally:
        runner.cancel()
    assert [o for _, o in seen] == [ReportOutcome.RECORDED, ReportOutcome.PENDING]
    assert cursors.saved == 2 and journal.closed == [results[0].tx_hash]


def test_outcomes_are_matched_by_farmer_and_a_missing_one_is_retried() -> None:
    results = [_result(1), _result(2), _result(3)]
    reports = [r.assignment.farmer_id for r in results]
    answer = R.ReportWorkResponse(
        outcomes=[
            R.WorkReportOutcome(farmer_id=reports[1], outcome=R.REPORT_OUTCOME_REFUSED),
            R.WorkReportOutcome(farmer_id=reports[0], outcome=R.REPORT_OUTCOME_RECORDED),
        ]
    )
    assert [o for o, _ in report_outcomes(results, answer)] == [
        ReportOutcome.RECORDED,
        ReportOutcome.REFUSED,
        ReportOutcome.RETRY,
    ]


async def test_a_report_the_pool_cannot_take_now_is_sent_again(tmp_path: Path) -> None:
    pool = FakePool(
        report_failures=[grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    )
    reporter, cursors, seen = _reporter(pool, tmp_path)
    cursors.receive(1)
    reporter.add(_result(1))
    runner = asyncio.create_task(reporter.run())
    try:
        await until(lambda: len(seen) == 1)
    finally:
        runner.cancel()
    assert len(pool.reports) == 3 and cursors.saved == 1


async def test_a_block_whose_report_keeps_failing_holds_no_other_back(tmp_path: Path) -> None:
    """The pool fails block 7's report again and again (INTERNAL): blocks 8's and 9's
    are answered meanwhile, and block 7's is tried again until the pool takes it."""
    pool = FakePool(failing_blocks={7})
    reporter, cursors, seen = _reporter(pool, tmp_path)
    stuck, other, later = _result(1, block=7), _result(2, block=8), _result(3, block=9)
    for r in (stuck, other):
        cursors.receive(r.assignment.cursor)
        reporter.add(r)
    runner = asyncio.create_task(reporter.run())
    try:
        await until(lambda: len(seen) == 1)
        assert seen[0][0] is other
        cursors.receive(later.assignment.cursor)
        reporter.add(later)  # a block that ends after the failing one started failing
        await until(lambda: len(seen) == 2)
        assert seen[1][0] is later
        await until(lambda: sum(1 for block, _ in pool.reports if block == 7) >= 3)
        assert not reporter.idle and cursors.saved == 0  # block 7's is not dropped
        pool.failing_blocks.clear()
        await until(lambda: len(seen) == 3)
        await asyncio.wait_for(reporter.wait_idle(), 5)
    finally:
        runner.cancel()
    assert seen[2] == (stuck, ReportOutcome.RECORDED)
    assert cursors.saved == 3


async def test_one_bad_result_does_not_drop_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = [_result(1), _result(2), _result(3)]
    bad = results[1].assignment.farmer_id

    def answer(reports: list[pooler_pb2.WorkReport]) -> pooler_pb2.ReportWorkResponse:
        # A pool from before per-result outcomes refuses a whole batch for one result.
        if any(r.farmer_id == bad for r in reports):
            raise PoolError("ReportWork", grpc.StatusCode.ALREADY_EXISTS, "recorded otherwise")
        return R.ReportWorkResponse(recorded=len(reports))

    pool = FakePool(answer=answer)
    reporter, cursors, seen = _reporter(pool, tmp_path)
    for r in results:
        cursors.receive(r.assignment.cursor)
        reporter.add(r)
    runner = asyncio.create_task(reporter.run())
    try:
        with caplog.at_level(logging.WARNING):
            await until(lambda: len(seen) == 3)
    finally:
        runner.cancel()
    by_cursor = {r.assignment.cursor: o for r, o in seen}
    assert by_cursor == {
        1: ReportOutcome.RECORDED,
        2: ReportOutcome.REFUSED,
        3: ReportOutcome.RECORDED,
    }
    assert cursors.saved == 3
    assert [len(b) for _, b in pool.reports] == [3, 1, 1, 1]
    warned = [r for r in caplog.records if "refused for good" in r.getMessage()]
    assert len(warned) == 1 and "ALREADY_EXISTS: recorded otherwise" in warned[0].getMessage()


async def test_a_settled_result_supersedes_its_pending_one_still_queued(tmp_path: Path) -> None:
    pool = FakePool()
    reporter, _, seen = _reporter(pool, tmp_path)
    pending = _result(1, WorkStatus.PENDING)
    reporter.add(pending)
    reporter.add(replace(pending, status=WorkStatus.SUCCESS, gap=2, ledger=100))
    runner = asyncio.create_task(reporter.run())
    try:
        await until(lambda: len(seen) == 1)
    finally:
        runner.cancel()
    (batch,) = [b for _, b in pool.reports]
    assert len(batch) == 1 and batch[0].status == records_pb2.EVENT_STATUS_SUCCEEDED


# --- the journal -----------------------------------------------------------------------------


def _mined(cursor: int) -> MinedWork:
    return MinedWork(farmer_assignment(7, 999_000.0, cursor), 42, bytes(32), 64, 9, 1.0, "deadline")


async def test_the_journal_keeps_envelopes_until_reported_and_survives_a_torn_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pooler" / "journal.jsonl"
    journal = WorkJournal(path)
    one, two = _mined(1), _mined(2)
    tx_one, tx_two = signed(1_000_060), signed(1_000_060)
    await journal.record(one, tx_one)
    await journal.record(two, tx_two)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await journal.reported(tx_one.hash)
    # A crash mid-append leaves half a line.
    with path.open("a") as fh:
        fh.write('{"sent": {"assign')

    again = WorkJournal(path, covered=lambda: 0)
    (left,) = again.unreported
    assert left.tx_hash == tx_two.hash and left.assignment == two.assignment
    assert (left.nonce, left.hash, left.zeros, left.max_time) == (42, bytes(32), 64, 1_000_060)
    result = left.pending_result(PASSPHRASE)
    assert result.status is WorkStatus.PENDING and result.envelope == tx_two
    # The reported one is still known while its cursor is not saved: not mined again.
    assert again.keys == {one.assignment.key, two.assignment.key}
    # The file was rewritten without the torn line.
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)

    # Once the cursor covers it, the reported entry is dropped at the next rewrite.
    covered = WorkJournal(path, covered=lambda: 1)
    assert covered.keys == {two.assignment.key}


async def test_the_journal_holds_no_secret_and_is_rewritten_as_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = WorkJournal(path, covered=lambda: 10_000, rewrite_after=8)
    payer = Keypair.random()
    for cursor in range(1, 21):
        tx = signed(1_000_060, payer)
        await journal.record(_mined(cursor), tx)
        if cursor == 1:
            text = path.read_text()  # the envelope: signed by the payer, never its key
            assert payer.public_key in text and payer.secret not in text
        await journal.reported(tx.hash)
    assert len(path.read_text().splitlines()) < 20  # rewritten along the way, not 40 lines
    assert WorkJournal(path).unreported == []
