"""p95 of every statement the services ran, over a million event rows, beside a
primary-key lookup on the same database.

1. The pool's test stage (`bench/poolkit.py`) on a database built from the migrations,
   its devnet's farm starting at block `--history` + 1: 10 poolers x 200 farmers
   registered through the API, a block opened by real plants, every farmer's plant of it
   recorded as the planter does, `tests.queryplans.exercise` for every pooler (every
   PoolerService RPC and the PoolService reads), while `tests.queryplans.Recorder`
   records each statement the pool and wallet services send, with its parameters.
2. The stage stopped, the history the farmers would have: `--history` earlier blocks of
   them, generated as the owner with `generate_series` (the triggers run: block totals,
   ledger postings): a planting per farmer and block, a work and a harvest for half of
   them (1,000,000 event rows at the default 250 blocks; the harvests post their credits
   to the balance ledger), and a settled plant request per planting. Then the pool's
   compensation sweep once over it, committed, as a running pool would have made it once
   the history's pails were past their lifetime (it writes what the unworked half owes
   and remembers the blocks settled). Then ANALYZE.
3. Each recorded statement, as the owner: its plan (the planner's own choice: any event
   table read whole is named), then `--runs` executions cycling through its recorded
   parameters, each in a transaction rolled back (writes leave nothing), timed; p95.
   The reference: a primary-key lookup of a random planting, timed the same way.

    .venv/bin/python bench/db_bench.py --history 250 --runs 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from assign_bench import open_block, record_all
from poolkit import bench_database, percentiles, register, staged_pool

from kalepool.db.consistency import rebuild_derived_state
from pool_service.books.compensations import SETTLE
from tests.pool.test_pooler_auth import bearer
from tests.queryplans import Recorder, Statement, exercise, seq_scans

TARGET_P95 = 0.010

# The farmers' history, newest block last: each pooler's block record, plantings for
# all, works and harvests (with their ledger credits) for half, a settled plant request
# per planting.
HISTORY = (
    (
        "block_operations",
        "INSERT INTO pool.block_operations (pooler_id, block_index, status, plant_requested_at,"
        " plant_completed_at, work_completed_at, harvest_completed_at, created_at)"
        " SELECT o.id, b, 'completed', t, t + interval '20 seconds', t + interval '4 minutes',"
        " t + interval '10 minutes', t"
        " FROM pool.poolers o CROSS JOIN generate_series(%(low)s, %(top)s - 1) b"
        " CROSS JOIN LATERAL (SELECT now() - (%(top)s - b) * interval '5 minutes' AS t) x"
        " ORDER BY b, o.id",
    ),
    (
        "plantings",
        "INSERT INTO pool.plantings (block_index, farmer_id, pooler_id, custodial_public_key,"
        " stake_amount, tx_hash, ledger, status, created_at)"
        " SELECT b, f.id, f.pooler_id, f.custodial_public_key, 0,"
        " md5(f.id::text || b) || md5(b || f.id::text), b * 60, 'success',"
        " now() - (%(top)s - b) * interval '5 minutes'"
        " FROM pool.farmers f CROSS JOIN generate_series(%(low)s, %(top)s - 1) b"
        " ORDER BY b, f.id",
    ),
    (
        "works",
        "INSERT INTO pool.works (block_index, farmer_id, pooler_id, custodial_public_key,"
        " nonce, hash, zeros, gap, source_account, tx_hash, ledger, status, created_at,"
        " observed_on_chain)"
        " SELECT p.block_index, p.farmer_id, p.pooler_id, p.custodial_public_key, p.id,"
        " decode(md5(p.tx_hash) || md5(p.tx_hash), 'hex'), 7, 20, p.custodial_public_key,"
        " md5(p.tx_hash) || md5('w' || p.tx_hash), p.ledger + 20, 'success',"
        " p.created_at + interval '4 minutes', true"
        " FROM pool.plantings p WHERE p.block_index < %(top)s AND p.id %% 2 = 0 ORDER BY p.id",
    ),
    (
        "harvests",
        "INSERT INTO pool.harvests (block_index, farmer_id, pooler_id, custodial_public_key,"
        " reward_amount, stake_amount, tx_hash, ledger, status, created_at, observed_on_chain)"
        " SELECT w.block_index, w.farmer_id, w.pooler_id, w.custodial_public_key, 1000000,"
        " 0, md5(w.tx_hash) || md5('h' || w.tx_hash), w.ledger + 100, 'success',"
        " w.created_at + interval '10 minutes', true"
        " FROM pool.works w WHERE w.block_index < %(top)s ORDER BY w.id",
    ),
    (
        "plant_requests",
        "INSERT INTO pool.plant_requests (idempotency_key, farmer_id, pooler_id, block_index,"
        " stake_amount, settled_at, planting_id)"
        " SELECT 'plant:' || p.farmer_id || ':' || p.block_index, p.farmer_id, p.pooler_id,"
        " p.block_index, 0, p.created_at, p.id"
        " FROM pool.plantings p WHERE p.block_index < %(top)s ORDER BY p.id",
    ),
)


def generate(conninfo: str, low: int, top: int) -> dict[str, float]:
    """The history of blocks [low, top) as the owner; seconds per step.

    Row by row, the events' triggers (block totals, ledger postings) would take many
    minutes for a million rows; they are skipped while inserting (the owner's
    `session_replication_role = replica`) and their effect computed once after, set-wise,
    by the database's own `rebuild_derived_state()` (the harvests' ledger credits added,
    balances and block totals rewritten), the repair path `kale-pool check` uses."""
    took: dict[str, float] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        for table, statement in HISTORY:
            started = time.monotonic()
            conn.execute(statement, {"low": low, "top": top})  # type: ignore[arg-type]
            took[table] = time.monotonic() - started
            print(f"  {table:<15} {took[table]:6.1f} s", flush=True)
        conn.execute("SET session_replication_role = origin")
        started = time.monotonic()
        changed = rebuild_derived_state(conn)
        took["rebuild_derived_state"] = time.monotonic() - started
        print(f"  derived state   {took['rebuild_derived_state']:6.1f} s ({changed} rows)")
        # The sweep a running pool made after these blocks (every pail past its lifetime:
        # the history's ledgers are block * 60); the replay then meets the steady state.
        started = time.monotonic()
        row = conn.execute(SETTLE, {"current": top, "oldest_ledger": top * 60}).fetchone()
        took["compensation_sweep"] = time.monotonic() - started
        owed = row[0] if row else 0
        print(f"  first sweep     {took['compensation_sweep']:6.1f} s ({owed} compensations)")
        conn.execute("VACUUM ANALYZE")  # the rebuild rewrote farmers and block records
        for table in ("plantings", "works", "harvests", "balance_ledger", "plant_requests"):
            row = conn.execute(f"SELECT count(*) FROM pool.{table}").fetchone()  # type: ignore[arg-type]
            print(f"  {table:<15} {row[0] if row else 0:>9,} rows", flush=True)
    return took


def timed(conn: psycopg.Connection[Any], text: str, params: Any) -> float:
    """One execution in a transaction that is rolled back: its seconds."""
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        if cur.description is not None:
            cur.fetchall()
        return time.perf_counter() - started


def measure(
    conninfo: str, statements: list[Statement], runs: int, budget_s: float = 5.0
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        top = conn.execute("SELECT max(id) FROM pool.plantings").fetchone()
        assert top is not None
        ids = [random.randint(1, int(top[0])) for _ in range(runs)]
        ref = [timed(conn, "SELECT * FROM pool.plantings WHERE id = %s", (i,)) for i in ids]
        pk = "reference: primary-key lookup of a planting"
        rows.append({"statement": pk, **percentiles(ref)})
        for s in statements:
            entry: dict[str, Any] = {"statement": " ".join(s.text.split()), "calls": s.calls}
            try:
                entry["whole_reads"] = seq_scans(conn, s.text, s.params[0])
                got: list[float] = []
                budget = time.monotonic() + budget_s  # a slow statement: fewer runs
                while len(got) < runs and (len(got) < 5 or time.monotonic() < budget):
                    got.append(timed(conn, s.text, s.params[len(got) % len(s.params)]))
                entry.update(percentiles(got))
                print(f"  {entry['p95'] * 1e3:9.3f} ms p95  {entry['statement'][:90]}", flush=True)
            except psycopg.Error as exc:
                entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            rows.append(entry)
    return rows


async def workload(conninfo: str, args: argparse.Namespace, recorder: Recorder) -> None:
    devnet = {"genesis_farm_index": args.history + 1}
    async with staged_pool(conninfo, devnet) as stage:
        with recorder.active():
            poolers = await register(stage, args.poolers, args.farmers)
            block, ledger, _ = await open_block(stage, poolers[0])
            await record_all(stage, poolers, block, ledger)
            for p in poolers:
                await exercise(
                    stage.operator(), stage.pooler(), bearer(p.api_key), p.pooler_id,
                    p.farmer_ids, block,
                )  # fmt: skip
            await asyncio.sleep(2)  # a round of the background loops (follower, monitor, ...)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poolers", type=int, default=10)
    parser.add_argument("--farmers", type=int, default=200, help="per pooler")
    parser.add_argument("--history", type=int, default=250, help="blocks of generated history")
    parser.add_argument("--runs", type=int, default=100, help="executions per statement")
    parser.add_argument("--json", type=Path, default=Path("bench/results/db.json"))
    args = parser.parse_args(argv)
    recorder = Recorder(keep=20)
    with bench_database() as (_, conninfo):
        asyncio.run(workload(conninfo, args, recorder))
        print(f"recorded {len(recorder.statements)} distinct statements; generating history")
        took = generate(conninfo, 1, args.history + 1)
        rows = measure(conninfo, list(recorder.statements.values()), args.runs)
    ref = rows[0]
    print(f"\np95 per statement, {args.runs} runs each (ms); reference first")
    print(f"  {ref['p95'] * 1e3:8.3f}  {ref['statement']}")
    measured = sorted((r for r in rows[1:] if "p95" in r), key=lambda r: -r["p95"])
    for r in measured:
        flag = "  WHOLE: " + ", ".join(r["whole_reads"]) if r["whole_reads"] else ""
        ratio = r["p95"] / ref["p95"]
        print(f"  {r['p95'] * 1e3:8.3f}  x{ratio:6.1f}  {r['statement'][:110]}{flag}")
    for r in rows[1:]:
        if "error" in r:
            print(f"  not replayed ({r['error'][:80]}): {r['statement'][:80]}")
    over = [r for r in measured if r["p95"] >= TARGET_P95]
    print(f"\n{len(measured)} statements timed; {len(over)} with p95 >= {TARGET_P95 * 1e3:.0f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"history_blocks": args.history, "runs": args.runs, "generate_seconds": took,
             "cpus": os.cpu_count(), "statements": rows},
            indent=2, default=str,
        ) + "\n"
    )  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
