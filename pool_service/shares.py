"""Shares: the pool fee and the pooler's share of each harvested reward, swept on chain.

A harvest mints the whole reward into the farmer's custodial account and the ledger
credits it (reward + stake, by trigger). Each pass of the shares loop then, for every
harvest of the pool's own recorded since shares began (migration 0020,
`shares_since()`):

1. records a sweep per part (the fee into the pool's fee account, the share into the
   share account of the pooler whose farmer it is: reward * basis points / 10000,
   `kalepool.amounts.share_of`) and the farmer's `pool_fee` / `pooler_share` debit, in one
   database transaction (`pool_service.books.sweeps`);
2. asks the wallet's `Sweep` under `fee:<harvest hash>` / `share:<harvest hash>`, which
   moves the part from the farmer's account to the account's wallet (asking again
   replays);
3. records what became certain: a success credits the account; a failure (on chain, or
   refused before signing) reverses the farmer's debit; an unknown fate stays pending
   and is driven again next pass.

The accounts' wallets are made through the wallet like a farmer's (`CreateWallet` with a
purpose), when the first part for them is due: the fee wallet pays the operator's
address (`KALE_POOL_POOL_FEE_ADDRESS`, which the wallet checks against its own
setting), a pooler's share wallet the pooler's registered key. A wallet must exist on
chain (funded with XLM by the operator) before anything is swept into it (its parts
wait until then); the pass adds its KALE trustline.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from uuid import UUID

import grpc

from kalepool import wire
from kalepool.amounts import share_of
from kalepool.chain import Fault
from kalepool.grpc_server import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kalepool.request_checks import check_idempotency_key, check_uuid
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2, wallet_pb2
from pool_service import convert
from pool_service.books.enums import AccountKind, PayoutStatus, SweepPart
from pool_service.books.sweeps import (
    AccountPayoutRow,
    AccountPayoutStore,
    AccountRow,
    CompensationPaymentRow,
    CompensationPaymentStore,
    DueSweep,
    SweepStore,
)
from pool_service.locks import KeyedLocks
from pool_service.wallet import WalletClient, nothing_signed

log = logging.getLogger("pool_service.shares")

# The owner id of the pool's fee wallet (a pooler's share wallet is owned by its pooler id).
FEE_OWNER = uuid.UUID("6b1f0e7c-2d4a-4c5e-9f3b-6665652d6f77")
# Account payout ids derived from (account, idempotency key): the same key, the same payout.
_PAYOUT_ID_NAMESPACE = uuid.UUID("2f0e6a4b-8d55-4b8e-9a41-7368617265ff")

_WALLET_TIMEOUT_SECONDS = 30.0


class Shares:
    """The shares loop: accounts made, sweeps recorded, driven and settled."""

    def __init__(
        self,
        store: SweepStore,
        payouts: AccountPayoutStore,
        compensations: CompensationPaymentStore,
        wallet: WalletClient,
        settings: Settings,
    ) -> None:
        self.store = store
        self.payouts = payouts
        self.compensations = compensations
        self.wallet = wallet
        self.settings = settings
        # One payout decision per account at a time in this process; across replicas the
        # account's row lock and its non-negative balance keep it whole.
        self.locks: KeyedLocks[UUID] = KeyedLocks()
        self._ready: set[UUID] = set()  # accounts whose wallet exists and trusts KALE
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _account(self, owner: UUID, kind: AccountKind, payout: str) -> AccountRow | None:
        """The account of this owner, its wallet made first when there is none."""
        existing = (
            await self.store.fee_account()
            if kind is AccountKind.POOL_FEE
            else await self.store.share_account(owner)
        )
        if existing is not None:
            return existing
        purpose = (
            wallet_pb2.WALLET_PURPOSE_POOL_FEE
            if kind is AccountKind.POOL_FEE
            else wallet_pb2.WALLET_PURPOSE_POOLER_SHARE
        )
        try:
            made = await self.wallet.stub.CreateWallet(
                wallet_pb2.CreateWalletRequest(
                    owner_id=str(owner), payout_address=payout, purpose=purpose
                ),
                timeout=_WALLET_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            self._warn_once(
                f"create:{owner}",
                "no %s wallet for %s: the wallet refused (%s: %s)",
                kind,
                owner,
                exc.code().name,
                exc.details(),
            )
            return None
        log.info("%s account %s: wallet %s, pays %s", kind, owner, made.wallet.public_key, payout)
        return await self.store.add_account(owner, kind, made.wallet.public_key, payout)

    async def _is_ready(self, account: AccountRow) -> bool:
        """Whether the account's wallet exists on chain and trusts KALE (adding the
        trustline when it exists without one)."""
        if account.id in self._ready:
            return True
        address = account.custodial_public_key
        try:
            got = await self.wallet.stub.GetWallet(
                wallet_pb2.GetWalletRequest(public_key=address), timeout=_WALLET_TIMEOUT_SECONDS
            )
            if not got.account.exists:
                self._warn_once(
                    f"fund:{address}",
                    "%s wallet %s does not exist on chain: fund it with XLM; nothing is"
                    " swept into it until then",
                    account.kind,
                    address,
                )
                return False
            if not got.account.kale_trustline:
                trust = await self.wallet.stub.EnsureTrustline(
                    wallet_pb2.EnsureTrustlineRequest(
                        idempotency_key=f"trustline:{address}", public_key=address
                    ),
                    timeout=_WALLET_TIMEOUT_SECONDS,
                )
                if (
                    not trust.already_present
                    and trust.outcome.status != common_pb2.TX_STATUS_SUCCESS
                ):
                    return False
        except grpc.aio.AioRpcError as exc:
            log.warning("%s wallet %s not ready (%s)", account.kind, address, exc.code().name)
            return False
        self._ready.add(account.id)
        return True

    async def _receiver(
        self, part: SweepPart, pooler_id: UUID, pooler_key: str
    ) -> AccountRow | None:
        """The account a part goes to, when it may receive now: the fee account, or the
        share account of the harvest's pooler; made when the first part for it is due."""
        if part is SweepPart.FEE:
            account = await self._account(
                FEE_OWNER, AccountKind.POOL_FEE, self.settings.pool_fee_address
            )
        else:
            account = await self._account(pooler_id, AccountKind.POOLER_SHARE, pooler_key)
        if account is None or not await self._is_ready(account):
            return None
        return account

    def _bps(self, part: SweepPart) -> int:
        return (
            self.settings.pool_fee_bps if part is SweepPart.FEE else self.settings.pooler_share_bps
        )

    async def run_once(self) -> int:
        """One pass: record the sweeps due, then drive every pending one; how many
        settled."""
        parts = [p for p in SweepPart if self._bps(p) > 0]
        if SweepPart.FEE in parts and not self.settings.pool_fee_address:
            self._warn_once(
                "fee-address", "KALE_POOL_POOL_FEE_ADDRESS is not set: no pool fee is taken"
            )
            parts.remove(SweepPart.FEE)
        # Who is owed, then only the parts whose account can receive now: a wallet not
        # funded yet holds back its own parts, never the others'.
        accounts: dict[tuple[SweepPart, UUID], UUID] = {}
        for r in await self.store.receivers(parts) if parts else []:
            which = (r.part, FEE_OWNER if r.part is SweepPart.FEE else r.pooler_id)
            if which not in accounts:
                account = await self._receiver(r.part, r.pooler_id, r.pooler_key)
                if account is not None:
                    accounts[which] = account.id
        fee_account = accounts.get((SweepPart.FEE, FEE_OWNER))
        poolers = [owner for (part, owner) in accounts if part is SweepPart.SHARE]
        if fee_account is not None or poolers:
            for due in await self.store.unswept(fee_account is not None, poolers):
                amount = share_of(due.reward_amount, self._bps(due.part))
                if amount <= 0:
                    continue  # a reward too small to take a stroop of: nothing owed
                owner = FEE_OWNER if due.part is SweepPart.FEE else due.pooler_id
                created = await self.store.create(due, accounts[(due.part, owner)], amount)
                if created is None:
                    log.debug(
                        "%s of harvest %s not swept yet: farmer %s cannot cover %d stroops",
                        due.part,
                        due.harvest_id,
                        due.farmer_id,
                        amount,
                    )
        settled = 0
        for sweep in await self.store.pending():
            settled += await self.drive(sweep)
        for payout in await self.payouts.pending():
            async with self.locks.hold(payout.account_id):
                done = await self.drive_payout(payout)
            settled += done.status != PayoutStatus.PENDING
        settled += await self.compensate()
        return settled

    # --- compensations paid by whoever owes them ------------------------------------------

    async def compensate(self) -> int:
        """Pay each unpaid compensation from the account of whoever owes it (the fee
        account for the pool's faults, the pooler's share account for its own), once that
        account can cover it; drive the payments under way. How many settled."""
        payers: dict[tuple[str, UUID], AccountRow | None] = {}
        for due in await self.compensations.unpaid():
            which = (due.owed_by, FEE_OWNER if due.owed_by == "pool" else due.pooler_id)
            if which not in payers:
                account = (
                    await self.store.fee_account()
                    if due.owed_by == "pool"
                    else await self.store.share_account(due.pooler_id)
                )
                ready = account is not None and await self._is_ready(account)
                payers[which] = account if ready else None
            payer = payers[which]
            if payer is None:
                continue  # nobody to pay it from yet: it stays owed
            async with self.locks.hold(payer.id):
                if await self.compensations.create(due, payer.id) is None:
                    log.debug(
                        "compensation %s stays owed: %s account cannot cover %d stroops",
                        due.compensation_id,
                        due.owed_by,
                        due.amount,
                    )
        settled = 0
        for payment in await self.compensations.pending():
            async with self.locks.hold(payment.account_id):
                settled += await self.drive_compensation(payment)
        return settled

    async def drive_compensation(self, payment: CompensationPaymentRow) -> bool:
        """Ask the wallet for the payment's transfer (a replay when it was made) and
        record what became certain; whether it settled."""
        try:
            response = await self.wallet.stub.Transfer(
                wallet_pb2.TransferRequest(
                    idempotency_key=payment.wallet_key,
                    source_address=payment.source,
                    destination_address=payment.destination,
                    amount_stroops=payment.amount,
                ),
                timeout=_WALLET_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if nothing_signed(exc, payment.wallet_key):
                log.warning(
                    "compensation payment %s refused by the wallet: %s", payment.id, exc.details()
                )
                await self.compensations.failed(
                    payment.id, None, exc.code().name, exc.details() or exc.code().name
                )
                return True
            log.warning("compensation payment %s still pending (%s)", payment.id, exc.code().name)
            return False
        out = response.outcome
        if out.status == common_pb2.TX_STATUS_SUCCESS:
            await self.compensations.succeeded(payment.id, out.tx_hash, out.ledger)
            log.info(
                "compensation %s paid: %d stroops to farmer %s",
                payment.compensation_id,
                payment.amount,
                payment.farmer_id,
            )
            return True
        if out.status in (
            common_pb2.TX_STATUS_FAILED,
            common_pb2.TX_STATUS_EXPIRED,
            common_pb2.TX_STATUS_REJECTED,
        ):
            await self.compensations.failed(
                payment.id,
                out.tx_hash or None,
                wire.failure_label(out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED),
                out.failure.message or common_pb2.TxStatus.Name(out.status),
            )
            return True
        await self.compensations.still_pending(payment.id, out.tx_hash or None)
        return False

    async def drive(self, sweep: DueSweep) -> bool:
        """Ask the wallet for the sweep (a replay when it was made) and record what became
        certain; whether it settled."""
        request = wallet_pb2.SweepRequest(
            idempotency_key=sweep.wallet_key,
            source_address=sweep.source,
            destination_address=sweep.destination,
            harvest_tx_hash=sweep.harvest_tx_hash,
            amount_stroops=sweep.amount,
        )
        try:
            response = await self.wallet.stub.Sweep(request, timeout=_WALLET_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if nothing_signed(exc, sweep.wallet_key):
                log.warning("sweep %s refused by the wallet: %s", sweep.wallet_key, exc.details())
                await self.store.failed(
                    sweep.id, None, exc.code().name, exc.details() or exc.code().name
                )
                return True
            log.warning("sweep %s still pending (%s)", sweep.wallet_key, exc.code().name)
            return False
        out = response.outcome
        if out.status == common_pb2.TX_STATUS_SUCCESS:
            await self.store.succeeded(sweep.id, out.tx_hash, out.ledger)
            return True
        if out.status in (
            common_pb2.TX_STATUS_FAILED,
            common_pb2.TX_STATUS_EXPIRED,
            common_pb2.TX_STATUS_REJECTED,
        ):
            await self.store.failed(
                sweep.id,
                out.tx_hash or None,
                wire.failure_label(out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED),
                out.failure.message or common_pb2.TxStatus.Name(out.status),
            )
            return True
        await self.store.still_pending(sweep.id, out.tx_hash or None)
        return False

    # --- a pooler's share paid to its registered key ------------------------------------

    async def request_pooler_payout(
        self, request: pool_pb2.RequestPoolerPayoutRequest
    ) -> pool_pb2.RequestPoolerPayoutResponse:
        pooler_id = check_uuid("pooler_id", request.pooler_id)
        account = await self.store.share_account(pooler_id)
        if account is None:
            if not await self.store.pooler_exists(pooler_id):
                raise NotFound(f"no pooler {pooler_id}")
            raise FailedPrecondition(
                f"pooler {pooler_id} has no share account yet: nothing was shared with it"
            )
        row = await self._account_payout(account, request.amount_stroops, request.idempotency_key)
        return pool_pb2.RequestPoolerPayoutResponse(**_payout_fields(row))

    async def request_fee_payout(
        self, request: pool_pb2.RequestFeePayoutRequest
    ) -> pool_pb2.RequestFeePayoutResponse:
        account = await self.store.fee_account()
        if account is None:
            raise FailedPrecondition("the pool has no fee account yet: no fee was taken")
        row = await self._account_payout(account, request.amount_stroops, request.idempotency_key)
        return pool_pb2.RequestFeePayoutResponse(**_payout_fields(row))

    async def _account_payout(
        self, account: AccountRow, amount: int, idempotency_key: str
    ) -> AccountPayoutRow:
        """The payout of `amount` (0: the balance) from the account to the address its
        wallet pays, made once per key and driven until certain or pending."""
        if amount < 0:
            raise InvalidArgument(
                f"amount_stroops must be 0 (the whole balance) or more, got {amount}"
            )
        key = check_idempotency_key(idempotency_key) if idempotency_key else None
        payout_id = uuid.uuid5(_PAYOUT_ID_NAMESPACE, f"{account.id}:{key}") if key else uuid.uuid4()
        async with self.locks.hold(account.id):
            payout = await self.payouts.payout(payout_id)
            if payout is None:
                payout = await self.payouts.create(payout_id, account, amount, key)
            elif amount not in (0, payout.amount):
                raise AlreadyExists(
                    f"idempotency key already made payout {payout.id} of {payout.amount} stroops"
                )
            if payout.status == PayoutStatus.PENDING:
                payout = await self.drive_payout(payout)
        return payout

    async def drive_payout(self, payout: AccountPayoutRow) -> AccountPayoutRow:
        """Ask the wallet for the payout's transfer from the share wallet (a replay when
        it was made) and record what became certain."""
        account = await self.store.account(payout.account_id)
        assert account is not None  # a payout references its account
        try:
            response = await self.wallet.stub.Transfer(
                wallet_pb2.TransferRequest(
                    idempotency_key=payout.wallet_key,
                    source_address=account.custodial_public_key,
                    destination_address=payout.destination,
                    amount_stroops=payout.amount,
                ),
                timeout=_WALLET_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if nothing_signed(exc, payout.wallet_key):
                await self.payouts.failed(
                    payout.id, None, exc.code().name, exc.details() or exc.code().name
                )
            else:
                log.warning("account payout %s still pending (%s)", payout.id, exc.code().name)
        else:
            out = response.outcome
            if out.status == common_pb2.TX_STATUS_SUCCESS:
                await self.payouts.succeeded(payout.id, out.tx_hash, out.ledger)
            elif out.status in (
                common_pb2.TX_STATUS_FAILED,
                common_pb2.TX_STATUS_EXPIRED,
                common_pb2.TX_STATUS_REJECTED,
            ):
                await self.payouts.failed(
                    payout.id,
                    out.tx_hash or None,
                    wire.failure_label(out.failure.code or common_pb2.FAILURE_CODE_TX_FAILED),
                    out.failure.message or common_pb2.TxStatus.Name(out.status),
                )
            else:
                await self.payouts.still_pending(payout.id, out.tx_hash or None)
        settled = await self.payouts.payout(payout.id)
        assert settled is not None
        return settled


def _payout_fields(row: AccountPayoutRow) -> dict[str, Any]:
    """An account payout as the fields its RPC's response carries (the pooler's and the
    fee's responses carry the same)."""
    return {
        "payout_id": str(row.id),
        "destination_address": row.destination,
        "amount_stroops": row.amount,
        "transaction": convert.payout_tx_ref(row.tx_hash, row.status, row.ledger),
        "failure": convert.failure_pb(row.status, Fault.POOL, row.error_code, row.error_message),
        "requested_at": wire.timestamp(row.requested_at),
    }
