"""Compensations owed to farmers (fault attribution: docs/chain.md), written once a block's
outcome is certain.

A block is settled when it is over (below the farm's current block: no work can land
any more), every worked pail of it, pool-wide, has a successful harvest or is gone, and
every planted pail's work is known (a success, a row observed on chain by the harvest
loop, or a harvest by anyone; pails past their lifetime excepted). Only then is the
block's average reward final, and each owed amount is computed from it:

- work failure: a planted pail with no successful work and never harvested (a harvested
  pail was worked on chain). Owed by the **pool** when the pool recorded the plant after
  the block's work window (`plantings.recorded_late`: its assignment came too late);
  otherwise by the party of the verdict on the work: the row the harvest pass observed on
  chain (`pool_service.harvesting.observed_verdict`: it keeps the party of the failure the
  pooler reported, or names the pooler when nothing was reported), or for a pail never
  observed (past its lifetime) the last failure reported, or the pooler when none was.
  A verdict that names the chain or the farmer owes nothing. Amount: the pail's stake
  (burned; without work it is never minted back) + the block's average reward.
- plant failure, owed by the **pool**: a farmer with no successful plant whose last
  failed attempt was the pool's fault. Amount: the block's average reward.
- harvest failure, owed by the **pool**: a worked pail recorded gone (`PAIL_MISSING`)
  by the pool's fault. Amount: its stake + the block's average reward.

The average reward is the mean of the contract's returned rewards over the block's
successful harvests in the whole pool (none: 0). A zero amount writes nothing (the
table requires a positive one). The database's `pooler_compensations_once` makes the
writes idempotent: every pass may run them again, concurrent replicas included.

Read back through the `compensation_status` view, which adds whether each is paid; the
sums owed and paid per pooler from `compensation_totals`, which the database keeps as
compensations are written and paid (migration 0025).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from uuid import UUID

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value
from pool_service.books.enums import CompensationKind

log = logging.getLogger("pool_service.compensation")


@dataclass(frozen=True)
class CompensationRow:
    id: int
    pooler_id: UUID
    farmer_id: UUID
    block_index: int
    compensation_type: CompensationKind
    owed_by: Fault
    amount: int
    reason: str
    is_paid: bool
    created_at: dt.datetime
    paid_at: dt.datetime | None


@dataclass(frozen=True)
class Unpaid:
    """What a pooler's compensations leave unpaid, by who owes it."""

    by_pooler: int
    by_pool: int


@dataclass(frozen=True)
class OwedPaid:
    """Compensations' amounts owed (unpaid) and paid."""

    owed: int
    paid: int


COMPENSATION_COLUMNS = (
    "id, pooler_id, farmer_id, block_index, compensation_type::text, owed_by::text, amount,"
    " reason, is_paid, created_at, paid_at"
)

