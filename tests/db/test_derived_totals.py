"""The derived totals of migration 0025 (compensation sums per pooler, the unpaid set, a
settled block's outcome counts) equal the live sums over the events after a realistic
sequence, are found by the check when they drift, and are restored by the rebuild."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import errors

from kalepool.db.consistency import check_consistency, rebuild_derived_state

from .rows import Conn, Rows

TOTALS = "SELECT pooler_id, owed_by::text, unpaid, paid FROM compensation_totals ORDER BY 1, 2"
# The same sums, live: every compensation, paid when a ledger entry names it.
LIVE_TOTALS = (
    "SELECT pooler_id, owed_by::text, coalesce(sum(amount) FILTER (WHERE NOT is_paid), 0),"
    " coalesce(sum(amount) FILTER (WHERE is_paid), 0) FROM compensation_status"
    " GROUP BY 1, 2 ORDER BY 1, 2"
)
UNPAID = "SELECT compensation_id, farmer_id FROM unpaid_compensations ORDER BY 1"
LIVE_UNPAID = "SELECT id, farmer_id FROM compensation_status WHERE NOT is_paid ORDER BY 1"
COUNT_COLUMNS = (
    "pooler_id, block_index, events, successful_plants, failed_plants, successful_works,"
    " failed_works, unworked, successful_harvests, gone, total_staked, total_rewards"
)
# The outcome counts and the block's event count, computed now from the events alone (as
# ListBlocks reads them), not through the functions under test.
LIVE_COUNTS = """
SELECT o.pooler_id, o.block_index,
  (SELECT count(*) FROM plantings WHERE block_index = o.block_index)
  + (SELECT count(*) FROM works WHERE block_index = o.block_index)
  + (SELECT count(*) FROM harvests WHERE block_index = o.block_index),
  o.successful_plants, o.failed_plants, o.successful_works, o.failed_works, o.unworked,
  o.successful_harvests, o.gone, o.total_staked, o.total_rewards
