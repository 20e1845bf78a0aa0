"""Blocks as the operators see them: each (pooler, block)'s outcome counts, the block's
status, its events, and the pool's figures, all computed from the event tables and
`block_operations` (whose counters the database's triggers derive from the events).
Nothing here writes: each phase stamps `block_operations` in its own aggregate's
transaction (`plantings`, `works`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from kalepool.db.reads import Pool, fetch_all, fetch_one, fetch_value, fetch_values
from pool_service.books.compensations import COMPENSATION_COLUMNS, CompensationRow
from pool_service.books.enums import BlockStatus
from pool_service.books.farmers import FARMER_STATE_SQL
from pool_service.books.harvests import HARVEST_COLUMNS, HarvestRow
from pool_service.books.plantings import PLANTING_COLUMNS, PlantingRow
from pool_service.books.works import WORK_COLUMNS, WorkRow

# Per block (over the poolers asked for, each one's outcome counts from
# `pool.block_outcomes`, migration 0025: the one home of their rules), with its status:
# the chain's current block or a newer one is active; an over block with no successful
# work failed; one whose worked pails are all harvested (or gone) is completed; else it
# is being harvested.
# The blocks asked for (`k`, newest first) are chosen from `block_operations` before any
# event is read, and each is summed on its own (LATERAL), so a LIMIT over this stops
# after its rows: a page of blocks reads that page's events, not the whole history.
_PER_BLOCK = """
SELECT k.block_index, t.*, CASE
    WHEN k.block_index >= %(current)s THEN 'active'
    WHEN t.works_succeeded = 0 THEN 'failed'
    WHEN t.open_pails = 0 THEN 'completed'
    ELSE 'harvesting' END AS status
FROM (SELECT DISTINCT block_index FROM block_operations
  WHERE (%(pooler)s::uuid IS NULL OR pooler_id = %(pooler)s::uuid)
  AND (%(block)s::bigint IS NULL OR block_index = %(block)s::bigint)
  AND (%(before)s::bigint IS NULL OR block_index < %(before)s::bigint)
  AND (%(since)s::bigint IS NULL OR block_index >= %(since)s::bigint)
  ORDER BY block_index DESC) k
CROSS JOIN LATERAL (
  SELECT sum(total_farmers)::bigint AS total_farmers,
    sum(successful_plants)::bigint AS plants_succeeded,
    sum(failed_plants)::bigint AS plants_failed,
    sum(successful_works)::bigint AS works_succeeded,
    sum(failed_works)::bigint AS works_failed_recorded,
    sum(unworked)::bigint AS unworked,
    sum(successful_harvests)::bigint AS harvests_succeeded,
    sum(gone)::bigint AS harvests_failed,
    sum(total_staked)::bigint AS total_staked, sum(total_rewards)::bigint AS total_rewards,
    min(plant_requested_at) AS plant_requested_at,
    max(plant_completed_at) AS plant_completed_at,
    max(work_completed_at) AS work_completed_at,
    max(harvest_completed_at) AS harvest_completed_at,
    sum(open_pails)::bigint AS open_pails,
    max(best_zeros)::integer AS best_zeros
  FROM pool.block_outcomes(k.block_index, %(pooler)s::uuid) per
) t
"""

# The statistics' sums over the (pooler, block) rows asked for (`since`: from that block
# on). A settled block's counts are read from `settled_block_counts` while its events are
# those they were computed on (the same number: events are append-only); any other row
# is computed live (`block_outcomes`, only for it: the LATERAL's filter). So the all-time
# figures read one small row per (pooler, block) and the events of the few blocks not
# settled yet, not the whole history. A planted pail never worked counts as a failed work
# once its block is over (below `current`), as `BlockRow.works_failed` has it.
_TOTALS = """
WITH k AS (
  SELECT b.pooler_id, b.block_index FROM block_operations b
  WHERE (%(pooler)s::uuid IS NULL OR b.pooler_id = %(pooler)s::uuid)
  AND (%(since)s::bigint IS NULL OR b.block_index >= %(since)s::bigint)
), c AS (
  SELECT k.block_index,
    coalesce(s.successful_plants, o.successful_plants) AS plants_succeeded,
    coalesce(s.failed_plants, o.failed_plants) AS plants_failed,
    coalesce(s.successful_works, o.successful_works) AS works_succeeded,
    coalesce(s.failed_works, o.failed_works) AS works_failed_recorded,
    coalesce(s.unworked, o.unworked) AS unworked,
    coalesce(s.successful_harvests, o.successful_harvests) AS harvests_succeeded,
    coalesce(s.gone, o.gone) AS harvests_failed,
    coalesce(s.total_staked, o.total_staked) AS total_staked,
    coalesce(s.total_rewards, o.total_rewards) AS total_rewards
  FROM k JOIN block_event_counts n ON n.block_index = k.block_index
  LEFT JOIN settled_block_counts s ON s.pooler_id = k.pooler_id
    AND s.block_index = k.block_index AND s.events = n.events
  -- OFFSET 0 keeps the subquery whole, its filter a one-time test: pulled up, the
  -- counts would be computed for every row before the join dropped them
  LEFT JOIN LATERAL (SELECT * FROM pool.block_outcomes(k.block_index, k.pooler_id)
    WHERE s.pooler_id IS NULL OFFSET 0) o ON true
)
SELECT count(DISTINCT block_index) AS blocks,
  coalesce(sum(plants_succeeded), 0)::bigint AS plants_succeeded,
  coalesce(sum(plants_failed), 0)::bigint AS plants_failed,
  coalesce(sum(works_succeeded), 0)::bigint AS works_succeeded,
  coalesce(sum(works_failed_recorded + CASE WHEN block_index < %(current)s
    THEN unworked ELSE 0 END), 0)::bigint AS works_failed,
  coalesce(sum(harvests_succeeded), 0)::bigint AS harvests_succeeded,
  coalesce(sum(harvests_failed), 0)::bigint AS harvests_failed,
  coalesce(sum(total_staked), 0)::bigint AS total_staked,
  coalesce(sum(total_rewards), 0)::bigint AS total_rewards