# One statement, so one snapshot for all of it: the blocks over (below %(current)s)
# whose worked pails all settled, with their mean reward; what each owes, written; and
# each settled block's event count remembered in `settled_blocks` (the database then
# remembers the block's outcome counts with it, `settled_block_counts`, migration 0025).
# A planted pail's work is settled once it succeeded, was observed on chain, or the pail
# was harvested (by anyone); a pail planted at or before %(oldest_ledger)s is past its
# lifetime and nothing more can be learnt of it.
# A block already found settled on the same number of events is passed by: events are
# append-only and each raises its block's `block_operations` counters by one in its own
# transaction, so an unchanged count means the very events it was settled on (and
# settlement, once reached, stays: `current` and `oldest_ledger` only grow). A new event
# of it changes the count and it is examined again; the writes are idempotent
# (`pooler_compensations_once`), so nothing is missed and nothing is counted twice.
SETTLE = """
WITH seen AS (
  SELECT c.block_index, c.events FROM block_event_counts c
  WHERE c.block_index < %(current)s AND NOT EXISTS (SELECT 1 FROM settled_blocks s
    WHERE s.block_index = c.block_index AND s.events = c.events)
), settled AS (
  SELECT b.block_index, b.events FROM seen b WHERE NOT EXISTS (
    SELECT 1 FROM works w WHERE w.block_index = b.block_index AND w.status = 'success'
    AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = w.farmer_id
      AND h.block_index = w.block_index
      AND (h.status = 'success' OR h.error_code = 'PAIL_MISSING')))
  AND NOT EXISTS (
    SELECT 1 FROM plantings p WHERE p.block_index = b.block_index AND p.status = 'success'
    AND p.ledger > %(oldest_ledger)s
    AND NOT EXISTS (SELECT 1 FROM works w WHERE w.farmer_id = p.farmer_id
      AND w.block_index = p.block_index AND (w.status = 'success' OR w.observed_on_chain))
    AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id
      AND h.block_index = p.block_index AND h.status = 'success'))
), mean AS (
  SELECT s.block_index, coalesce((SELECT round(avg(h.reward_amount)) FROM harvests h
    WHERE h.block_index = s.block_index AND h.status = 'success'), 0)::bigint AS reward
  FROM settled s
), work_failures AS (
INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index, compensation_type,
  owed_by, amount, reason, planting_id, work_id)
SELECT p.pooler_id, p.farmer_id, p.block_index, 'work_failure', o.owed_by::fault_party,
  p.stake_amount + m.reward,
  CASE WHEN v.observed_on_chain THEN v.error_message
       WHEN p.recorded_late
         THEN 'the pool recorded the plant after the block''s work window: the assignment'
              || ' reached the pooler too late to be worked'
       WHEN v.id IS NULL THEN 'no work was reported for the planted pail before the block closed'
       ELSE 'the work failed (reported as the ' || v.fault || '''s fault): ' || v.error_message
  END,
  p.id, v.id
FROM mean m
-- Each settled block's own rows, through the block's index (OFFSET 0 keeps the planner
-- from joining the whole table: most passes settle no block or one).
CROSS JOIN LATERAL (SELECT * FROM plantings p WHERE p.block_index = m.block_index
  AND p.status = 'success' OFFSET 0) p
-- The verdict: the failure observed on chain (it confirms a reported one, keeping its
-- party), else the last one reported.
LEFT JOIN LATERAL (SELECT w.id, w.fault::text AS fault, w.error_message, w.observed_on_chain
  FROM works w WHERE w.farmer_id = p.farmer_id AND w.block_index = p.block_index
  AND w.status = 'failed' ORDER BY w.observed_on_chain DESC, w.id DESC LIMIT 1) v ON true
CROSS JOIN LATERAL (SELECT CASE WHEN p.recorded_late THEN 'pool'
  ELSE coalesce(v.fault, 'pooler') END AS owed_by) o
WHERE p.status = 'success'
  AND NOT EXISTS (SELECT 1 FROM works w WHERE w.farmer_id = p.farmer_id
    AND w.block_index = p.block_index AND w.status = 'success')
  -- a pail harvested (by anyone) was worked on chain: nobody owes anything for it
  AND NOT EXISTS (SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id
    AND h.block_index = p.block_index AND h.status = 'success')
  AND o.owed_by IN ('pool', 'pooler')
  AND p.stake_amount + m.reward > 0
ON CONFLICT ON CONSTRAINT pooler_compensations_once DO NOTHING
RETURNING 1
), plant_failures AS (
INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index, compensation_type,
  owed_by, amount, reason, planting_id)
SELECT last.pooler_id, last.farmer_id, last.block_index, 'plant_failure', 'pool', m.reward,
  'the pool failed to plant: ' || last.error_message, last.id
FROM mean m
CROSS JOIN LATERAL (SELECT DISTINCT ON (p.farmer_id) p.*
      FROM plantings p WHERE p.block_index = m.block_index AND p.status = 'failed'
      ORDER BY p.farmer_id, p.id DESC) last
WHERE last.fault = 'pool' AND m.reward > 0
  AND NOT EXISTS (SELECT 1 FROM plantings p WHERE p.farmer_id = last.farmer_id
    AND p.block_index = last.block_index AND p.status = 'success')
ON CONFLICT ON CONSTRAINT pooler_compensations_once DO NOTHING
RETURNING 1
), harvest_failures AS (
INSERT INTO pooler_compensations (pooler_id, farmer_id, block_index, compensation_type,
  owed_by, amount, reason, harvest_id)
SELECT DISTINCT ON (h.farmer_id, h.block_index) h.pooler_id, h.farmer_id, h.block_index,
  'harvest_failure', 'pool', p.stake_amount + m.reward,
  'the pool did not harvest the worked pail before it was gone: ' || h.error_message, h.id
FROM mean m
CROSS JOIN LATERAL (SELECT * FROM harvests h WHERE h.block_index = m.block_index
  AND h.error_code = 'PAIL_MISSING' OFFSET 0) h
JOIN plantings p ON p.farmer_id = h.farmer_id AND p.block_index = h.block_index
  AND p.status = 'success'
WHERE h.error_code = 'PAIL_MISSING' AND h.fault = 'pool'
  AND NOT EXISTS (SELECT 1 FROM harvests s WHERE s.farmer_id = h.farmer_id
    AND s.block_index = h.block_index AND s.status = 'success')
  AND p.stake_amount + m.reward > 0
ORDER BY h.farmer_id, h.block_index, h.id
ON CONFLICT ON CONSTRAINT pooler_compensations_once DO NOTHING
RETURNING 1
), remembered AS (
INSERT INTO settled_blocks (block_index, events) SELECT block_index, events FROM settled
ON CONFLICT (block_index) DO UPDATE SET events = EXCLUDED.events, settled_at = now()
)
SELECT (SELECT count(*) FROM work_failures) + (SELECT count(*) FROM plant_failures)
  + (SELECT count(*) FROM harvest_failures)
"""