FROM pool.block_outcomes(%(b)s, NULL) o ORDER BY 1
"""


def _all(db: Conn, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return db.execute(sql, params).fetchall()


def _counts(db: Conn, block: int) -> list[tuple[Any, ...]]:
    return _all(
        db,
        f"SELECT {COUNT_COLUMNS} FROM settled_block_counts WHERE block_index = %s ORDER BY 1",
        (block,),
    )


def _settle(db: Conn, block: int) -> None:
    """What the compensation sweep records for a block it found settled (0024)."""
    db.execute(
        "INSERT INTO settled_blocks (block_index, events) SELECT block_index, events"
        " FROM block_event_counts WHERE block_index = %s"
        " ON CONFLICT (block_index) DO UPDATE SET events = EXCLUDED.events",
        (block,),
    )


def _pay(db: Conn, *compensations: int) -> None:
    """Credit the compensations, all in one statement (as a batch of payments would)."""
    db.execute(
        "INSERT INTO balance_ledger (farmer_id, amount, kind, compensation_id)"
        " SELECT farmer_id, amount, 'compensation', id FROM pooler_compensations"
        " WHERE id = ANY(%s)",
        (list(compensations),),
    )


def _history(db: Conn, rows: Rows) -> dict[str, Any]:
    """Two poolers over two blocks: plants, works (one failed, one missing), harvests (one
    pail gone by the pool's fault, one not yet), compensations written the way the sweep
    writes them (several kinds in one statement) and one paid."""
    p1, p2 = rows.pooler(), rows.pooler()
    f1, f2, f3 = (rows.farmer(p1) for _ in range(3))
    g1, g2 = (rows.farmer(p2) for _ in range(2))
    for farmer, pooler in [(f1, p1), (f2, p1), (f3, p1), (g1, p2), (g2, p2)]:
        rows.ledger(farmer, 1_000)
        rows.planting(farmer, pooler, 10, stake_amount=100)
    for farmer, pooler in [(f1, p1), (f2, p1), (g1, p2)]:
        rows.work(farmer, pooler, 10)
    rows.work(g2, p2, 10, status="failed", fault="pooler")
    rows.harvest(f1, p1, 10, reward_amount=500, stake_amount=100)
    rows.harvest(g1, p2, 10, reward_amount=700, stake_amount=100)
    rows.harvest(f2, p1, 10, status="failed", fault="pool", error_code="PAIL_MISSING")
    rows.planting(f1, p1, 11, status="failed", fault="pool", error_code="WALLET_UNAVAILABLE")
    rows.planting(f2, p1, 11, stake_amount=100)
    rows.work(f2, p1, 11)

    written = db.execute(
        "WITH work_failures AS ("
        " INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index,"
        "  compensation_type, owed_by, amount, reason)"
        " VALUES (%(p1)s, %(f3)s, 10, 'work_failure', 'pooler', 700, 'no work'),"
        "  (%(p2)s, %(g2)s, 10, 'work_failure', 'pooler', 700, 'the work failed')"
        " RETURNING id), harvest_failures AS ("
        " INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index,"
        "  compensation_type, owed_by, amount, reason)"
        " VALUES (%(p1)s, %(f2)s, 10, 'harvest_failure', 'pool', 700, 'pail gone')"
        " RETURNING id)"
        " SELECT (SELECT count(*) FROM work_failures) + (SELECT count(*) FROM harvest_failures)",
        {"p1": p1, "p2": p2, "f2": f2, "f3": f3, "g2": g2},
    ).fetchone()
    assert written == (3,)
    plant_failure = rows.compensation(
        f1, p1, 11, compensation_type="plant_failure", owed_by="pool", amount=600
    )
    ids = [r[0] for r in _all(db, "SELECT id FROM pooler_compensations ORDER BY id")]
    _pay(db, ids[0], ids[2])
    return {"p1": p1, "p2": p2, "g1": g1, "plant_failure": plant_failure, "ids": ids}


def test_the_totals_equal_the_live_sums_through_a_history(db: Conn, rows: Rows) -> None:
    h = _history(db, rows)
    assert _all(db, TOTALS) == _all(db, LIVE_TOTALS)
    p1, p2 = h["p1"], h["p2"]
    # By hand: p1 owes 700 (paid), the pool owes p1's farmers 700 (paid) + 600.
    expected = {(p1, "pool"): (600, 700), (p1, "pooler"): (0, 700), (p2, "pooler"): (700, 0)}
    assert {(r[0], r[1]): (r[2], r[3]) for r in _all(db, TOTALS)} == expected
    assert _all(db, UNPAID) == _all(db, LIVE_UNPAID)
    assert [r[0] for r in _all(db, UNPAID)] == [h["ids"][1], h["plant_failure"]]

    # The sweep finds block 10 settled: its counts are remembered on its 12 events.
    _settle(db, 10)
    remembered = _counts(db, 10)
    assert remembered == _all(db, LIVE_COUNTS, {"b": 10})
    assert [r[:3] for r in remembered] == sorted([(p1, 10, 12), (p2, 10, 12)])
    by_pooler = {r[0]: r[3:] for r in remembered}
    # plants, failed plants, works, failed works, unworked, harvests, gone, staked, rewards
    assert by_pooler[p1] == (3, 0, 2, 0, 1, 1, 1, 300, 500)
    assert by_pooler[p2] == (2, 0, 1, 1, 0, 1, 0, 200, 700)

    # A late event of the block: the remembered rows no longer count (their event count
    # is not the block's), so nothing disagrees; settled again, they follow.
    rows.work(h["g1"], p2, 10, status="failed", fault="chain")
    assert check_consistency(db) == []
    _settle(db, 10)
    assert _counts(db, 10) == _all(db, LIVE_COUNTS, {"b": 10})
    assert [r[2] for r in _counts(db, 10)] == [13, 13]

    # Paying the rest empties the unpaid set and moves the sums.
    _pay(db, h["ids"][1], h["plant_failure"])
    assert _all(db, UNPAID) == []
    assert _all(db, TOTALS) == _all(db, LIVE_TOTALS)
    assert all(r[2] == 0 for r in _all(db, TOTALS))
    assert check_consistency(db) == []
    assert rebuild_derived_state(db) == 0


def test_a_drifted_total_is_reported_and_rebuilt(db: Conn, rows: Rows) -> None:
    h = _history(db, rows)
    _settle(db, 10)
    assert check_consistency(db) == []
    before = (_all(db, TOTALS), _all(db, UNPAID), _counts(db, 10))
    p1, unpaid = h["p1"], h["ids"][1]

    # A superuser can bypass triggers (replica mode); simulate that going wrong.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute(
            "UPDATE compensation_totals SET unpaid = unpaid + 1"
            " WHERE pooler_id = %s AND owed_by = 'pool'",
            (p1,),
        )
        db.execute("DELETE FROM unpaid_compensations WHERE compensation_id = %s", (unpaid,))
        db.execute(
            "UPDATE settled_block_counts SET successful_works = 99 WHERE pooler_id = %s", (p1,)
        )

    problems = check_consistency(db)
    assert len(problems) == 3, problems
    assert problems[0] == (
        f"compensation totals of pooler {p1} owed by pool: unpaid 601, paid 700"
        " but the compensations sum to unpaid 600, paid 700"
    )
    assert problems[1] == (f"compensation {unpaid}: unpaid but missing from unpaid_compensations")
    assert problems[2].startswith(f"block 10 of pooler {p1}: remembered counts")

    assert rebuild_derived_state(db) == 3
    assert check_consistency(db) == []
    assert (_all(db, TOTALS), _all(db, UNPAID), _counts(db, 10)) == before


def test_the_rebuild_builds_the_totals_from_nothing(db: Conn, rows: Rows) -> None:
    """Derived rows lost (history restored with the triggers off, as the benchmark's
    generator loads it): the rebuild computes every total, the settled blocks' counts
    included."""
    h = _history(db, rows)
    _settle(db, 10)
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        for table in ("compensation_totals", "unpaid_compensations", "settled_block_counts"):
            db.execute(f"DELETE FROM {table}")
    assert _all(db, TOTALS) == _all(db, UNPAID) == _counts(db, 10) == []
    assert len(check_consistency(db)) > 0
    rebuild_derived_state(db)
    assert check_consistency(db) == []
    assert _all(db, TOTALS) == _all(db, LIVE_TOTALS)
    assert _all(db, UNPAID) == _all(db, LIVE_UNPAID)
    assert _counts(db, 10) == _all(db, LIVE_COUNTS, {"b": 10})
    assert {r[0] for r in _counts(db, 10)} == {h["p1"], h["p2"]}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE compensation_totals SET unpaid = 0",
        "DELETE FROM compensation_totals",
        "INSERT INTO compensation_totals VALUES (%(p)s, 'pooler', 1, 0)",
        "DELETE FROM unpaid_compensations",
        "UPDATE settled_block_counts SET successful_works = 0",
        "SELECT pool.remember_block_counts(10)",
    ],
)
def test_derived_totals_cannot_be_written_directly(db: Conn, rows: Rows, statement: str) -> None:
    """Outside the rebuild, not even the owner writes them: only the triggers do."""
    h = _history(db, rows)
    _settle(db, 10)
    if "remember" in statement:
        # Counts equal to the live ones would be left alone: make one differ first.
        with db.transaction():
            db.execute("SET LOCAL session_replication_role = replica")
            db.execute("UPDATE settled_block_counts SET gone = 5")
    before = (_all(db, TOTALS), _all(db, UNPAID), _counts(db, 10))
    with pytest.raises(errors.GeneratedAlways, match="derived"):
        db.execute(statement, {"p": h["p1"]})
    assert (_all(db, TOTALS), _all(db, UNPAID), _counts(db, 10)) == before