FROM c
"""


@dataclass(frozen=True)
class BlockTotals:
    """The statistics' sums over blocks: how many, their outcome counts and amounts."""

    blocks: int
    plants_succeeded: int
    plants_failed: int
    works_succeeded: int
    works_failed: int
    harvests_succeeded: int
    harvests_failed: int
    total_staked: int
    total_rewards: int


@dataclass(frozen=True)
class BlockRow:
    block_index: int
    total_farmers: int
    plants_succeeded: int
    plants_failed: int
    works_succeeded: int
    works_failed_recorded: int
    unworked: int
    harvests_succeeded: int
    harvests_failed: int
    total_staked: int
    total_rewards: int
    plant_requested_at: dt.datetime | None
    plant_completed_at: dt.datetime | None
    work_completed_at: dt.datetime | None
    harvest_completed_at: dt.datetime | None
    open_pails: int
    best_zeros: int
    status: BlockStatus

    @property
    def works_failed(self) -> int:
        """Failed works, counting a planted pail never worked once the block is over."""
        return self.works_failed_recorded + (
            self.unworked if self.status != BlockStatus.ACTIVE else 0
        )


@dataclass(frozen=True)
class BlockEvents:
    """Every event of a block (of one pooler, or of all), oldest first."""

    plantings: list[PlantingRow]
    works: list[WorkRow]
    harvests: list[HarvestRow]
    compensations: list[CompensationRow]


@dataclass(frozen=True)
class PoolFigures:
    """Registry counts, balances, payouts and compensations, pool-wide, now."""

    poolers_total: int
    poolers_active: int
    pending_funding: int
    active: int
    leaving: int
    departed: int
    balance: int
    paid_out: int
    comp_unpaid: int
    comp_paid: int


