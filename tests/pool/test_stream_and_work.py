"""The assignment stream (replay, resume, live, replacement, cursors) and ReportWork."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.chain import build_work, current_block, read_block, read_farm_call, sign, submit
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2
from tests.chain.stage import mine

from .conftest import BLOCK_SECONDS, KALE, PoolStage, until
from .test_pooler_auth import bearer


async def next_assignment(call: Any) -> pooler_pb2.Assignment:
    message = await asyncio.wait_for(call.read(), 10)
    assert message is not grpc.aio.EOF
    assert isinstance(message, pooler_pb2.StreamAssignmentsResponse)
    return message.assignment


async def test_stream_replays_resumes_and_pushes_live(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    farmers = [await pool.funded_farmer(pooler.pooler_id) for _ in range(2)]
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    planted = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth
    )
    assert planted.summary.planted == 2
    chain_block = await read_block(pool.chain, block)
    assert chain_block is not None

    first = stub.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=auth
    )
    got = [await next_assignment(first), await next_assignment(first)]
    assert {a.farmer_id for a in got} == {f.farmer_id for f in farmers}
    assert got[0].cursor < got[1].cursor
    by_farmer = {p.farmer_id: p for p in planted.planted}
    for a in got:
        p = by_farmer[a.farmer_id]
        assert (a.planting_id, a.plant_ledger, a.block_index) == (
            p.planting_id,
            p.plant_ledger,
            block,
        )
        assert a.farmer_address == p.custodial_address and a.entropy == chain_block.entropy
        assert a.block_opened_at.seconds == chain_block.timestamp
        assert a.work_deadline.seconds == chain_block.timestamp + BLOCK_SECONDS

    # A newer stream of the same pooler ends the older one; it resumes after a cursor.
    second = stub.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=got[0].cursor), metadata=auth
    )
    assert (await next_assignment(second)).cursor == got[1].cursor
    with pytest.raises(grpc.aio.AioRpcError) as replaced:
        await asyncio.wait_for(first.read(), 10)
    assert replaced.value.code() is grpc.StatusCode.ABORTED

    # Live: a farmer planted now arrives on the open stream, and nothing before it again.
    late = await pool.funded_farmer(pooler.pooler_id)
    again = await stub.RequestPlant(
        pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth
    )
    assert again.summary.planted == 3
    live = await next_assignment(second)
    assert live.farmer_id == late.farmer_id and live.cursor > got[1].cursor
    second.cancel()

    # A cursor never issued: OUT_OF_RANGE.
    bad = stub.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=live.cursor + 1000), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as out:
        await asyncio.wait_for(bad.read(), 10)
    assert out.value.code() is grpc.StatusCode.OUT_OF_RANGE

    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    assert [a.cursor for a in snapshot.assignments] == [*(a.cursor for a in got), live.cursor]


async def _works(pool: PoolStage) -> list[tuple[str, str, str]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT farmer_id::text, status::text, fault::text FROM works ORDER BY id"
        )
        return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


@dataclass
class Worked:
    """A work submitted on chain for a farmer, and its honest report."""

    assignment: pooler_pb2.Assignment
    report: pooler_pb2.WorkReport


async def submit_work(pool: PoolStage, a: pooler_pb2.Assignment, fee: Keypair) -> Worked:
    """Mine and submit `work` from the pooler's own account, as the agent does."""
    nonce, digest, zeros = mine(a.block_index, a.entropy, a.farmer_address, 1)
    tx = await build_work(pool.chain, a.farmer_address, digest, nonce, source=fee.public_key)
    outcome = await submit(pool.chain, sign(tx, fee))
    assert outcome.ok, outcome.describe()
    return Worked(
        a,
        pooler_pb2.WorkReport(
            farmer_id=a.farmer_id,
            status=records_pb2.EVENT_STATUS_SUCCEEDED,
            nonce=nonce,
            hash=digest,
            zeros=zeros,
            gap=outcome.value or 0,
            transaction=common_pb2.TransactionRef(
                tx_hash=outcome.hash,
                status=common_pb2.TX_STATUS_SUCCESS,
                ledger=outcome.ledger or 0,
            ),
        ),
    )


def changed(report: pooler_pb2.WorkReport, **changes: Any) -> pooler_pb2.WorkReport:
    out = pooler_pb2.WorkReport()
    out.CopyFrom(report)
    for name, value in changes.items():
        if name == "tx_hash":
            out.transaction.tx_hash = value
        elif name == "ledger":
            out.transaction.ledger = value
        else:
            setattr(out, name, value)
    return out


def outcomes(response: pooler_pb2.ReportWorkResponse) -> list[tuple[str, int]]:
    return [(o.farmer_id, o.outcome) for o in response.outcomes]


RECORDED = pooler_pb2.REPORT_OUTCOME_RECORDED
ALREADY = pooler_pb2.REPORT_OUTCOME_ALREADY_RECORDED
REFUSED = pooler_pb2.REPORT_OUTCOME_REFUSED
RETRY = pooler_pb2.REPORT_OUTCOME_RETRY
PENDING = pooler_pb2.REPORT_OUTCOME_PENDING