class CompensationStore:
    """Writes the compensations of settled blocks (idempotent); reads them back."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def settle(self, current_block: int, oldest_ledger: int) -> int:
        """Write what settled blocks below `current_block` owe (pails planted at or before
        `oldest_ledger` are past their lifetime); how many rows were new."""
        params = {"current": current_block, "oldest_ledger": oldest_ledger}
        written = await fetch_value(self.pool, int, SETTLE, params) or 0
        if written:
            log.info("recorded %d compensation(s) of blocks below %d", written, current_block)
        return written

    async def compensations(
        self,
        pooler_id: UUID | None,
        farmer_id: UUID | None,
        owed_by: Fault | None,
        unpaid_only: bool,
        before: int | None,
        limit: int,
    ) -> list[CompensationRow]:
        """Compensations, newest first (by id)."""
        return await fetch_all(
            self.pool,
            CompensationRow,
            f"SELECT {COMPENSATION_COLUMNS} FROM compensation_status"
            " WHERE (%(p)s::uuid IS NULL OR pooler_id = %(p)s::uuid)"
            " AND (%(f)s::uuid IS NULL OR farmer_id = %(f)s::uuid)"
            " AND (%(o)s::text IS NULL OR owed_by::text = %(o)s::text)"
            " AND (NOT %(u)s OR NOT is_paid)"
            " AND (%(b)s::bigint IS NULL OR id < %(b)s::bigint)"
            " ORDER BY id DESC LIMIT %(n)s",
            {
                "p": pooler_id,
                "f": farmer_id,
                "o": owed_by,
                "u": unpaid_only,
                "b": before,
                "n": limit,
            },
        )

    async def totals(
        self, pooler_id: UUID | None, farmer_id: UUID | None, owed_by: Fault | None
    ) -> OwedPaid:
        """What the compensations matching these filters leave owed and had paid: from
        the totals kept per (pooler, owed_by) (`compensation_totals`, one row each), or
        for one farmer from that farmer's compensations (a few, by its index)."""
        params = {"p": pooler_id, "f": farmer_id, "o": owed_by}
        if farmer_id is None:
            sql = (
                "SELECT coalesce(sum(unpaid), 0)::bigint AS owed,"
                " coalesce(sum(paid), 0)::bigint AS paid FROM compensation_totals"
                " WHERE (%(p)s::uuid IS NULL OR pooler_id = %(p)s::uuid)"
                " AND (%(o)s::text IS NULL OR owed_by::text = %(o)s::text)"
            )
        else:
            sql = (
                "SELECT coalesce(sum(amount) FILTER (WHERE NOT is_paid), 0)::bigint AS owed,"
                " coalesce(sum(amount) FILTER (WHERE is_paid), 0)::bigint AS paid"
                " FROM compensation_status WHERE farmer_id = %(f)s::uuid"
                " AND (%(p)s::uuid IS NULL OR pooler_id = %(p)s::uuid)"
                " AND (%(o)s::text IS NULL OR owed_by::text = %(o)s::text)"
            )
        found = await fetch_one(self.pool, OwedPaid, sql, params)
        assert found is not None
        return found

    async def unpaid(self, pooler_id: UUID) -> Unpaid:
        """What the pooler's compensations leave unpaid: owed by the pooler, and owed by
        the pool to the pooler's farmers (`compensation_totals`: two rows)."""
        found = await fetch_one(
            self.pool,
            Unpaid,
            "SELECT coalesce(sum(unpaid) FILTER (WHERE owed_by = 'pooler'), 0)::bigint"
            "  AS by_pooler,"
            " coalesce(sum(unpaid) FILTER (WHERE owed_by = 'pool'), 0)::bigint AS by_pool"
            " FROM compensation_totals WHERE pooler_id = %s",
            (pooler_id,),
        )
        assert found is not None
        return found
