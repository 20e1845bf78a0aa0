"""Block history, statistics and compensations as the operators see them (PoolService
GetBlock, ListBlocks, GetPoolStats, GetPoolerStats, ListCompensations).

Everything is computed from the event tables and `block_operations` (whose counters
the database's triggers derive from the events); nothing here writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from psycopg.rows import class_row

from kalepool import wire
from kalepool.chain import CurrentBlock
from kalepool.db.reads import Pool, fetch_all
from kalepool.grpc_server import InvalidArgument, NotFound, Unavailable
from kalepool.request_checks import check_uuid
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from pool_service import convert
from pool_service.chain_view import ChainView
from pool_service.feed import Feeds
from pool_service.harvesting import harvest_pb
from pool_service.store import (
    FARMER_STATUS_SQL,
    HARVEST_COLUMNS,
    PLANTING_COLUMNS,
    WORK_COLUMNS,
    HarvestRow,
    PlantingRow,
    PoolerRow,
    Store,
    WorkRow,
)
from pool_service.validate import Page

BLOCK_STATUS_SQL = {
    pool_pb2.BLOCK_STATUS_ACTIVE: "active",
    pool_pb2.BLOCK_STATUS_HARVESTING: "harvesting",
    pool_pb2.BLOCK_STATUS_COMPLETED: "completed",
    pool_pb2.BLOCK_STATUS_FAILED: "failed",
}
BLOCK_STATUS_PB = {v: k for k, v in BLOCK_STATUS_SQL.items()}

COMPENSATION_KIND = {
    "plant_failure": records_pb2.COMPENSATION_KIND_PLANT_FAILURE,
    "work_failure": records_pb2.COMPENSATION_KIND_WORK_FAILURE,
    "harvest_failure": records_pb2.COMPENSATION_KIND_HARVEST_FAILURE,
}

# One (pooler, block) row with the outcome counts the API defines, computed from the
# events: a work "failed or never came" (a planted pail with no work row and no harvest,
# which proves it was worked, counts once the block is over), a harvest "failed for
# good" (the pail is gone), and the pails still waiting for their harvest.
_PER_POOLER = """
SELECT b.pooler_id, b.block_index, b.total_farmers, b.successful_plants, b.failed_plants,
  b.successful_works,
  -- a failure observed on chain that confirms one the pooler reported is the same one
  b.failed_works - (SELECT count(*) FROM works o WHERE o.pooler_id = b.pooler_id
     AND o.block_index = b.block_index AND o.status = 'failed' AND o.observed_on_chain
     AND EXISTS (SELECT 1 FROM works r WHERE r.farmer_id = o.farmer_id
       AND r.block_index = o.block_index AND r.status = 'failed'
       AND NOT r.observed_on_chain)) AS failed_works,
  b.successful_harvests, b.total_staked, b.total_rewards,
  b.plant_requested_at, b.plant_completed_at, b.work_completed_at, b.harvest_completed_at,
  (SELECT count(*) FROM plantings p WHERE p.pooler_id = b.pooler_id
     AND p.block_index = b.block_index AND p.status = 'success' AND NOT EXISTS (
       SELECT 1 FROM works w WHERE w.farmer_id = p.farmer_id
       AND w.block_index = p.block_index) AND NOT EXISTS (
       SELECT 1 FROM harvests h WHERE h.farmer_id = p.farmer_id
       AND h.block_index = p.block_index AND h.status = 'success')) AS unworked,
  (SELECT count(*) FROM harvests h WHERE h.pooler_id = b.pooler_id
     AND h.block_index = b.block_index AND h.error_code = 'PAIL_MISSING') AS gone,
  (SELECT count(*) FROM works w WHERE w.pooler_id = b.pooler_id
     AND w.block_index = b.block_index AND w.status = 'success' AND NOT EXISTS (
       SELECT 1 FROM harvests h WHERE h.farmer_id = w.farmer_id
       AND h.block_index = w.block_index
       AND (h.status = 'success' OR h.error_code = 'PAIL_MISSING'))) AS open_pails,
  (SELECT coalesce(max(w.zeros), 0) FROM works w WHERE w.pooler_id = b.pooler_id
     AND w.block_index = b.block_index AND w.status = 'success') AS best_zeros
