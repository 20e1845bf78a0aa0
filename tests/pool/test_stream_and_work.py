"""The assignment stream (replay, resume, live, replacement, cursors) and ReportWork."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import psycopg
import pytest

from kalepool.chain import build_work, current_block, read_block, sign, submit
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2
from tests.chain.stage import mine

from .conftest import BLOCK_SECONDS, PoolStage
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


async def test_report_work_records_checked_batches(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler()
    auth = bearer(key)
    worked, missed = [await pool.funded_farmer(pooler.pooler_id) for _ in range(2)]
    other_pooler, _ = await pool.register_pooler("other")
    stranger = await pool.funded_farmer(other_pooler.pooler_id)
    block = (await current_block(pool.chain)).index
    stub = pool.pooler()
    await stub.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth)
    call = stub.StreamAssignments(pooler_pb2.StreamAssignmentsRequest(), metadata=auth)
    assignment = await next_assignment(call)
    if assignment.farmer_id != worked.farmer_id:
        assignment = await next_assignment(call)
    call.cancel()

    # The pooler mines and submits work from its own account, as the agent does.
    fee_account = await pool.stage.account()
    nonce, digest, zeros = mine(block, assignment.entropy, assignment.farmer_address, 1)
    tx = await build_work(
        pool.chain, worked.custodial_address, digest, nonce, source=fee_account.public_key
    )
    outcome = await submit(pool.chain, sign(tx, fee_account))
    assert outcome.ok, outcome.describe()
    success = pooler_pb2.WorkReport(
        farmer_id=worked.farmer_id,
        status=records_pb2.EVENT_STATUS_SUCCEEDED,
        nonce=nonce,
        hash=digest,
        zeros=zeros,
        gap=outcome.value or 0,
        transaction=common_pb2.TransactionRef(
            tx_hash=outcome.hash, status=common_pb2.TX_STATUS_SUCCESS, ledger=outcome.ledger or 0
        ),
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
    request = pooler_pb2.ReportWorkRequest(block_index=block, results=[success, failure])
    first = await stub.ReportWork(request, metadata=auth)
    assert (first.recorded, first.already_recorded) == (2, 0)
    assert list(first.ready_for_harvest) == [worked.farmer_id]
    recorded = await _works(pool)
    assert recorded == [
        (worked.farmer_id, "success", "none"),
        (missed.farmer_id, "failed", "pooler"),
    ]
    repeat = await stub.ReportWork(request, metadata=auth)
    assert (repeat.recorded, repeat.already_recorded) == (0, 2)

    def with_(report: pooler_pb2.WorkReport, **changes: Any) -> pooler_pb2.ReportWorkRequest:
        changed = pooler_pb2.WorkReport()
        changed.CopyFrom(report)
        for name, value in changes.items():
            setattr(changed, name, value)
        return pooler_pb2.ReportWorkRequest(block_index=block, results=[changed])

    refusals = [
        (with_(success, nonce=nonce + 1), grpc.StatusCode.INVALID_ARGUMENT),  # hash mismatch
        (with_(success, hash=digest[:31]), grpc.StatusCode.INVALID_ARGUMENT),
        (with_(success, zeros=zeros + 1), grpc.StatusCode.INVALID_ARGUMENT),
        (with_(success, gap=0), grpc.StatusCode.INVALID_ARGUMENT),
        (with_(success, farmer_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (with_(failure, farmer_id=stranger.farmer_id), grpc.StatusCode.PERMISSION_DENIED),
        (pooler_pb2.ReportWorkRequest(block_index=block), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pooler_pb2.ReportWorkRequest(block_index=block, results=[failure, failure]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # A failure for a pail whose work succeeded: a different result.
        (with_(failure, farmer_id=worked.farmer_id), grpc.StatusCode.ALREADY_EXISTS),
    ]
    for bad, code in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReportWork(bad, metadata=auth)
        assert info.value.code() is code, (bad, info.value.details())
    # A batch with one bad result is refused whole.
    mixed = pooler_pb2.ReportWorkRequest(
        block_index=block,
        results=[failure, with_(failure, farmer_id=stranger.farmer_id).results[0]],
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ReportWork(mixed, metadata=auth)
    assert await _works(pool) == recorded
