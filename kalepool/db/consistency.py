"""Prove that derived state (balances, counters, block totals) agrees with the events.

The work is done in SQL, each service's in its own schema (``pool.consistency_problems()``
and ``pool.rebuild_derived_state()``, migration 0005; ``pool.payout_problems()``, 0008;
``wallet.transaction_problems()``, 0012; ``pool.share_problems()``, 0020;
``pool.derived_total_problems()``, 0025: compensation totals, settled blocks' counts) so
the database is the one home of the rules; these wrappers give `kale-pool check` (as the
owner or the auditor, who may read both services' rows) and the tests a typed call.
"""

from __future__ import annotations

from typing import Any

import psycopg


def check_consistency(conn: psycopg.Connection[Any]) -> list[str]:
    """Every disagreement between derived state and the events; empty when all agree.

    Read-only. Each problem is one human-readable line naming the row at fault.
    """
    sql = (
        "SELECT problem FROM pool.consistency_problems() AS problem"
        " UNION ALL SELECT problem FROM wallet.transaction_problems() AS problem"
        " UNION ALL SELECT problem FROM pool.payout_problems() AS problem"
    )
    # A database migrated only part of the way (before 0020, 0025) lacks the later checks.
    for later in ("pool.share_problems()", "pool.derived_total_problems()"):
        found = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (later,)).fetchone()
        if found and found[0]:
            sql += f" UNION ALL SELECT problem FROM {later} AS problem"
    rows = conn.execute(sql).fetchall()
    return [str(row[0]) for row in rows]


def rebuild_derived_state(conn: psycopg.Connection[Any]) -> int:
    """Recompute all derived state from the events; return the number of rows changed.

    Runs in one transaction (commits it unless the caller already has one open).
    The events themselves are never touched: only automatic ledger postings that
    are missing are added, then balances, counters and block totals rewritten.
    """
    with conn.transaction():
        row = conn.execute("SELECT pool.rebuild_derived_state()").fetchone()
    assert row is not None
    return int(row[0])
