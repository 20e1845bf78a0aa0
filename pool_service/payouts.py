"""Payouts and leaving the pool (PoolService RequestPayout, ListPayouts, LeavePool).

Nothing paid twice, nothing lost: a payout is recorded and its ledger debit written in
one database transaction *before* the wallet service is asked to sign anything; the
wallet signs under `payout:<payout id>`, so asking again (a retried RPC, a restart)
replays the one transaction instead of making another. A transfer that failed, expired
or was refused before signing settles the payout as failed and posts its
`payout_reversal` in the same database transaction. One whose fate is unknown stays
pending, and is driven again by the next request and at start-up (`reconcile`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from uuid import UUID

import grpc

from kalepool import wire
from kalepool.chain import Fault
from kalepool.grpc_server import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kalepool.request_checks import check_idempotency_key, check_uuid
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2, records_pb2, wallet_pb2
from pool_service import convert
from pool_service.books.enums import FarmerStatus, PayoutStatus
from pool_service.books.farmers import FarmerRow, FarmerStore
from pool_service.books.payouts import PayoutRow, PayoutStore
from pool_service.chain_view import ChainView
from pool_service.locks import KeyedLocks
from pool_service.validate import Page
from pool_service.wallet import WalletClient, nothing_signed, wallet_call

log = logging.getLogger("pool_service.payouts")

# Payout ids derived from (farmer, idempotency key): the same key is the same payout.
_PAYOUT_ID_NAMESPACE = uuid.UUID("0b7f3a52-3c1e-4f0e-8f7e-706179f0075a")

# How long one Transfer / CloseWallet call may take before its fate counts as unknown
# (the payout stays pending and is driven again later).
_WALLET_TIMEOUT_SECONDS = 30.0


def payout_pb(row: PayoutRow) -> records_pb2.Payout:
    return records_pb2.Payout(
        payout_id=str(row.id),
        farmer_id=str(row.farmer_id),
        destination_address=row.destination,
        amount_stroops=row.amount,
        transaction=convert.payout_tx_ref(row.tx_hash, row.status, row.ledger),
        failure=convert.failure_pb(
            row.status, row.fault or Fault.POOL, row.error_code, row.error_message
        ),
        requested_at=wire.timestamp(row.requested_at),
        completed_at=wire.timestamp(row.completed_at),
    )


class Payouts:
    """RequestPayout, ListPayouts, LeavePool and the start-up reconciliation."""

    def __init__(
        self,
        farmers: FarmerStore,
        payouts: PayoutStore,
        wallet: WalletClient,
        view: ChainView,
        settings: Settings,
    ) -> None:
        self.farmers = farmers
        self.payouts = payouts
        self.wallet = wallet
        self.view = view
        self.settings = settings
        # One payout decision per farmer at a time in this process; across replicas the
        # farmer's row lock and the ledger's overdraft check keep the balance whole.
        self.locks: KeyedLocks[UUID] = KeyedLocks()

    async def _farmer(self, farmer_id: UUID) -> FarmerRow:
        row = await self.farmers.farmer(farmer_id)
        if row is None:
            raise NotFound(f"no farmer {farmer_id}")
        return row

    # --- driving one payout -------------------------------------------------------------

    async def drive(self, payout: PayoutRow, source: str) -> PayoutRow:
        """Ask the wallet for the payout's transfer (a replay when it was made) and
        record what became certain."""
        request = wallet_pb2.TransferRequest(
            idempotency_key=payout.wallet_key,
            source_address=source,
            destination_address=payout.destination,
            amount_stroops=payout.amount,
        )
        try:
            response = await self.wallet.stub.Transfer(request, timeout=_WALLET_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if nothing_signed(exc, payout.wallet_key):  # certain: failed, and reversed
                await self.payouts.failed(
                    payout.id, None, "INTERNAL", exc.details() or exc.code().name, Fault.POOL
                )
            else:  # unreachable or timed out: its fate is unknown, ask again later
                log.warning("payout %s still pending (%s)", payout.id, exc.code().name)
        else:
            out = response.outcome
            if out.status == common_pb2.TX_STATUS_SUCCESS:
                await self.payouts.succeeded(payout.id, out.tx_hash, out.ledger)
            elif out.status in (
                common_pb2.TX_STATUS_FAILED,
                common_pb2.TX_STATUS_EXPIRED,
                common_pb2.TX_STATUS_REJECTED,
            ):
                fault = wire.fault_of_party(out.failure.fault) or Fault.POOL
                await self.payouts.failed(
                    payout.id,
                    out.tx_hash or None,
                    wire.failure_label(out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED),
                    out.failure.message or common_pb2.TxStatus.Name(out.status),
                    # A failure nobody caused is still the pool's to answer for.
                    Fault.POOL if fault is Fault.NONE else fault,
                )
            else:
                await self.payouts.still_pending(payout.id, out.tx_hash or None)
        settled = await self.payouts.payout(payout.id)
        assert settled is not None
        if settled.status != PayoutStatus.PENDING:
            log.info("payout %s of farmer %s: %s", payout.id, payout.farmer_id, settled.status)
        return settled

    async def reconcile(self) -> int:
        """Drive every pending payout once (one pass of the server's payout loop); how
        many settled."""
        settled = 0
        for payout in await self.payouts.pending():
            farmer = await self.farmers.farmer(payout.farmer_id)
            if farmer is None:
                continue
            async with self.locks.hold(payout.farmer_id):
                done = await self.drive(payout, farmer.custodial_public_key)
            settled += done.status != PayoutStatus.PENDING
        return settled

    async def _drive_pending(self, farmer: FarmerRow) -> bool:
        """Drive the farmer's pending payouts; whether none is left pending."""
        left = False
        for payout in await self.payouts.pending(farmer.id):
            done = await self.drive(payout, farmer.custodial_public_key)
            left = left or done.status == PayoutStatus.PENDING
        return not left

    # --- the RPCs ----------------------------------------------------------------------

    async def request_payout(
        self, request: pool_pb2.RequestPayoutRequest
    ) -> pool_pb2.RequestPayoutResponse:
        farmer_id = check_uuid("farmer_id", request.farmer_id)
        if request.amount_stroops < 0:
            raise InvalidArgument(
                "amount_stroops must be 0 (the whole balance) or more,"
                f" got {request.amount_stroops}"
            )
        key = check_idempotency_key(request.idempotency_key) if request.idempotency_key else None
        payout_id = uuid.uuid5(_PAYOUT_ID_NAMESPACE, f"{farmer_id}:{key}") if key else uuid.uuid4()
        farmer = await self._farmer(farmer_id)
        async with self.locks.hold(farmer_id):
            existing = await self.payouts.payout(payout_id)
            if existing is None:
                if farmer.status == FarmerStatus.DEPARTED or not farmer.is_funded:
                    status = common_pb2.FarmerStatus.Name(convert.farmer_status(farmer))
                    raise FailedPrecondition(f"farmer {farmer_id} is {status}: no payouts")
                payout = await self.payouts.create(
                    payout_id, farmer_id, farmer.payout_address, request.amount_stroops, key
                )
            else:
                if request.amount_stroops not in (0, existing.amount):
                    raise AlreadyExists(
                        f"idempotency key already made payout {existing.id} of"
                        f" {existing.amount} stroops"
                    )
                payout = existing
            if payout.status == PayoutStatus.PENDING:
                payout = await self.drive(payout, farmer.custodial_public_key)
        return pool_pb2.RequestPayoutResponse(payout=payout_pb(payout))

    async def list_payouts(
        self, request: pool_pb2.ListPayoutsRequest
    ) -> pool_pb2.ListPayoutsResponse:
        farmer_id = check_uuid("farmer_id", request.farmer_id)
        page = Page(request.pagination, "payouts", farmer_id)
        before: tuple[str, str] | None = None
        if page.after is not None:
            try:
                when, pid = page.after
                dt.datetime.fromisoformat(when)
                uuid.UUID(pid)
            except (TypeError, ValueError):
                raise InvalidArgument("page_token is not a token this server issued") from None
            before = (when, pid)
        await self._farmer(farmer_id)
        rows = await self.payouts.list(farmer_id, before, page.size + 1)
        shown = rows[: page.size]
        token = page.next_token(
            rows, [shown[-1].requested_at.isoformat(), str(shown[-1].id)] if shown else []
        )
        return pool_pb2.ListPayoutsResponse(
            payouts=[payout_pb(r) for r in shown], next_page_token=token
        )

    async def leave(self, request: pool_pb2.LeavePoolRequest) -> pool_pb2.LeavePoolResponse:
        farmer_id = check_uuid("farmer_id", request.farmer_id)
        farmer = await self._farmer(farmer_id)
        close_key = f"close:{farmer_id}"
        async with self.locks.hold(farmer_id):
            if farmer.status == FarmerStatus.DEPARTED:
                return await self._departed(farmer, close_key)
            if farmer.status == FarmerStatus.ACTIVE:
                # From now on it is planted no more.
                farmer = (
                    await self.farmers.set_status(
                        farmer_id, FarmerStatus.LEAVING, FarmerStatus.ACTIVE
                    )
                    or farmer
                )
                log.info("farmer %s is leaving", farmer_id)
            leaving = pool_pb2.LeavePoolResponse(farmer=convert.farmer_pb(farmer))
            if not farmer.is_funded:
                # Never funded: nothing on chain to pay out or merge.
                departed = await self.farmers.set_status(
                    farmer_id, FarmerStatus.DEPARTED, FarmerStatus.LEAVING
                )
                return pool_pb2.LeavePoolResponse(farmer=convert.farmer_pb(departed or farmer))
            current = await self.view.current_index()
            waiting = await self.payouts.open_pails(farmer_id, current)
            if waiting:
                leaving.pending_harvests = waiting
                return leaving
            if not await self._drive_pending(farmer):
                return leaving
            farmer = await self._farmer(farmer_id)
            if farmer.current_balance > 0:
                payout = await self.payouts.create(
                    uuid.uuid4(), farmer_id, farmer.payout_address, farmer.current_balance, None
                )
                done = await self.drive(payout, farmer.custodial_public_key)
                if done.status == PayoutStatus.PENDING:
                    return leaving
                if done.status == PayoutStatus.FAILED:
                    raise FailedPrecondition(
                        f"paying out farmer {farmer_id}'s balance failed"
                        f" ({done.error_message}); its balance is restored, it stays leaving"
                    )
            closed = await wallet_call(
                self.wallet.stub.CloseWallet(
                    wallet_pb2.CloseWalletRequest(
                        idempotency_key=close_key,
                        public_key=farmer.custodial_public_key,
                        destination_address=farmer.payout_address,
                    ),
                    timeout=_WALLET_TIMEOUT_SECONDS,
                ),
                "close the custodial wallet",
            )
            out = closed.outcome
            leaving.close_transaction.CopyFrom(_tx_ref(out))
            if out.status == common_pb2.TX_STATUS_SUCCESS:
                departed = await self.farmers.set_status(
                    farmer_id, FarmerStatus.DEPARTED, FarmerStatus.LEAVING
                )
                log.info(
                    "farmer %s departed; its account merged into its payout address", farmer_id
                )
                leaving.farmer.CopyFrom(
                    convert.farmer_pb(departed or await self._farmer(farmer_id))
                )
            elif out.status != common_pb2.TX_STATUS_PENDING:
                raise FailedPrecondition(
                    f"closing farmer {farmer_id}'s wallet failed: {out.failure.message}"
                )
            return leaving

    async def _departed(self, farmer: FarmerRow, close_key: str) -> pool_pb2.LeavePoolResponse:
        response = pool_pb2.LeavePoolResponse(farmer=convert.farmer_pb(farmer))
        if farmer.is_funded:
            got = await wallet_call(
                self.wallet.stub.GetTransaction(
                    wallet_pb2.GetTransactionRequest(idempotency_key=close_key)
                ),
                "read the closing transaction",
            )
            response.close_transaction.CopyFrom(_tx_ref(got.outcome))
        return response


def _tx_ref(out: wallet_pb2.TransactionOutcome) -> common_pb2.TransactionRef:
    return common_pb2.TransactionRef(tx_hash=out.tx_hash, status=out.status, ledger=out.ledger)