class BlockStore:
    """Queries of the block history and the statistics."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def blocks(
        self,
        current: int,
        pooler_id: UUID | None,
        *,
        status: BlockStatus | None = None,
        block_index: int | None = None,
        before: int | None = None,
        since: int | None = None,
        limit: int | None = None,
    ) -> list[BlockRow]:
        """Block summaries, newest first (`before`: below it; `since`: from it on)."""
        sql = f"SELECT * FROM ({_PER_BLOCK}) s"
        sql += " WHERE (%(status)s::text IS NULL OR status = %(status)s::text)"
        sql += " ORDER BY block_index DESC LIMIT %(limit)s"
        params = {
            "pooler": pooler_id,
            "current": current,
            "status": status,
            "block": block_index,
            "before": before,
            "since": since,
            "limit": limit,
        }
        return await fetch_all(self.pool, BlockRow, sql, params)

    async def totals(self, current: int, pooler_id: UUID | None, since: int | None) -> BlockTotals:
        """The sums over the blocks of one pooler or all (`since`: from that block on)."""
        found = await fetch_one(
            self.pool,
            BlockTotals,
            _TOTALS,
            {"pooler": pooler_id, "current": current, "since": since},
        )
        assert found is not None
        return found

    async def block_poolers(self, current: int, block_index: int) -> list[tuple[UUID, BlockRow]]:
        """The summary of each pooler that took part in the block."""
        ids = await fetch_values(
            self.pool,
            UUID,
            "SELECT pooler_id FROM block_operations WHERE block_index = %s ORDER BY created_at",
            (block_index,),
        )
        out: list[tuple[UUID, BlockRow]] = []
        for pid in ids:
            rows = await self.blocks(current, pid, block_index=block_index)
            out.extend((pid, r) for r in rows)
        return out

    async def events(self, block_index: int, pooler_id: UUID | None) -> BlockEvents:
        where = "block_index = %s AND (%s::uuid IS NULL OR pooler_id = %s::uuid) ORDER BY id"
        params = (block_index, pooler_id, pooler_id)
        async with self.pool.connection() as conn:
            return BlockEvents(
                plantings=await fetch_all(
                    conn,
                    PlantingRow,
                    f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE {where}",
                    params,
                ),
                works=await fetch_all(
                    conn, WorkRow, f"SELECT {WORK_COLUMNS} FROM works WHERE {where}", params
                ),
                harvests=await fetch_all(
                    conn,
                    HarvestRow,
                    f"SELECT {HARVEST_COLUMNS} FROM harvests WHERE {where}",
                    params,
                ),
                compensations=await fetch_all(
                    conn,
                    CompensationRow,
                    f"SELECT {COMPENSATION_COLUMNS} FROM compensation_status WHERE {where}",
                    params,
                ),
            )

    async def last_blocks(self, pooler_id: UUID | None, last: int) -> int | None:
        """The lowest block among the last `last` blocks taken part in (None: all)."""
        if last == 0:
            return None
        return await fetch_value(
            self.pool,
            int,
            "SELECT min(block_index) FROM (SELECT DISTINCT block_index FROM block_operations"
            " WHERE %s::uuid IS NULL OR pooler_id = %s::uuid"
            " ORDER BY block_index DESC LIMIT %s) s",
            (pooler_id, pooler_id, last),
        )

    async def newest_block(self) -> int:
        """The newest block the pool took part in (0 if none)."""
        newest = await fetch_value(
            self.pool, int, "SELECT coalesce(max(block_index), 0) FROM block_operations"
        )
        assert newest is not None
        return newest

    async def pool_figures(self) -> PoolFigures:
        """Registry counts, balances, payouts and compensations, pool-wide, now."""
        farmer_counts = ", ".join(
            f"(SELECT count(*) FROM farmers f WHERE {cond}) AS {state}"
            for state, cond in FARMER_STATE_SQL.items()
        )
        figures = await fetch_one(
            self.pool,
            PoolFigures,
            "SELECT (SELECT count(*) FROM poolers) AS poolers_total,"
            " (SELECT count(*) FROM poolers WHERE is_active) AS poolers_active,"
            f" {farmer_counts},"
            " (SELECT coalesce(sum(current_balance), 0) FROM farmers)::bigint AS balance,"
            " (SELECT coalesce(-sum(amount), 0) FROM balance_ledger"
            "   WHERE kind IN ('payout', 'payout_reversal'))::bigint AS paid_out,"
            # kept per (pooler, owed_by) as compensations are written and paid
            " (SELECT coalesce(sum(unpaid), 0) FROM compensation_totals)::bigint AS comp_unpaid,"
            " (SELECT coalesce(sum(paid), 0) FROM compensation_totals)::bigint AS comp_paid",
        )
        assert figures is not None
        return figures