FROM block_operations b WHERE (%(pooler)s::uuid IS NULL OR b.pooler_id = %(pooler)s::uuid)
"""

# Per block (over the poolers asked for), with its status: the chain's current block or
# a newer one is active; an over block with no successful work failed; one whose worked
# pails are all harvested (or gone) is completed; else it is being harvested.
_PER_BLOCK = f"""
WITH per AS ({_PER_POOLER}),
blocks AS (
  SELECT block_index, sum(total_farmers)::bigint AS total_farmers,
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
  FROM per GROUP BY block_index
)
SELECT *, CASE
    WHEN block_index >= %(current)s THEN 'active'
    WHEN works_succeeded = 0 THEN 'failed'
    WHEN open_pails = 0 THEN 'completed'
    ELSE 'harvesting' END AS status
FROM blocks
"""


@dataclass
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
    status: str

    def counts(self) -> pool_pb2.CycleCounts:
        return pool_pb2.CycleCounts(
            plants_succeeded=self.plants_succeeded,
            plants_failed=self.plants_failed,
            works_succeeded=self.works_succeeded,
            # A planted pail never worked counts only once the block is over.
            works_failed=self.works_failed_recorded
            + (self.unworked if self.status != "active" else 0),
            harvests_succeeded=self.harvests_succeeded,
            harvests_failed=self.harvests_failed,
        )


@dataclass
class CompensationRow:
    id: int
    pooler_id: UUID
    farmer_id: UUID
    block_index: int
    compensation_type: str
    owed_by: str
    amount: int
    reason: str
    is_paid: bool
    created_at: dt.datetime
    paid_at: dt.datetime | None


COMPENSATION_COLUMNS = (
    "id, pooler_id, farmer_id, block_index, compensation_type::text, owed_by::text, amount,"
    " reason, is_paid, created_at, paid_at"
)


def compensation_pb(row: CompensationRow) -> records_pb2.Compensation:
    return records_pb2.Compensation(
        compensation_id=str(row.id),
        pooler_id=str(row.pooler_id),
        farmer_id=str(row.farmer_id),
        block_index=row.block_index,
        kind=COMPENSATION_KIND[row.compensation_type],
        owed_by=wire.fault_party(row.owed_by),
        amount_stroops=row.amount,
        reason=row.reason,
        paid=row.is_paid,
        created_at=wire.timestamp(row.created_at),
        paid_at=wire.timestamp(row.paid_at),
    )


class BlockStore:
    """SQL of the block history and the statistics."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def blocks(
        self,
        current: int,
        pooler_id: UUID | None,
        *,
        status: str | None = None,
        block_index: int | None = None,
        before: int | None = None,
        limit: int | None = None,
    ) -> list[BlockRow]:
        """Block summaries, newest first."""
        where = ["(%(status)s::text IS NULL OR status = %(status)s::text)"]
        where.append("(%(block)s::bigint IS NULL OR block_index = %(block)s::bigint)")
        where.append("(%(before)s::bigint IS NULL OR block_index < %(before)s::bigint)")
        sql = f"SELECT * FROM ({_PER_BLOCK}) s WHERE {' AND '.join(where)}"
        sql += " ORDER BY block_index DESC LIMIT %(limit)s"
        params = {
            "pooler": pooler_id,
            "current": current,
            "status": status,
            "block": block_index,
            "before": before,
            "limit": limit,
        }
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(BlockRow))
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def block_poolers(self, current: int, block_index: int) -> list[tuple[UUID, BlockRow]]:
        """The summary of each pooler that took part in the block."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT pooler_id FROM block_operations WHERE block_index = %s ORDER BY created_at",
                (block_index,),
            )
            ids = [r[0] for r in await cur.fetchall()]
        out: list[tuple[UUID, BlockRow]] = []
        for pid in ids:
            rows = await self.blocks(current, pid, block_index=block_index)
            out.extend((pid, r) for r in rows)
        return out

    async def events(
        self, block_index: int, pooler_id: UUID | None
    ) -> tuple[list[PlantingRow], list[WorkRow], list[HarvestRow], list[CompensationRow]]:
        where = "block_index = %s AND (%s::uuid IS NULL OR pooler_id = %s::uuid) ORDER BY id"
        params = (block_index, pooler_id, pooler_id)
        async with self.pool.connection() as conn:
            p = conn.cursor(row_factory=class_row(PlantingRow))
            await p.execute(f"SELECT {PLANTING_COLUMNS} FROM plantings WHERE {where}", params)
            w = conn.cursor(row_factory=class_row(WorkRow))
            await w.execute(f"SELECT {WORK_COLUMNS} FROM works WHERE {where}", params)
            h = conn.cursor(row_factory=class_row(HarvestRow))
            await h.execute(f"SELECT {HARVEST_COLUMNS} FROM harvests WHERE {where}", params)
            c = conn.cursor(row_factory=class_row(CompensationRow))
            await c.execute(
                f"SELECT {COMPENSATION_COLUMNS} FROM compensation_status WHERE {where}", params
            )
            return (await p.fetchall(), await w.fetchall(), await h.fetchall(), await c.fetchall())

    async def last_blocks(self, pooler_id: UUID | None, last: int) -> int | None:
        """The lowest block among the last `last` blocks taken part in (None: all)."""
        if last == 0:
            return None
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT min(block_index) FROM (SELECT DISTINCT block_index FROM block_operations"
                " WHERE %s::uuid IS NULL OR pooler_id = %s::uuid"
                " ORDER BY block_index DESC LIMIT %s) s",
                (pooler_id, pooler_id, last),
            )
            row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

    async def newest_block(self) -> int:
        """The newest block the pool took part in (0 if none)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT coalesce(max(block_index), 0) FROM block_operations")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    async def pool_figures(self) -> dict[str, int]:
        """Registry counts, balances, payouts and compensations, pool-wide, now."""
        farmer_counts = ", ".join(
            f"(SELECT count(*) FROM farmers f WHERE {cond}) AS {name}"
            for name, cond in FARMER_STATUS_SQL.items()
        )
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM poolers) AS poolers_total,"
                " (SELECT count(*) FROM poolers WHERE is_active) AS poolers_active,"
                f" {farmer_counts},"
                " (SELECT coalesce(sum(current_balance), 0) FROM farmers) AS balance,"
                " (SELECT coalesce(-sum(amount), 0) FROM balance_ledger"
                "   WHERE kind IN ('payout', 'payout_reversal')) AS paid_out,"
                " (SELECT coalesce(sum(amount), 0) FROM compensation_status"
                "   WHERE NOT is_paid) AS comp_unpaid,"
                " (SELECT coalesce(sum(amount), 0) FROM compensation_status"
                "   WHERE is_paid) AS comp_paid"
            )
            row = await cur.fetchone()
            assert row is not None and cur.description is not None
            return {d.name: int(v) for d, v in zip(cur.description, row, strict=True)}

    async def pooler_compensations(self, pooler_id: UUID) -> tuple[int, int]:
        """(unpaid owed by the pooler, unpaid owed by the pool to its farmers)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(amount) FILTER (WHERE owed_by = 'pooler'), 0),"
                " coalesce(sum(amount) FILTER (WHERE owed_by = 'pool'), 0)"
                " FROM compensation_status WHERE pooler_id = %s AND NOT is_paid",
                (pooler_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

    async def compensations(
        self,
        pooler_id: UUID | None,
        farmer_id: UUID | None,
        owed_by: str | None,
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


def _summary(row: BlockRow, pooler_id: UUID | None) -> pool_pb2.BlockSummary:
    return pool_pb2.BlockSummary(
        block_index=row.block_index,
        pooler_id=str(pooler_id) if pooler_id else "",
        status=BLOCK_STATUS_PB[row.status],
        total_farmers=row.total_farmers,
        counts=row.counts(),
        total_staked_stroops=row.total_staked,
        total_reward_stroops=row.total_rewards,
        plant_requested_at=wire.timestamp(row.plant_requested_at),
        plant_completed_at=wire.timestamp(row.plant_completed_at),
        work_completed_at=wire.timestamp(row.work_completed_at),
        harvest_completed_at=wire.timestamp(row.harvest_completed_at),
        best_zeros=row.best_zeros,
    )


def _total(rows: list[BlockRow]) -> tuple[pool_pb2.CycleCounts, int, int]:
    counts = pool_pb2.CycleCounts()
    staked = rewards = 0
    for r in rows:
        c = r.counts()
        counts.plants_succeeded += c.plants_succeeded
        counts.plants_failed += c.plants_failed
        counts.works_succeeded += c.works_succeeded
        counts.works_failed += c.works_failed
        counts.harvests_succeeded += c.harvests_succeeded
        counts.harvests_failed += c.harvests_failed
        staked += r.total_staked
        rewards += r.total_rewards
    return counts, staked, rewards


def _before(page: Page) -> int | None:
    if page.after is None:
        return None
    if len(page.after) != 1 or not isinstance(page.after[0], int):
        raise InvalidArgument("page_token is not a token this server issued")
    return int(page.after[0])


class BlockReports:
    """The read-only PoolService RPCs over blocks, stats and compensations."""

    def __init__(self, store: Store, blocks: BlockStore, view: ChainView, feeds: Feeds) -> None:
        self.store = store
        self.blocks = blocks
        self.view = view
        self.feeds = feeds

    async def _pooler(self, pooler_id: UUID) -> PoolerRow:
        row = await self.store.pooler(pooler_id)
        if row is None:
            raise NotFound(f"no pooler {pooler_id}")
        return row

    async def get_block(self, request: pool_pb2.GetBlockRequest) -> pool_pb2.GetBlockResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        if pooler_id is not None:
            await self._pooler(pooler_id)
        current = await self.view.current_index()
        rows = await self.blocks.blocks(current, pooler_id, block_index=request.block_index)
        if not rows:
            whose = f" for pooler {pooler_id}" if pooler_id else ""
            raise NotFound(f"the pool took no part in block {request.block_index}{whose}")
        summary = _summary(rows[0], pooler_id)
        try:
            block = await self.view.block(request.block_index)
        except Unavailable:  # the chain's view is optional here: leave it unset
            block = None
        if block is not None:
            summary.opened_at.CopyFrom(wire.epoch(block.timestamp))
            summary.entropy = block.entropy
        poolers = [
            _summary(r, pid)
            for pid, r in await self.blocks.block_poolers(current, request.block_index)
            if pooler_id is None or pid == pooler_id
        ]
        plantings, works, harvests, comps = await self.blocks.events(request.block_index, pooler_id)
        return pool_pb2.GetBlockResponse(
            block=summary,
            poolers=poolers,
            plantings=[convert.planting_pb(r) for r in plantings],
            works=[convert.work_pb(r) for r in works],
            harvests=[harvest_pb(r) for r in harvests],
            compensations=[compensation_pb(r) for r in comps],
        )

    async def list_blocks(self, request: pool_pb2.ListBlocksRequest) -> pool_pb2.ListBlocksResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        status: str | None = None
        if request.status != pool_pb2.BLOCK_STATUS_UNSPECIFIED:
            if request.status not in BLOCK_STATUS_SQL:
                raise InvalidArgument(f"status {request.status} is not a block status")
            status = BLOCK_STATUS_SQL[request.status]
        page = Page(request.pagination, "blocks", pooler_id, status)
        before = _before(page)
        if pooler_id is not None:
            await self._pooler(pooler_id)
        current = await self.view.current_index()
        rows = await self.blocks.blocks(
            current, pooler_id, status=status, before=before, limit=page.size + 1
        )
        shown = rows[: page.size]
        token = page.next_token(rows, [shown[-1].block_index] if shown else [])
        return pool_pb2.ListBlocksResponse(
            blocks=[_summary(r, pooler_id) for r in shown], next_page_token=token
        )

    async def pool_stats(
        self, request: pool_pb2.GetPoolStatsRequest
    ) -> pool_pb2.GetPoolStatsResponse:
        try:
            chain: CurrentBlock | None = (await self.view.plantable()).current
        except Unavailable:  # the figures stand without the chain; its fields stay unset
            chain = None
        # Without the chain, the newest block the pool took part in counts as current
        # (its idle pails are not counted as failed works before it is known to be over).
        current = chain.index if chain is not None else await self.blocks.newest_block()
        low = await self.blocks.last_blocks(None, request.last_blocks)
        rows = [
            r
            for r in await self.blocks.blocks(current, None)
            if low is None or r.block_index >= low
        ]
        counts, staked, rewards = _total(rows)
        f = await self.blocks.pool_figures()
        opened, due = convert.block_times(chain) if chain is not None else (None, None)
        return pool_pb2.GetPoolStatsResponse(
            current_block_index=chain.index if chain is not None else 0,
            current_block_opened_at=opened,
            next_block_due_at=due,
            poolers_total=f["poolers_total"],
            poolers_active=f["poolers_active"],
            farmers_pending_funding=f["pending_funding"],
            farmers_active=f["active"],
            farmers_leaving=f["leaving"],
            farmers_departed=f["departed"],
            blocks=len(rows),
            counts=counts,
            total_staked_stroops=staked,
            total_reward_stroops=rewards,
            total_paid_out_stroops=f["paid_out"],
            total_balance_stroops=f["balance"],
            compensations_unpaid_stroops=f["comp_unpaid"],
            compensations_paid_stroops=f["comp_paid"],
            as_of=wire.now(),
        )

    async def pooler_stats(
        self, request: pool_pb2.GetPoolerStatsRequest
    ) -> pool_pb2.GetPoolerStatsResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        pooler = await self._pooler(pooler_id)
        current = await self.view.current_index()
        low = await self.blocks.last_blocks(pooler_id, request.last_blocks)
        rows = [
            r
            for r in await self.blocks.blocks(current, pooler_id)
            if low is None or r.block_index >= low
        ]
        counts, _, rewards = _total(rows)
        owed, due = await self.blocks.pooler_compensations(pooler_id)
        beat = await self.store.heartbeat(pooler_id)
        return pool_pb2.GetPoolerStatsResponse(
            pooler=convert.pooler_pb(pooler),
            blocks=len(rows),
            counts=counts,
            total_reward_stroops=rewards,
            compensations_owed_stroops=owed,
            compensations_due_stroops=due,
            stream_connected=self.feeds.connected(pooler_id),
            last_heartbeat_at=wire.timestamp(beat.last_heartbeat_at) if beat else None,
            capacity=(beat.heartbeat_capacity or 0) if beat else 0,
            hashes_per_second=(beat.heartbeat_hashes_per_second or 0) if beat else 0,
            agent_version=(beat.heartbeat_agent_version or "") if beat else "",
            threads=(beat.heartbeat_threads or 0) if beat else 0,
            mining_farmers=(beat.heartbeat_mining_farmers or 0) if beat else 0,
            observed_block_index=(beat.heartbeat_block_index or 0) if beat else 0,
            last_cursor=(beat.heartbeat_last_cursor or 0) if beat else 0,
            as_of=wire.now(),
        )

    async def list_compensations(
        self, request: pool_pb2.ListCompensationsRequest
    ) -> pool_pb2.ListCompensationsResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        farmer_id = check_uuid("farmer_id", request.farmer_id) if request.farmer_id else None
        owed_by: str | None = None
        if request.owed_by != common_pb2.FAULT_PARTY_UNSPECIFIED:
            if request.owed_by not in (common_pb2.FAULT_PARTY_POOL, common_pb2.FAULT_PARTY_POOLER):
                raise InvalidArgument("owed_by must be FAULT_PARTY_POOL or FAULT_PARTY_POOLER")
            owed_by = str(wire.fault_of_party(request.owed_by))
        page = Page(
            request.pagination, "compensations", pooler_id, farmer_id, owed_by, request.unpaid_only
        )
        before = _before(page)
        rows = await self.blocks.compensations(
            pooler_id, farmer_id, owed_by, request.unpaid_only, before, page.size + 1
        )
        shown = rows[: page.size]
        token = page.next_token(rows, [shown[-1].id] if shown else [])
        return pool_pb2.ListCompensationsResponse(
            compensations=[compensation_pb(r) for r in shown], next_page_token=token
        )
