"""RequestPlant: plant every active funded farmer of a pooler in one block, in parallel.

Each farmer's plant goes to WalletService.Plant with the idempotency key
`plant:<farmer_id>:<block>`, at most `plant_concurrency` at once; every settled outcome
becomes a `plantings` row (success, or failure with whose fault it was). Asking again
for the same (pooler, block) plants nobody twice: farmers with a recorded success are
answered from the record, the wallet replays any transaction it already made for a
key, and the database holds one success per (farmer, block).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import grpc

from kalepool.grpc_server import FailedPrecondition
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2, wallet_pb2
from pool_service import convert
from pool_service.chain_view import ChainView
from pool_service.store import FarmerRow, NewPlanting, PlantingRow, PoolerRow, Store
from pool_service.wallet import WalletClient

log = logging.getLogger("pool_service")

BPS_MAX = 10_000


def stake_for(farmer: FarmerRow) -> int:
    """The farmer's stake: its share (bps) of the KALE balance the pool accounts for."""
    return max(0, farmer.current_balance) * farmer.stake_bps // BPS_MAX


@dataclass
class Attempt:
    """One farmer's plant in this request: a recorded row, or pending (not settled)."""

    farmer: FarmerRow
    row: PlantingRow | None = None
    pending: records_pb2.PlantingEvent | None = None


