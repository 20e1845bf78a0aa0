"""Block history, statistics and compensations as the operators see them (PoolService
GetBlock, ListBlocks, GetPoolStats, GetPoolerStats, ListCompensations).

Everything is computed from the event tables and the state the database's triggers
derive from them (`block_operations`' counters, settled blocks' counts, compensation
totals: `pool_service.books.blocks`); nothing here writes.
"""

from __future__ import annotations

from uuid import UUID

from kalepool import wire
from kalepool.chain import CurrentBlock, Fault
from kalepool.grpc_server import InvalidArgument, NotFound, Unavailable
from kalepool.request_checks import check_uuid
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from pool_service import convert
from pool_service.books.blocks import BlockRow, BlockStore, BlockTotals
from pool_service.books.compensations import CompensationRow, CompensationStore
from pool_service.books.enums import BlockStatus, CompensationKind
from pool_service.books.poolers import PoolerRow, PoolerStore
from pool_service.books.sweeps import AccountPayoutStore, SweepStore
from pool_service.chain_view import ChainView
from pool_service.feed import Feeds
from pool_service.harvesting import harvest_pb
from pool_service.validate import Page

BLOCK_STATUS_SQL = {
    pool_pb2.BLOCK_STATUS_ACTIVE: BlockStatus.ACTIVE,
    pool_pb2.BLOCK_STATUS_HARVESTING: BlockStatus.HARVESTING,
    pool_pb2.BLOCK_STATUS_COMPLETED: BlockStatus.COMPLETED,
    pool_pb2.BLOCK_STATUS_FAILED: BlockStatus.FAILED,
}
BLOCK_STATUS_PB = {v: k for k, v in BLOCK_STATUS_SQL.items()}

COMPENSATION_KIND = {
    CompensationKind.PLANT_FAILURE: records_pb2.COMPENSATION_KIND_PLANT_FAILURE,
    CompensationKind.WORK_FAILURE: records_pb2.COMPENSATION_KIND_WORK_FAILURE,
    CompensationKind.HARVEST_FAILURE: records_pb2.COMPENSATION_KIND_HARVEST_FAILURE,
}


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


def _counts(row: BlockRow | BlockTotals) -> pool_pb2.CycleCounts:
    """A block's counts, or the same counts summed over blocks."""
    return pool_pb2.CycleCounts(
        plants_succeeded=row.plants_succeeded,
        plants_failed=row.plants_failed,
        works_succeeded=row.works_succeeded,
        works_failed=row.works_failed,
        harvests_succeeded=row.harvests_succeeded,
        harvests_failed=row.harvests_failed,
    )


def _summary(row: BlockRow, pooler_id: UUID | None) -> pool_pb2.BlockSummary:
    return pool_pb2.BlockSummary(
        block_index=row.block_index,
        pooler_id=str(pooler_id) if pooler_id else "",
        status=BLOCK_STATUS_PB[row.status],
        total_farmers=row.total_farmers,
        counts=_counts(row),
        total_staked_stroops=row.total_staked,
        total_reward_stroops=row.total_rewards,
        plant_requested_at=wire.timestamp(row.plant_requested_at),
        plant_completed_at=wire.timestamp(row.plant_completed_at),
        work_completed_at=wire.timestamp(row.work_completed_at),
        harvest_completed_at=wire.timestamp(row.harvest_completed_at),
        best_zeros=row.best_zeros,
    )


def _before(page: Page) -> int | None:
    if page.after is None:
        return None
    if len(page.after) != 1 or not isinstance(page.after[0], int):
        raise InvalidArgument("page_token is not a token this server issued")
    return int(page.after[0])


