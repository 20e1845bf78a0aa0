"""The services' SQL as they really send it, and what PostgreSQL plans for it.

`Recorder` records every statement the services run in this process (the stores build
their SQL from column lists and f-strings, so reading it from the source would miss
what runs; recording it where it is sent does not), with the parameters of its first
calls. `seq_scans` EXPLAINs one and names the event tables it would read whole.
`exercise` is a short, real workload: every PoolerService RPC and the PoolService reads,
through the real stubs of the pool's test stage.

Used by tests/pool/test_query_plans.py (on a small database, sequential scans disabled:
a scan that remains has no index to use) and bench/db_bench.py (on a million event rows:
the planner's own choice, and each statement's p95).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
from psycopg import sql

from kalepool.v1 import pool_pb2, pooler_pb2, records_pb2

# Tables that grow with every block and farmer: a statement the services run often must
# not read one of them whole.
EVENT_TABLES = frozenset(
    {
        "plantings",
        "works",
        "harvests",
        "pooler_compensations",
        "balance_ledger",
        "deposits",
        "account_ledger",
        "plant_requests",
        "block_operations",
        "payouts",
        "sweeps",
        "transactions",
        "transaction_events",
    }
)

STATEMENT_KINDS = ("select", "insert", "update", "delete", "with")


@dataclass
class Statement:
    """One distinct SQL text and the parameters of (up to `keep`) calls of it."""

    text: str
    params: list[Any] = field(default_factory=list)
    calls: int = 0


class Recorder:
    """Every statement run through psycopg's async cursors while `active()` is open."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.statements: dict[str, Statement] = {}

    def _record(self, text: str, params: Any) -> None:
        if not text.lstrip().lower().startswith(STATEMENT_KINDS):
            return
        got = self.statements.setdefault(text, Statement(text))
        got.calls += 1
        if len(got.params) < self.keep and params not in got.params:
            got.params.append(params)

    @contextlib.contextmanager
    def active(self) -> Iterator[Recorder]:
        original = psycopg.AsyncCursor.execute
        recorder = self

        async def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            text = query
            if isinstance(query, sql.Composable):
                text = query.as_string(self.connection)
            elif isinstance(query, bytes):
                text = query.decode()
            recorder._record(text, params)
            return await original(self, query, params, **kwargs)

        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
        try:
            yield self
        finally:
            psycopg.AsyncCursor.execute = original  # type: ignore[method-assign]


def _nodes(
    plan: dict[str, Any], parent: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    yield plan, parent
    for child in plan.get("Plans", ()):
        yield from _nodes(child, plan)


def plan(conn: psycopg.Connection[Any], text: str, params: Any) -> dict[str, Any]:
    """EXPLAIN (no ANALYZE: nothing runs) of one statement with these parameters."""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {text}", params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    got = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return got[0]["Plan"]  # type: ignore[no-any-return]


def whole_reads(
    node: dict[str, Any], parent: dict[str, Any] | None, partial: frozenset[str]
) -> str | None:
    """The event table this plan node reads whole, if it does: a sequential scan, or an
    index scan with no condition on the index (every entry read, e.g. for its order),
    unless the index is partial (it holds only the rows asked for) or a Limit stops the
    scan (max(), a first row)."""
    table = node.get("Relation Name")
    if table not in EVENT_TABLES:
        return None
    kind = node.get("Node Type")
    if kind == "Seq Scan":
        return str(table)
    if kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node:
        index = str(node.get("Index Name"))
        if index in partial or (parent is not None and parent.get("Node Type") == "Limit"):
            return None
        return f"{table} (whole index {index})"
    return None


def partial_indexes(conn: psycopg.Connection[Any]) -> frozenset[str]:
    """The names of the partial indexes (WHERE ...) of the event tables."""
    rows = conn.execute(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid"
        " WHERE x.indpred IS NOT NULL AND t.relname = ANY(%s)",
        (sorted(EVENT_TABLES),),
    ).fetchall()
    return frozenset(r[0] for r in rows)


def seq_scans(conn: psycopg.Connection[Any], text: str, params: Any) -> list[str]:
    """The event tables the statement's plan reads whole (`whole_reads`)."""
    partial = partial_indexes(conn)
    return sorted(
        {
            found
            for node, parent in _nodes(plan(conn, text, params))
            if (found := whole_reads(node, parent, partial))
        }
    )


async def exercise(
    operator: Any, pooler: Any, auth: Any, pooler_id: str, farmer_ids: list[str], block: int
) -> None:
    """Every PoolerService RPC and the PoolService reads, once each, as a pooler and an
    operator would call them (answers are not checked here: refusals run queries too)."""
    calls: list[Any] = [
        pooler.Heartbeat(pooler_pb2.HeartbeatRequest(agent_version="plans"), metadata=auth),
        pooler.GetAssignments(pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=auth),
        pooler.RequestPlant(pooler_pb2.RequestPlantRequest(block_index=block), metadata=auth),
        pooler.ReportWork(
            pooler_pb2.ReportWorkRequest(
                block_index=block,
                results=[
                    pooler_pb2.WorkReport(farmer_id=f, status=records_pb2.EVENT_STATUS_PENDING)
                    for f in farmer_ids
                ],
            ),
            metadata=auth,
        ),
        pooler.RequestHarvest(
            pooler_pb2.RequestHarvestRequest(block_index=max(block - 1, 0)), metadata=auth
        ),
        operator.GetPooler(pool_pb2.GetPoolerRequest(pooler_id=pooler_id)),
        operator.ListPoolers(pool_pb2.ListPoolersRequest()),
        operator.ListFarmers(pool_pb2.ListFarmersRequest(pooler_id=pooler_id)),
        operator.GetPoolStats(pool_pb2.GetPoolStatsRequest()),
        operator.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pooler_id)),
        operator.ListBlocks(pool_pb2.ListBlocksRequest(pooler_id=pooler_id)),
        operator.GetBlock(pool_pb2.GetBlockRequest(block_index=block, pooler_id=pooler_id)),
        operator.ListCompensations(pool_pb2.ListCompensationsRequest(pooler_id=pooler_id)),
        operator.ListPoolerCertificates(
            pool_pb2.ListPoolerCertificatesRequest(pooler_id=pooler_id)
        ),
        operator.GetContractStatus(pool_pb2.GetContractStatusRequest()),
    ]
    for f in farmer_ids[:3]:
        calls += [
            operator.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=f)),
            operator.GetFarmerBalance(pool_pb2.GetFarmerBalanceRequest(farmer_id=f)),
            operator.ListFarmerLedger(pool_pb2.ListFarmerLedgerRequest(farmer_id=f)),
            operator.ListPayouts(pool_pb2.ListPayoutsRequest(farmer_id=f)),
        ]
    for c in calls:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await c
    stream = pooler.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=auth
    )
    with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
        await asyncio.wait_for(stream.read(), 5)  # the first assignment, when there is one
    stream.cancel()