class Planter:
    """Runs plant requests; `on_planted(pooler_id)` is called when assignments appear."""

    def __init__(
        self,
        store: Store,
        wallet: WalletClient,
        view: ChainView,
        settings: Settings,
        on_planted: Callable[[UUID], None],
    ) -> None:
        self.store = store
        self.wallet = wallet
        self.view = view
        self.settings = settings
        self.on_planted = on_planted
        self._limit = asyncio.Semaphore(settings.plant_concurrency)
        self._locks: dict[tuple[UUID, int], asyncio.Lock] = {}

    async def request(
        self, pooler: PoolerRow, block_index: int, max_farmers: int
    ) -> pooler_pb2.RequestPlantResponse:
        plantable = await self.view.plantable()
        if block_index not in plantable.allowed:
            current = plantable.current.index
            raise FailedPrecondition(
                f"block {block_index} cannot be planted now: the farm's current block is"
                f" {current}"
                + (f" (or {current + 1} is due)" if len(plantable.allowed) > 1 else "")
            )
        # One request per (pooler, block) at a time in this process; the wallet's keys
        # and the database's unique index hold across processes.
        lock = self._locks.setdefault((pooler.id, block_index), asyncio.Lock())
        async with lock:
            return await self._plant(pooler, block_index, max_farmers)

    async def _plant(
        self, pooler: PoolerRow, block_index: int, max_farmers: int
    ) -> pooler_pb2.RequestPlantResponse:
        await self.store.claim_block(pooler.id, block_index)
        limit = min(max_farmers or pooler.max_farmers, self.settings.max_farmers_per_pooler)
        farmers = await self.store.plantable_farmers(pooler.id, limit)
        recorded = await self.store.plantings(pooler.id, block_index)
        succeeded = {r.farmer_id: r for r in recorded if r.status == "success"}
        attempts = [Attempt(f, row=succeeded.get(f.id)) for f in farmers]
        todo = [a for a in attempts if a.row is None]
        await asyncio.gather(*(self._attempt(pooler, block_index, a) for a in todo))
        if any(a.row is not None and a.row.status == "success" for a in todo):
            self.on_planted(pooler.id)

        planted = {a.farmer.id: a.row for a in attempts if a.row and a.row.status == "success"}
        # Farmers planted earlier but outside this request's selection are still planted.
        for r in recorded:
            if r.status == "success":
                planted.setdefault(r.farmer_id, r)
        failed = [a.row for a in attempts if a.row is not None and a.row.status == "failed"]
        pending = [a.pending for a in attempts if a.pending is not None]
        if not pending:
            await self.store.plant_settled(pooler.id, block_index)
        planted_rows = sorted((r for r in planted.values() if r is not None), key=lambda r: r.id)
        return pooler_pb2.RequestPlantResponse(
            block_index=block_index,
            planted=[convert.planting_pb(r) for r in planted_rows],
            failed=[convert.planting_pb(r) for r in failed],
            pending=pending,
            summary=pooler_pb2.PlantSummary(
                total_requested=len(planted_rows) + len(failed) + len(pending),
                planted=len(planted_rows),
                failed=len(failed),
                pending=len(pending),
                total_staked_stroops=sum(r.stake_amount for r in planted_rows),
            ),
        )

    async def _attempt(self, pooler: PoolerRow, block_index: int, attempt: Attempt) -> None:
        farmer = attempt.farmer
        stake = stake_for(farmer)
        request = wallet_pb2.PlantRequest(
            idempotency_key=f"plant:{farmer.id}:{block_index}",
            farmer_address=farmer.custodial_public_key,
            block_index=block_index,
            stake_stroops=stake,
        )
        async with self._limit:
            try:
                response = await self.wallet.stub.Plant(
                    request, timeout=self.settings.plant_timeout_seconds
                )
            except grpc.aio.AioRpcError as exc:
                outcome = self._refused(farmer, block_index, stake, exc)
            else:
                outcome = self._settled(farmer, block_index, stake, response)
        if outcome is None:  # sent, fate unknown: nothing to record yet
            attempt.pending = records_pb2.PlantingEvent(
                block_index=block_index,
                farmer_id=str(farmer.id),
                pooler_id=str(pooler.id),
                custodial_address=farmer.custodial_public_key,
                stake_stroops=stake,
                status=records_pb2.EVENT_STATUS_PENDING,
            )
            return
        attempt.row, new = await self.store.record_planting(pooler.id, outcome)
        if new:
            log.info(
                "plant farmer=%s block=%d %s%s",
                farmer.id,
                block_index,
                outcome.status,
                f" ({outcome.fault}: {outcome.error_message})" if outcome.error_message else "",
            )

    @staticmethod
    def _settled(
        farmer: FarmerRow, block_index: int, stake: int, response: wallet_pb2.PlantResponse
    ) -> NewPlanting | None:
        out = response.outcome
        tx_hash = out.tx_hash or None
        if out.status == common_pb2.TX_STATUS_PENDING:
            return None
        if out.status == common_pb2.TX_STATUS_SUCCESS:
            if response.plant_ledger > 0:
                return NewPlanting(
                    farmer.id,
                    block_index,
                    stake,
                    "success",
                    tx_hash,
                    response.plant_ledger,
                    "none",
                    None,
                    None,
                )
            # Applied, but the block rolled over in between: the pail is in another block.
            return NewPlanting(
                farmer.id,
                block_index,
                stake,
                "failed",
                tx_hash,
                None,
                "chain",
                convert.failure_code_name(common_pb2.FAILURE_CODE_BLOCK_MISMATCH),
                f"the plant applied but opened no pail in block {block_index}",
            )
        fault = convert.FAULT_FROM_PROTO.get(out.failure.fault, "pool")
        if fault == "none":
            # A refusal nobody caused (the block moved on between checks): the chain's.
            fault = "chain"
        code = out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED
        return NewPlanting(
            farmer.id,
            block_index,
            stake,
            "failed",
            tx_hash,
            None,
            fault,
            convert.failure_code_name(code),
            out.failure.message or common_pb2.TxStatus.Name(out.status),
        )

    @staticmethod
    def _refused(
        farmer: FarmerRow, block_index: int, stake: int, exc: grpc.aio.AioRpcError
    ) -> NewPlanting | None:
        code = exc.code()
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return None  # it may have been sent: the next request replays its key
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            fault, failure = "farmer", common_pb2.FAILURE_CODE_ACCOUNT_MISSING
        else:
            fault, failure = "pool", common_pb2.FAILURE_CODE_WALLET_UNAVAILABLE
        return NewPlanting(
            farmer.id,
            block_index,
            stake,
            "failed",
            None,
            None,
            fault,
            convert.failure_code_name(failure),
            f"the wallet service refused the plant ({code.name}): {exc.details()}",
        )