class BlockReports:
    """The read-only PoolService RPCs over blocks, stats and compensations."""

    def __init__(
        self,
        poolers: PoolerStore,
        blocks: BlockStore,
        compensations: CompensationStore,
        view: ChainView,
        feeds: Feeds,
        shares: SweepStore,
        share_payouts: AccountPayoutStore,
        obligation_limit: int,
    ) -> None:
        self.poolers = poolers
        self.blocks = blocks
        self.compensations = compensations
        self.shares = shares
        self.share_payouts = share_payouts
        # Stroops a pooler may owe past its share balance and still be given farmers.
        self.obligation_limit = obligation_limit
        self.view = view
        self.feeds = feeds

    async def _pooler(self, pooler_id: UUID) -> PoolerRow:
        row = await self.poolers.pooler(pooler_id)
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
        events = await self.blocks.events(request.block_index, pooler_id)
        return pool_pb2.GetBlockResponse(
            block=summary,
            poolers=poolers,
            plantings=[convert.planting_pb(r) for r in events.plantings],
            works=[convert.work_pb(r) for r in events.works],
            harvests=[harvest_pb(r) for r in events.harvests],
            compensations=[compensation_pb(r) for r in events.compensations],
        )

    async def list_blocks(self, request: pool_pb2.ListBlocksRequest) -> pool_pb2.ListBlocksResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        status: BlockStatus | None = None
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
        totals = await self.blocks.totals(current, None, low)
        f = await self.blocks.pool_figures()
        opened, due = convert.block_times(chain) if chain is not None else (None, None)
        account = await self.shares.fee_account()
        fee = await self.share_payouts.totals(account.id) if account else None
        return pool_pb2.GetPoolStatsResponse(
            current_block_index=chain.index if chain is not None else 0,
            current_block_opened_at=opened,
            next_block_due_at=due,
            poolers_total=f.poolers_total,
            poolers_active=f.poolers_active,
            farmers_pending_funding=f.pending_funding,
            farmers_active=f.active,
            farmers_leaving=f.leaving,
            farmers_departed=f.departed,
            blocks=totals.blocks,
            counts=_counts(totals),
            total_staked_stroops=totals.total_staked,
            total_reward_stroops=totals.total_rewards,
            total_paid_out_stroops=f.paid_out,
            total_balance_stroops=f.balance,
            compensations_unpaid_stroops=f.comp_unpaid,
            compensations_paid_stroops=f.comp_paid,
            as_of=wire.now(),
            network_passphrase=self.view.chain.config.network_passphrase,
            fee_earned_stroops=fee.earned if fee else 0,
            fee_pending_stroops=fee.pending if fee else 0,
            fee_balance_stroops=fee.balance if fee else 0,
            fee_account_address=account.custodial_public_key if account else "",
        )

    async def pooler_stats(
        self, request: pool_pb2.GetPoolerStatsRequest
    ) -> pool_pb2.GetPoolerStatsResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        pooler = await self._pooler(pooler_id)
        current = await self.view.current_index()
        low = await self.blocks.last_blocks(pooler_id, request.last_blocks)
        totals = await self.blocks.totals(current, pooler_id, low)
        unpaid = await self.compensations.unpaid(pooler_id)
        beat = await self.poolers.heartbeat(pooler_id)
        account = await self.shares.share_account(pooler_id)
        share = await self.share_payouts.totals(account.id) if account else None
        excess = unpaid.by_pooler - (share.balance if share else 0)
        return pool_pb2.GetPoolerStatsResponse(
            pooler=convert.pooler_pb(pooler),
            blocks=totals.blocks,
            counts=_counts(totals),
            total_reward_stroops=totals.total_rewards,
            compensations_owed_stroops=unpaid.by_pooler,
            compensations_due_stroops=unpaid.by_pool,
            stream_connected=self.feeds.connected(pooler_id),
            last_heartbeat_at=wire.timestamp(beat.last_heartbeat_at) if beat else None,
            capacity=(beat.heartbeat_capacity or 0) if beat else 0,
            hashes_per_second=(beat.heartbeat_hashes_per_second or 0) if beat else 0,
            agent_version=(beat.heartbeat_agent_version or "") if beat else "",
            threads=(beat.heartbeat_threads or 0) if beat else 0,
            mining_farmers=(beat.heartbeat_mining_farmers or 0) if beat else 0,
            observed_block_index=(beat.heartbeat_block_index or 0) if beat else 0,
            last_cursor=(beat.heartbeat_last_cursor or 0) if beat else 0,
            share_earned_stroops=share.earned if share else 0,
            share_pending_stroops=share.pending if share else 0,
            share_paid_stroops=share.paid if share else 0,
            share_balance_stroops=share.balance if share else 0,
            obligations_exceed_earnings=excess > 0,
            closed_to_farmers=excess > self.obligation_limit,
            share_account_address=account.custodial_public_key if account else "",
            as_of=wire.now(),
        )

    async def list_compensations(
        self, request: pool_pb2.ListCompensationsRequest
    ) -> pool_pb2.ListCompensationsResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id) if request.pooler_id else None
        farmer_id = check_uuid("farmer_id", request.farmer_id) if request.farmer_id else None
        owed_by: Fault | None = None
        if request.owed_by != common_pb2.FAULT_PARTY_UNSPECIFIED:
            if request.owed_by not in (common_pb2.FAULT_PARTY_POOL, common_pb2.FAULT_PARTY_POOLER):
                raise InvalidArgument("owed_by must be FAULT_PARTY_POOL or FAULT_PARTY_POOLER")
            owed_by = wire.fault_of_party(request.owed_by)
        page = Page(
            request.pagination, "compensations", pooler_id, farmer_id, owed_by, request.unpaid_only
        )
        before = _before(page)
        rows = await self.compensations.compensations(
            pooler_id, farmer_id, owed_by, request.unpaid_only, before, page.size + 1
        )
        shown = rows[: page.size]
        token = page.next_token(rows, [shown[-1].id] if shown else [])
        totals = await self.compensations.totals(pooler_id, farmer_id, owed_by)
        return pool_pb2.ListCompensationsResponse(
            compensations=[compensation_pb(r) for r in shown],
            next_page_token=token,
            owed_stroops=totals.owed,
            paid_stroops=totals.paid,
        )


async def obligations_past_limit(reports: BlockReports, pooler_id: UUID) -> int | None:
    """By how much a pooler's unpaid compensations exceed its share balance past the
    limit (None when within it): such a pooler is given no new farmers."""
    owed = (await reports.compensations.unpaid(pooler_id)).by_pooler
    account = await reports.shares.share_account(pooler_id)
    balance = (await reports.share_payouts.totals(account.id)).balance if account else 0
    excess = owed - balance
    return excess if excess > reports.obligation_limit else None
