"""Every statement the services run in a real workload has an index to use on the event
tables: EXPLAINed against the stage's small database with sequential scans disabled, a
sequential scan that remains means no index serves it (tests/queryplans.py)."""

from __future__ import annotations

import psycopg

from kalepool.chain import current_block
from tests.queryplans import Recorder, exercise, seq_scans

from .conftest import PoolStage
from .test_pooler_auth import bearer

# Statements known to read an event table whole (matched by a part of their text), and
# why. Each is measured by bench/db_bench.py; docs/performance.md says what they cost.
WHOLE_TABLE_READS: dict[str, str] = {
    "SELECT EXISTS (SELECT 1 FROM balance_ledger)": "stops at the first row it finds",
    "FROM compensation_status": (
        "every compensation is listed to tell the paid from the unpaid (a join on the"
        " ledger no index can answer); pooler_compensations holds failures only"
    ),
    "FROM k JOIN block_event_counts": (
        "the statistics' sums read one block_operations row per (pooler, block) for the"
        " blocks' event counts; the events themselves only for blocks not settled"
    ),
}


async def test_every_statement_of_a_workload_has_an_index(pool: PoolStage) -> None:
    recorder = Recorder(keep=1)
    with recorder.active():
        pooler, key = await pool.register_pooler()
        farmers = [await pool.funded_farmer(pooler.pooler_id) for _ in range(2)]
        block = (await current_block(pool.chain)).index
        await exercise(
            pool.operator(),
            pool.pooler(),
            bearer(key),
            pooler.pooler_id,
            [f.farmer_id for f in farmers],
            block,
        )
    # The recording saw the services' statements (a test over nothing cannot pass).
    texts = list(recorder.statements)
    assert len(texts) > 40, texts
    assert any("FROM plantings" in t for t in texts)

    offenders: dict[str, list[str]] = {}
    with psycopg.connect(pool.conninfo, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        # The check itself finds a scan no index serves.
        assert seq_scans(conn, "SELECT id FROM plantings WHERE error_message = %s", ("x",)) == [
            "plantings"
        ]
        for text, statement in recorder.statements.items():
            tables = seq_scans(conn, text, statement.params[0])
            if tables and not any(part in text for part in WHOLE_TABLE_READS):
                offenders[text] = tables
    assert not offenders, "\n".join(f"{t}: {' '.join(q.split())}" for q, t in offenders.items())