async def test_report_work_decides_each_result_on_its_own(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    first, second, missed, idle = [await pool.funded_farmer(pooler.pooler_id) for _ in range(4)]
    other_pooler, _ = await pool.register_pooler("other")
    stranger = await pool.funded_farmer(other_pooler.pooler_id)
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    by_farmer = {a.farmer_id: a for a in snapshot.assignments}
    fee = await pool.stage.account()
    a = await submit_work(pool, by_farmer[first.farmer_id], fee)
    b = await submit_work(pool, by_farmer[second.farmer_id], fee)

    async def report(*results: pooler_pb2.WorkReport) -> pooler_pb2.ReportWorkResponse:
        return await stub.ReportWork(
            pooler_pb2.ReportWorkRequest(block_index=block, results=results), metadata=auth
        )

    failure = pooler_pb2.WorkReport(
        farmer_id=missed.farmer_id,
        status=records_pb2.EVENT_STATUS_FAILED,
        failure=common_pb2.Failure(
            code=common_pb2.FAILURE_CODE_WORK_LATE,
            fault=common_pb2.FAULT_PARTY_POOLER,
            message="mining ended after the next block opened",
        ),
    )
    # One bad result (another pooler's farmer) among two good ones: only it is refused.
    mixed = (a.report, changed(failure, farmer_id=stranger.farmer_id), failure)
    got = await report(*mixed)
    assert outcomes(got) == [
        (first.farmer_id, RECORDED),
        (stranger.farmer_id, REFUSED),
        (missed.farmer_id, RECORDED),
    ]
    assert "no assignment of this pooler" in got.outcomes[1].message
    assert (got.recorded, got.already_recorded, got.refused, got.retry) == (2, 0, 1, 0)
    assert list(got.ready_for_harvest) == [first.farmer_id]
    recorded = await _works(pool)
    assert recorded == [
        (first.farmer_id, "success", "none"),
        (missed.farmer_id, "failed", "pooler"),
    ]
    again = await report(*mixed)
    assert [o for _, o in outcomes(again)] == [ALREADY, REFUSED, ALREADY]
    assert (again.recorded, again.already_recorded, again.refused) == (0, 2, 1)

    # Made-up successes are refused, each with its reason, and nothing is recorded.
    unmined = mine(block, by_farmer[idle.farmer_id].entropy, idle.custodial_address, 1)
    invented = pooler_pb2.WorkReport(
        farmer_id=idle.farmer_id,
        status=records_pb2.EVENT_STATUS_SUCCEEDED,
        nonce=unmined[0],
        hash=unmined[1],
        zeros=unmined[2],
        gap=3,
        transaction=common_pb2.TransactionRef(tx_hash="ab" * 32, ledger=999_999),
    )
    made_up = [
        (invented, "shows no work"),  # a transaction nobody made, a pail never worked
        (changed(b.report, ledger=b.report.transaction.ledger + 1), "applied in ledger"),
        (changed(b.report, gap=b.report.gap + 1), "returned gap"),
        (changed(b.report, tx_hash=a.report.transaction.tx_hash), "another farmer"),
        (changed(b.report, nonce=b.report.nonce + 1), "not the work hash"),
        (changed(b.report, hash=b.report.hash[:31]), "32 bytes"),
        (changed(b.report, zeros=b.report.zeros + 1), "leading zeros"),
        (changed(b.report, gap=0), "at least 1"),
        (changed(b.report, tx_hash="XYZ"), "64 lower-case hex"),
        (changed(failure, farmer_id=first.farmer_id), "already recorded as succeeded"),
        (changed(failure, farmer_id="nope"), "farmer_id"),
    ]
    for bad, why in made_up:
        refused = await report(bad)
        assert outcomes(refused) == [(bad.farmer_id, REFUSED)], (why, refused)
        assert why in refused.outcomes[0].message, (why, refused.outcomes[0].message)
        assert refused.refused == 1 and refused.recorded == 0
    assert await _works(pool) == recorded

    # The chain cannot be read: a success waits (RETRY), a failure needs no chain.
    await pool.stage.faults(error_rate={"getTransaction": 1.0})
    try:
        late = changed(failure, farmer_id=idle.farmer_id)
        blind = await report(b.report, late)
    finally:
        await pool.stage.faults(error_rate={})
    assert outcomes(blind) == [(second.farmer_id, RETRY), (idle.farmer_id, RECORDED)]
    assert "report it again" in blind.outcomes[0].message and blind.retry == 1
    pending = changed(b.report, status=records_pb2.EVENT_STATUS_PENDING)
    assert outcomes(await report(pending)) == [(second.farmer_id, PENDING)]
    honest = await report(b.report)
    assert outcomes(honest) == [(second.farmer_id, RECORDED)]
    assert list(honest.ready_for_harvest) == [second.farmer_id]

    # A request malformed as a whole is refused with a status and changes nothing.
    before = await _works(pool)
    for request, code in [
        (pooler_pb2.ReportWorkRequest(block_index=block), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pooler_pb2.ReportWorkRequest(block_index=block, results=[failure, failure]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pooler_pb2.ReportWorkRequest(block_index=block, results=[failure] * 1001),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pooler_pb2.ReportWorkRequest(block_index=block + 5, results=[failure]),
            grpc.StatusCode.OUT_OF_RANGE,
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReportWork(request, metadata=auth)
        assert info.value.code() is code and info.value.details(), request
    assert await _works(pool) == before


@pytest.mark.parametrize("pool", [{"history_ledgers": 120}], indirect=True)
async def test_a_work_the_rpc_forgot_is_proven_by_its_pail(
    pool: PoolStage, caplog: pytest.LogCaptureFixture
) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    worked, idle = [await pool.funded_farmer(pooler.pooler_id) for _ in range(2)]
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    by_farmer = {a.farmer_id: a for a in snapshot.assignments}
    w = await submit_work(pool, by_farmer[worked.farmer_id], await pool.stage.account())
    # Ledgers pass until the RPC's history no longer holds the work's transaction.
    await pool.stage.close(count=200)
    assert await read_farm_call(pool.chain, w.report.transaction.tx_hash) is None
    unworked = mine(block, by_farmer[idle.farmer_id].entropy, idle.custodial_address, 1)

    got = await pool.pooler().ReportWork(
        pooler_pb2.ReportWorkRequest(
            block_index=block,
            results=[
                w.report,
                # A transaction the RPC does not know, for a pail that shows no work.
                changed(
                    w.report,
                    farmer_id=idle.farmer_id,
                    nonce=unworked[0],
                    hash=unworked[1],
                    zeros=unworked[2],
                    tx_hash="cd" * 32,
                ),
            ],
        ),
        metadata=auth,
    )
    assert outcomes(got) == [(worked.farmer_id, RECORDED), (idle.farmer_id, REFUSED)]
    assert "no longer knows" in got.outcomes[1].message
    assert await _works(pool) == [(worked.farmer_id, "success", "none")]
    wrong = changed(w.report, gap=w.report.gap + 2)
    worked_again = await pool.pooler().ReportWork(
        pooler_pb2.ReportWorkRequest(block_index=block, results=[wrong]), metadata=auth
    )
    assert outcomes(worked_again) == [(worked.farmer_id, REFUSED)]

    # The chain follower's position fell out of the RPC's window too: it says so loudly,
    # resumes at the oldest ledger served, and credits what comes next.
    async def logged() -> bool:
        return any("fell out of the RPC's window" in r.getMessage() for r in caplog.records)

    await until(logged)
    assert any(r.levelno == logging.ERROR for r in caplog.records if "window" in r.getMessage())
    later = await pool.funded_farmer(pooler.pooler_id, kale=KALE)
    assert later.balance_stroops == KALE


async def test_a_claimed_work_is_refused_only_for_what_its_transaction_is(
    pool: PoolStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    farmer = await pool.funded_farmer(pooler.pooler_id)
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    snapshot = await stub.GetAssignments(pooler_pb2.GetAssignmentsRequest(), metadata=auth)
    fee = await pool.stage.account()
    worked = await submit_work(pool, snapshot.assignments[0], fee)
    tx_hash = worked.report.transaction.tx_hash

    async def report(result: pooler_pb2.WorkReport) -> pooler_pb2.ReportWorkResponse:
        return await stub.ReportWork(
            pooler_pb2.ReportWorkRequest(block_index=block, results=[result]), metadata=auth
        )

    # A transaction that is not a farm call at all (the farmer's trustline) is refused.
    trustline = await _trustline_tx(pool, farmer.custodial_address)
    refused = await report(changed(worked.report, tx_hash=trustline))
    assert outcomes(refused) == [(farmer.farmer_id, REFUSED)]
    assert "is not a plant, work or harvest call" in refused.outcomes[0].message

    # An answer about the real work that cannot be read (the RPC served it without its
    # envelope) says nothing against it: report again later.
    real = pool.chain.rpc.get_transaction

    async def without_envelope(wanted: str) -> Any:
        got = await real(wanted)
        if wanted == tx_hash:
            got.envelope_xdr = None
        return got

    monkeypatch.setattr(pool.chain.rpc, "get_transaction", without_envelope)
    blind = await report(worked.report)
    assert outcomes(blind) == [(farmer.farmer_id, RETRY)]
    assert "lacks the envelope" in blind.outcomes[0].message
    monkeypatch.undo()
    assert outcomes(await report(worked.report)) == [(farmer.farmer_id, RECORDED)]


async def _trustline_tx(pool: PoolStage, account: str) -> str:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT tx_hash FROM transactions WHERE kind = 'trustline' AND source_account = %s",
            (account,),
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])
