"""The WalletService servicer: custodial wallets and every transaction made from them.

Each transaction follows one path (`_transact`): look the idempotency key up first
(same parameters: replay the stored outcome; other parameters: ALREADY_EXISTS), else
build, sign with the custodial key, store the signed envelope (the record hook of
`kalepool.chain.submit`) and only then send, updating the row at each step and settling
it with the chain's outcome. Calls for one source account are serialized by a lock per
account (an account can have one pending transaction); different accounts run in
parallel.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stellar_sdk import Account, StrKey
from stellar_sdk import xdr as stellar_xdr

from kalepool import wire
from kalepool.bounds import show
from kalepool.chain import (
    AccountNotFoundError,
    AccountState,
    ChainClient,
    ChainDataError,
    ChainError,
    ChainUnavailableError,
    ContractError,
    Fault,
    PlantableReads,
    SignedTx,
    SimulationError,
    SubmitEvent,
    SubmitStep,
    TxKind,
    TxOutcome,
    UnsignedTx,
    attribute_fault,
    build_close,
    build_harvest,
    build_payment,
    build_plant,
    build_trustline,
    pail_changes_of,
    read_account,
    read_pail_changes,
    read_pails,
    reconcile,
    sign,
    submit,
)
from kalepool.grpc_server import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    caller_name,
)
from kalepool.request_checks import (
    check_account,
    check_destination,
    check_idempotency_key,
    check_uuid,
)
from kalepool.v1 import common_pb2, wallet_pb2, wallet_pb2_grpc
from kalepool.webhook import Webhook
from wallet_service.keystore import Keyring, KeyringSource, generate_wallet
from wallet_service.policy import SIGNATURE_BYTES, Part, PayoutLimits, PayoutPolicy
from wallet_service.store import (
    FeeWalletExists,
    Settlement,
    Store,
    Taken,
    TxRow,
    WalletPurpose,
    WalletRow,
)

log = logging.getLogger("wallet_service")

I64_MAX = 2**63 - 1
BASE_RESERVE_STROOPS = 5_000_000  # the network's base reserve (0.5 XLM)

# --- validation: bad input is refused before anything is read or written --------------


def digest(*parts: object) -> bytes:
    """What a request asks for, so a reused key with other parameters can be refused."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


@dataclass
class Result:
    """A transaction's stored (or pre-signing) outcome, ready for a response."""

    outcome: wallet_pb2.TransactionOutcome
    row: TxRow | None
    # The chain's outcome when this call followed the transaction to its ledger (its meta
    # says what it changed); None for a replay or a refusal.
    chain: TxOutcome | None = None


# The wallet API's kind of each transaction the wallet makes (all but `work`, the
# pooler's). The wallet's own message, so mapped here: `kalepool.wire` is shared with the
# pooler agent, which must not reach the wallet's API.
_TX_KIND: dict[TxKind, wallet_pb2.TxKind.ValueType] = {
    TxKind.PLANT: wallet_pb2.TX_KIND_PLANT,
    TxKind.HARVEST: wallet_pb2.TX_KIND_HARVEST,
    TxKind.TRUSTLINE: wallet_pb2.TX_KIND_TRUSTLINE,
    TxKind.TRANSFER: wallet_pb2.TX_KIND_TRANSFER,
    TxKind.CLOSE: wallet_pb2.TX_KIND_CLOSE,
}


_PURPOSE_PB: dict[WalletPurpose, wallet_pb2.WalletPurpose.ValueType] = {
    WalletPurpose.FARMER: wallet_pb2.WALLET_PURPOSE_FARMER,
    WalletPurpose.POOL_FEE: wallet_pb2.WALLET_PURPOSE_POOL_FEE,
    WalletPurpose.POOLER_SHARE: wallet_pb2.WALLET_PURPOSE_POOLER_SHARE,
}
# Unspecified is a farmer's wallet (every caller from before purposes existed).
_PURPOSE_OF_PB = {pb: purpose for purpose, pb in _PURPOSE_PB.items()} | {
    wallet_pb2.WALLET_PURPOSE_UNSPECIFIED: WalletPurpose.FARMER
}


def tx_kind(kind: TxKind) -> wallet_pb2.TxKind.ValueType:
    """The wallet API's TxKind of a transaction kind."""
    return _TX_KIND[kind]


def outcome_of_row(row: TxRow, *, replayed: bool) -> wallet_pb2.TransactionOutcome:
    """The API's TransactionOutcome of a stored transaction."""
    status = wire.tx_status(row.status, rejected=row.rejected)
    out = wallet_pb2.TransactionOutcome(
        idempotency_key=row.idempotency_key,
        kind=tx_kind(row.kind),
        tx_hash=row.tx_hash,
        status=status,
        ledger=row.ledger or 0,
        source_address=row.source_account,
        sequence=row.sequence_number,
        fee_charged_stroops=row.fee_charged or 0,
        replayed=replayed,
        submitted_at=wire.timestamp(row.created_at),
        valid_until=wire.epoch(row.max_time),
        completed_at=wire.timestamp(row.settled_at),
    )
    if row.return_value is not None and row.status == "success":
        out.contract_return_value = int(Decimal(row.return_value))
    if status not in (common_pb2.TX_STATUS_PENDING, common_pb2.TX_STATUS_SUCCESS):
        out.failure.CopyFrom(
            wire.failure(
                wire.chain_failure_code(row.error_code, expired=row.status == "expired"),
                row.fault or Fault.CHAIN,
                row.error_message or row.status,
                contract_error=row.contract_error or 0,
            )
        )
    return out


def refused(
    key: str,
    kind: TxKind,
    source: str,
    code: common_pb2.FailureCode.ValueType,
    fault: Fault,
    message: str,
    contract_error: int = 0,
) -> wallet_pb2.TransactionOutcome:
    """A REJECTED outcome for a transaction refused before anything was signed or stored."""
    return wallet_pb2.TransactionOutcome(
        idempotency_key=key,
        kind=tx_kind(kind),
        status=common_pb2.TX_STATUS_REJECTED,
        source_address=source,
        failure=wire.failure(code, fault, message, contract_error=contract_error),
    )


def settlement(kind: TxKind, outcome: TxOutcome) -> Settlement | None:
    """The row's final outcome, or None while the chain's answer is unknown."""
    status = outcome.db_status
    if status is None:
        return None
    err = outcome.contract_error
    value = outcome.value
    # The farmer's own account pays every transaction the wallet service makes.
    fault = attribute_fault(kind, outcome, payer=Fault.FARMER)
    return Settlement(
        status=status,
        ledger=outcome.ledger,
        error_code=outcome.error_code,
        error_message=None if outcome.ok else outcome.describe(),
        result_xdr=outcome.result_xdr,
        fee_charged=outcome.fee_charged,
        return_value=value,
        contract_error=None if err is None else err.number,
        fault=fault.value,
        rejected=outcome.status.value == "rejected",
    )


def account_pb(address: str, read: tuple[AccountState | None, int]) -> common_pb2.AccountState:
    """An account as read on chain (`read`: the state, None when it does not exist, and
    the ledger it was read at)."""
    state, ledger = read
    if state is None:
        return common_pb2.AccountState(address=address, exists=False, observed_ledger=ledger)
    reserve = (2 + state.sub_entries) * BASE_RESERVE_STROOPS
    return common_pb2.AccountState(
        address=address,
        exists=True,
        xlm_balance_stroops=state.xlm_balance,
        xlm_available_stroops=max(0, state.xlm_balance - reserve),
        kale_trustline=state.kale is not None,
        kale_balance_stroops=state.kale.balance if state.kale else 0,
        observed_ledger=state.ledger,
    )


Build = Callable[[], Awaitable[UnsignedTx]]

# Outcomes of plants answered when sent, kept for the Plant that asks again (bounded: a
# caller that never asks again leaves its entry until newer ones push it out).
_FOLLOWED_KEPT = 20_000


class WalletService(wallet_pb2_grpc.WalletServiceServicer):
    """kalepool.v1.WalletService over a Store, a Keyring and a ChainClient."""

    def __init__(
        self,
        store: Store,
        keyring: Keyring | KeyringSource,
        chain: ChainClient,
        limits: PayoutLimits | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self.store = store
        # A KeyringSource re-reads the master key file when it changes, so a key added by
        # `kale-pool wallet rotate-key` opens (and seals) without a restart.
        self._keyring = keyring
        self.chain = chain
        self.policy = PayoutPolicy(store, limits or PayoutLimits(), webhook)
        # Which block can be planted now, read once for every plant checked meanwhile.
        self.plantable = PlantableReads.of(chain)
        self._locks: dict[str, asyncio.Lock] = {}
        # Plants answered when sent and still followed to their ledger here.
        self._following: set[asyncio.Task[Result]] = set()
        # Outcomes those followed plants settled with, by key, until the next Plant with
        # the key takes it (its pail is then read from the meta, not asked for again).
        self._followed: dict[str, TxOutcome] = {}

    @property
    def keyring(self) -> Keyring:
        """The master keys held now."""
        held = self._keyring
        return held if isinstance(held, Keyring) else held()

    def _lock(self, account: str) -> asyncio.Lock:
        # One in flight per source account: a second envelope would reuse its sequence.
        return self._locks.setdefault(account, asyncio.Lock())

    async def _wallet(self, public_key: str) -> WalletRow:
        wallet = await self.store.wallet(public_key)
        if wallet is None:
            raise NotFound(f"the wallet service holds no wallet {public_key}")
        return wallet

    # --- the one path of every transaction ----------------------------------------------

    async def _transact(
        self,
        wallet: WalletRow,
        key: str,
        kind: TxKind,
        request_digest: bytes,
        build: Build,
        *,
        block_index: int | None = None,
        amount: int | None = None,
        before_build: Callable[[], Awaitable[Result | None]] | None = None,
        sweep_of: Callable[[], uuid.UUID] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Result:
        source = wallet.public_key
        async with self._lock(source):
            row = await self.store.tx_by_key(key)
            if row is not None and not row.rejected:
                return await self._replay(row, key, request_digest)
            if wallet.closed_at is not None:
                raise FailedPrecondition(f"wallet {source} is closed")
            if before_build is not None:
                early = await before_build()
                if early is not None:
                    return early
            try:
                unsigned = await build()
            except AccountNotFoundError:
                raise FailedPrecondition(
                    f"account {source} does not exist on chain: fund it with XLM first"
                ) from None
            except ContractError as exc:
                fault = attribute_fault(kind, exc, payer=Fault.FARMER)
                code = wire.chain_failure_code(exc.code)
                return Result(refused(key, kind, source, code, fault, str(exc), exc.number), None)
            except SimulationError as exc:
                fault = attribute_fault(kind, exc, payer=Fault.FARMER)
                return Result(
                    refused(key, kind, source, common_pb2.FAILURE_CODE_TX_FAILED, fault, str(exc)),
                    None,
                )
            except ChainUnavailableError as exc:
                raise Unavailable(f"the chain cannot be reached: {exc}") from None
            with self.keyring.signer(wallet.sealed, source) as keypair:
                signed = sign(unsigned, keypair)
            try:
                row, followed = await self._send(
                    key,
                    signed,
                    request_digest,
                    block_index,
                    amount,
                    sweep_of() if sweep_of is not None else None,
                    on_sent,
                )
            except Taken:
                # Another process (a second replica, or a second call racing on this key)
                # stored its envelope between our look-up and our insert; ours was never
                # sent. The key's transaction is the winner's: replay it.
                row = await self.store.tx_by_key(key)
                if row is None or row.rejected:
                    raise Unavailable(
                        f"another transaction of account {source} was signed at the same "
                        "time; nothing was sent: retry"
                    ) from None
                return await self._replay(row, key, request_digest)
            return Result(outcome_of_row(row, replayed=False), row, followed)

    async def _replay(self, row: TxRow, key: str, request_digest: bytes) -> Result:
        """The stored transaction of a key used before, reconciled with the chain first
        while unsettled; the same key with other parameters is ALREADY_EXISTS."""
        if row.request_digest != request_digest:
            raise AlreadyExists(
                f"idempotency key {show(key)} was used for another request "
                f"({row.kind} from {row.source_account})"
            )
        if not row.settled:
            row = await self._drive(row, None)
        return Result(outcome_of_row(row, replayed=True), row)

    async def _send(
        self,
        key: str,
        signed: SignedTx,
        request_digest: bytes,
        block_index: int | None,
        amount: int | None,
        sweep_of: uuid.UUID | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[TxRow, TxOutcome | None]:
        """Record, send and follow `signed`: its stored row, and the chain's outcome when
        it was followed to the end (None when left pending)."""
        stored: list[uuid.UUID] = []

        async def record(tx: SignedTx) -> None:
            stored.append(
                await self.store.insert_tx(
                    key,
                    tx,
                    request_digest,
                    block_index=block_index,
                    amount=amount,
                    sweep_of=sweep_of,
                )
            )

        try:
            outcome = await submit(
                self.chain, signed, record=record, observe=self._observer(stored, on_sent)
            )
        except ChainUnavailableError as exc:
            if not stored:
                raise Unavailable(f"the chain cannot be reached: {exc}") from None
            log.warning("tx %s left pending: %s", signed.hash, exc)
            return await self.store.tx(stored[0]), None
        tx_id = stored[0]
        done = settlement(signed.kind, outcome)
        if done is not None:
            await self.store.settle(tx_id, done)
        log.info("tx %s %s %s", signed.kind.value, signed.hash, outcome.describe())
        return await self.store.tx(tx_id), outcome

    def _observer(
        self, stored: list[uuid.UUID], on_sent: Callable[[], None] | None = None
    ) -> Callable[[SubmitEvent], Awaitable[None]]:
        async def observe(event: SubmitEvent) -> None:
            if not stored:
                return
            if event.step in (SubmitStep.SENT, SubmitStep.DUPLICATE):
                await self.store.mark(stored[0], "pending")
                if on_sent is not None:
                    on_sent()
            elif event.step is SubmitStep.SEND_LOST:
                await self.store.mark(stored[0], "submitted")

        return observe

    async def _drive(self, row: TxRow, _: None) -> TxRow:
        """Reconcile a stored, unsettled transaction by hash (resending the same envelope)."""
        passphrase = self.chain.config.network_passphrase
        signed = SignedTx.from_envelope(row.envelope_xdr, passphrase)
        try:
            outcome = await reconcile(self.chain, signed, observe=self._observer([row.id]))
        except ChainUnavailableError as exc:
            log.warning("tx %s still pending: %s", row.tx_hash, exc)
            return row
        done = settlement(signed.kind, outcome)
        if done is not None:
            await self.store.settle(row.id, done)
        return await self.store.tx(row.id)

    async def reconcile_all(self) -> int:
        """Settle every stored transaction still unsettled (start-up); how many were settled."""
        settled = 0
        rows = await self.store.unsettled()

        async def one(row: TxRow) -> None:
            nonlocal settled
            async with self._lock(row.source_account):
                fresh = await self.store.tx(row.id)
                if fresh.settled:
                    return
                after = await self._drive(fresh, None)
                if after.settled:
                    settled += 1
                log.info("reconciled tx %s: %s", after.tx_hash, after.status)

        await asyncio.gather(*(one(r) for r in rows))
        return settled

    # --- RPCs ------------------------------------------------------------------------------

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Any
    ) -> wallet_pb2.CreateWalletResponse:
        owner = check_uuid("owner_id", request.owner_id)
        payout = check_account("payout_address", request.payout_address)
        purpose = _PURPOSE_OF_PB.get(request.purpose)
        if purpose is None:
            raise InvalidArgument(f"purpose {request.purpose} is not a WalletPurpose")
        await self.policy.check_create(purpose, payout, caller=_caller(context))
        public_key, sealed = generate_wallet(self.keyring)
        try:
            row, created = await self.store.create_wallet(
                owner, public_key, sealed, payout, purpose
            )
        except FeeWalletExists:
            raise AlreadyExists("the pool's fee wallet exists already, for another owner") from None
        if created:
            log.info(
                "created %s wallet %s for owner %s, payouts to %s",
                purpose,
                row.public_key,
                owner,
                payout,
            )
        elif row.purpose is not purpose:
            raise AlreadyExists(
                f"owner {owner} has a {row.purpose} wallet {row.public_key} already,"
                f" not a {purpose} one"
            )
        elif row.payout_address != payout:
            # Asking again never moves the payouts: only the farmer's signature does.
            raise AlreadyExists(
                f"owner {owner} has wallet {row.public_key} already, paying out to"
                f" {row.payout_address or 'no registered address'}, not {payout}"
            )
        return wallet_pb2.CreateWalletResponse(wallet=self._wallet_pb(row), created=created)

    def _wallet_pb(self, row: WalletRow) -> wallet_pb2.Wallet:
        return wallet_pb2.Wallet(
            public_key=row.public_key,
            owner_id=str(row.owner_id),
            key_version=row.key_version,
            created_at=wire.timestamp(row.created_at),
            closed=row.closed_at is not None,
            payout_address=row.payout_address or "",
            purpose=_PURPOSE_PB[row.purpose],
        )

    async def GetWallet(
        self, request: wallet_pb2.GetWalletRequest, context: Any
    ) -> wallet_pb2.GetWalletResponse:
        address = check_account("public_key", request.public_key)
        row = await self._wallet(address)
        return wallet_pb2.GetWalletResponse(
            wallet=self._wallet_pb(row), account=await self._account_state(address)
        )

    async def _account_state(self, address: str) -> common_pb2.AccountState:
        return account_pb(address, await self._read_account(address))

    async def _read_account(self, address: str) -> tuple[AccountState | None, int]:
        """The account on chain (None when it does not exist) and the ledger read at."""
        try:
            state = await read_account(self.chain, address)
            ledger = state.ledger if state else (await self.chain.latest_ledger()).sequence
        except ChainUnavailableError as exc:
            raise Unavailable(f"the chain cannot be reached: {exc}") from None
        return state, ledger

    async def EnsureTrustline(
        self, request: wallet_pb2.EnsureTrustlineRequest, context: Any
    ) -> wallet_pb2.EnsureTrustlineResponse:
        key = check_idempotency_key(request.idempotency_key)
        address = check_account("public_key", request.public_key)
        wallet = await self._wallet(address)
        # The account as read before building (inside the account's lock): whether the
        # trustline is there, and the sequence the transaction takes (no second read).
        before: AccountState | None = None

        async def check_present() -> Result | None:
            nonlocal before
            state, _ = await self._read_account(address)
            if state is None:
                raise FailedPrecondition(
                    f"account {address} does not exist on chain: fund it with XLM first"
                )
            before = state
            return Result(wallet_pb2.TransactionOutcome(), None) if state.kale else None

        def source() -> str | Account:
            return address if before is None else Account(address, before.sequence)

        result = await self._transact(
            wallet,
            key,
            TxKind.TRUSTLINE,
            digest("trustline", address),
            lambda: build_trustline(self.chain, source()),
            before_build=check_present,
        )
        if before is not None and before.kale is not None:
            return wallet_pb2.EnsureTrustlineResponse(
                already_present=True, account=account_pb(address, (before, before.ledger))
            )
        if result.outcome.status == common_pb2.TX_STATUS_SUCCESS or before is None:
            # Applied (the account changed), or a replay: nothing read yet.
            account = await self._account_state(address)
        else:
            account = account_pb(address, (before, before.ledger))
        return wallet_pb2.EnsureTrustlineResponse(outcome=result.outcome, account=account)

    async def Plant(
        self, request: wallet_pb2.PlantRequest, context: Any
    ) -> wallet_pb2.PlantResponse:
        key = check_idempotency_key(request.idempotency_key)
        farmer = check_account("farmer_address", request.farmer_address)
        stake = request.stake_stroops
        if stake < 0:
            raise InvalidArgument(f"stake_stroops must be 0 or more, got {stake}")
        block = request.block_index
        wallet = await self._wallet(farmer)

        checked_at: list[int] = []  # the chain's clock the block check read

        async def check_block() -> Result | None:
            try:
                plantable = await self.plantable.get(fresh=True)
            except ChainError as exc:
                raise Unavailable(f"the farm cannot be read: {exc}") from None
            target = plantable.target
            checked_at.append(plantable.close_time)
            if block == target:
                return None
            return Result(
                refused(
                    key,
                    TxKind.PLANT,
                    farmer,
                    common_pb2.FAILURE_CODE_BLOCK_MISMATCH,
                    Fault.NONE,
                    f"block {block} cannot be planted now: the block to plant is {target}",
                ),
                None,
            )

        sent = asyncio.Event()
        transact = self._transact(
            wallet,
            key,
            TxKind.PLANT,
            digest("plant", farmer, block, stake),
            # Time bounds from the clock the block check read just before (one read less).
            lambda: build_plant(self.chain, farmer, stake, now=checked_at[-1]),
            block_index=block,
            before_build=check_block,
            on_sent=sent.set,
        )
        if request.answer_when_sent:
            got = await self._until_sent(key, transact, sent)
            if isinstance(got, wallet_pb2.PlantResponse):
                return got
            result = got
        else:
            result = await transact
        followed = self._followed.pop(key, None) or result.chain
        response = wallet_pb2.PlantResponse(outcome=result.outcome)
        out = response.outcome
        if out.HasField("failure") and out.failure.code == common_pb2.FAILURE_CODE_PAIL_EXISTS:
            # An earlier attempt for this farmer already opened the pail: not a failure of
            # anyone (that attempt's outcome is the record).
            out.failure.fault = common_pb2.FAULT_PARTY_NONE
        row = result.row
        if out.status == common_pb2.TX_STATUS_SUCCESS and row is not None and row.ledger:
            found = await self._pail_of(farmer, block, row, followed)
            if found is not None:
                response.block_index, response.plant_ledger = found
        return response

    async def _until_sent(
        self, key: str, transact: Coroutine[Any, Any, Result], sent: asyncio.Event
    ) -> Result | wallet_pb2.PlantResponse:
        """Run a plant's `_transact` in a task of its own: its Result when it ends before
        anything is sent (a refusal, a replay), else, once the RPC server has accepted the
        transaction, its PENDING answer, while the task follows it to its ledger and
        settles its row (its outcome kept for the next Plant with the key)."""
        task = asyncio.create_task(transact)
        self._following.add(task)
        answered = False

        def done(t: asyncio.Task[Result]) -> None:
            self._following.discard(t)
            if t.cancelled():
                return
            if (exc := t.exception()) is not None:
                if answered:
                    log.warning("plant %s: following it failed: %s", show(key), exc)
                return
            chain = t.result().chain
            if answered and chain is not None:
                while len(self._followed) >= _FOLLOWED_KEPT:
                    self._followed.pop(next(iter(self._followed)))
                self._followed[key] = chain

        task.add_done_callback(done)
        waiting = asyncio.create_task(sent.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if task.done():
            return task.result()
        answered = True
        row = await self.store.tx_by_key(key)
        assert row is not None  # stored before it was sent
        return wallet_pb2.PlantResponse(outcome=outcome_of_row(row, replayed=False))

    async def _pail_of(
        self, farmer: str, block: int, row: TxRow, followed: TxOutcome | None = None
    ) -> tuple[int, int] | None:
        """(block, ledger) of the pail an applied plant opened. Its transaction's meta
        says it (the pail it created), even once the pail is gone (harvested, expired):
        the meta this call followed it to (`followed`), else read again by hash; only when
        the RPC no longer knows the transaction (or cannot read it) is the pail
        looked for on chain: the one of `block` or the next whose sequence is the plant's
        ledger (it may have applied after the block became due, opening the next). None
        when neither says."""
        try:
            changes = None
            if followed is not None and followed.hash == row.tx_hash:
                changes = pail_changes_of(followed, self.chain.config.farm_contract_id)
            if changes is None:
                changes = await read_pail_changes(self.chain, row.tx_hash)
        except ChainUnavailableError as exc:
            raise Unavailable(
                f"the plant applied in ledger {row.ledger} but its pail cannot be read: {exc}"
            ) from None
        except ChainDataError as exc:
            log.warning(
                "plant %s: its meta cannot be read (%s); looking at the pails", row.tx_hash, exc
            )
            changes = None
        if changes is not None:
            opened = changes.created_for(farmer)
            if len(opened) == 1:
                return opened[0].index, opened[0].sequence
            log.warning(
                "plant %s: its meta shows %d pails opened for %s", row.tx_hash, len(opened), farmer
            )
        candidates = [(farmer, block), (farmer, block + 1)]
        try:
            pails = await read_pails(self.chain, candidates)
        except ChainError as exc:
            raise Unavailable(
                f"the plant applied in ledger {row.ledger} but its pail cannot be read: {exc}"
            ) from None
        for where in candidates:
            pail = pails[where]
            if pail is not None and pail.sequence == row.ledger:
                return where[1], pail.sequence
        log.warning(
            "plant of %s applied in ledger %s: neither its meta nor the chain shows its pail now",
            farmer,
            row.ledger,
        )
        return None

    async def Harvest(
        self, request: wallet_pb2.HarvestRequest, context: Any
    ) -> wallet_pb2.HarvestResponse:
        key = check_idempotency_key(request.idempotency_key)
        farmer = check_account("farmer_address", request.farmer_address)
        block = request.block_index
        wallet = await self._wallet(farmer)
        result = await self._transact(
            wallet,
            key,
            TxKind.HARVEST,
            digest("harvest", farmer, block),
            lambda: build_harvest(self.chain, farmer, block, source=farmer),
            block_index=block,
        )
        reward = (
            result.outcome.contract_return_value
            if result.outcome.HasField("contract_return_value")
            else 0
        )
        return wallet_pb2.HarvestResponse(outcome=result.outcome, reward_stroops=reward)

    async def Transfer(
        self, request: wallet_pb2.TransferRequest, context: Any
    ) -> wallet_pb2.TransferResponse:
        key = check_idempotency_key(request.idempotency_key)
        source = check_account("source_address", request.source_address)
        destination = check_destination("destination_address", request.destination_address)
        amount = request.amount_stroops
        if amount <= 0:
            raise InvalidArgument(f"amount_stroops must be more than 0, got {amount}")
        if destination == source:
            raise InvalidArgument("destination_address must differ from source_address")
        wallet = await self._wallet(source)
        caller = _caller(context)

        async def allowed() -> None:
            # Read again under the account's lock: the address may have changed meanwhile.
            now = await self._wallet(source)
            await self.policy.check_transfer(now, destination, amount, key=key, caller=caller)

        result = await self._transact(
            wallet,
            key,
            TxKind.TRANSFER,
            # The digest's words are stored with every transaction: they stay as written.
            digest("payout", source, destination, amount),
            lambda: build_payment(self.chain, source, destination, amount),
            amount=amount,
            before_build=_refusing(allowed),
        )
        return wallet_pb2.TransferResponse(outcome=result.outcome)

    async def CloseWallet(
        self, request: wallet_pb2.CloseWalletRequest, context: Any
    ) -> wallet_pb2.CloseWalletResponse:
        key = check_idempotency_key(request.idempotency_key)
        address = check_account("public_key", request.public_key)
        destination = request.destination_address
        if not (
            StrKey.is_valid_ed25519_public_key(destination)
            or StrKey.is_valid_med25519_public_key(destination)
        ):
            raise InvalidArgument(
                f"destination_address must be a G… or M… account, got {show(destination)}"
            )
        if destination == address:
            raise InvalidArgument("destination_address must differ from the closed wallet")
        wallet = await self._wallet(address)
        caller = _caller(context)

        async def allowed() -> None:
            now = await self._wallet(address)  # under the account's lock, as for a transfer
            await self.policy.check_close(now, destination, key=key, caller=caller)

        result = await self._transact(
            wallet,
            key,
            TxKind.CLOSE,
            digest("merge", address, destination),  # stored words: they stay as written
            lambda: build_close(self.chain, address, destination),
            before_build=_refusing(allowed),
        )
        response = wallet_pb2.CloseWalletResponse(outcome=result.outcome)
        row = result.row
        if row is not None and row.status == "success":
            await self.store.close_wallet(address)
            sent, merged = _close_amounts(row)
            response.kale_sent_stroops = sent or 0
            response.xlm_merged_stroops = merged or 0
        return response

    async def GetTransaction(
        self, request: wallet_pb2.GetTransactionRequest, context: Any
    ) -> wallet_pb2.GetTransactionResponse:
        which = request.WhichOneof("key")
        if which == "idempotency_key":
            row = await self.store.tx_by_key(check_idempotency_key(request.idempotency_key))
            label = f"idempotency key {show(request.idempotency_key)}"
        elif which == "tx_hash":
            tx_hash = request.tx_hash
            if len(tx_hash) != 64 or any(c not in "0123456789abcdef" for c in tx_hash):
                raise InvalidArgument("tx_hash must be 64 lower-case hex characters")
            row = await self.store.tx_by_hash(tx_hash)
            label = f"hash {tx_hash}"
        else:
            raise InvalidArgument("give an idempotency_key or a tx_hash")
        if row is None or await self.store.wallet(row.source_account) is None:
            raise NotFound(f"no wallet transaction with {label}")
        if not row.settled:
            async with self._lock(row.source_account):
                row = await self._drive(await self.store.tx(row.id), None)
        return wallet_pb2.GetTransactionResponse(outcome=outcome_of_row(row, replayed=True))

    async def Sweep(
        self, request: wallet_pb2.SweepRequest, context: Any
    ) -> wallet_pb2.SweepResponse:
        key = check_idempotency_key(request.idempotency_key)
        source = check_account("source_address", request.source_address)
        destination = check_account("destination_address", request.destination_address)
        harvest_hash = request.harvest_tx_hash
        if len(harvest_hash) != 64 or any(c not in "0123456789abcdef" for c in harvest_hash):
            raise InvalidArgument("harvest_tx_hash must be 64 lower-case hex characters")
        prefix, _, named = key.partition(":")
        if prefix not in (Part.FEE, Part.SHARE) or named != harvest_hash:
            raise InvalidArgument(
                f"a sweep's idempotency_key is fee:{harvest_hash} or share:{harvest_hash},"
                f" not {show(key)}"
            )
        part = Part(prefix)
        amount = request.amount_stroops
        if amount <= 0:
            raise InvalidArgument(f"amount_stroops must be more than 0, got {amount}")
        if destination == source:
            raise InvalidArgument("destination_address must differ from source_address")
        wallet = await self._wallet(source)
        caller = _caller(context)
        harvest_id: list[uuid.UUID] = []

        async def allowed() -> None:
            harvest = await self.store.tx_by_hash(harvest_hash)
            if harvest is not None and not harvest.settled and harvest.source_account == source:
                # The pool can see a harvest on chain (its chain follower) before this
                # service recorded its outcome: settle it from the chain first. The
                # source's lock, the harvest's too, is held here.
                harvest = await self._drive(harvest, None)
                if not harvest.settled:  # the chain cannot tell yet: asked again later
                    raise Unavailable(
                        f"harvest {harvest_hash} is not settled yet: nothing was signed, retry"
                    )
            await self.policy.check_sweep(
                await self._wallet(source),
                await self.store.wallet(destination),
                destination,
                harvest,
                harvest_hash,
                part,
                amount,
                key=key,
                caller=caller,
            )
            assert harvest is not None  # check_sweep refuses a missing one
            harvest_id.append(harvest.id)

        async def build() -> UnsignedTx:
            return await build_payment(self.chain, source, destination, amount)

        result = await self._transact(
            wallet,
            key,
            TxKind.TRANSFER,
            digest("sweep", source, destination, harvest_hash, amount),
            build,
            amount=amount,
            before_build=_refusing(allowed),
            sweep_of=lambda: harvest_id[0],
        )
        return wallet_pb2.SweepResponse(outcome=result.outcome)

    # --- the payout address (wallet_service.policy decides) -------------------------------

    async def NewPayoutChallenge(
        self, request: wallet_pb2.NewPayoutChallengeRequest, context: Any
    ) -> wallet_pb2.NewPayoutChallengeResponse:
        address = check_account("public_key", request.public_key)
        new = check_account("new_payout_address", request.new_payout_address)
        if new == address:
            raise InvalidArgument("new_payout_address must not be the wallet itself")
        wallet = await self._open_wallet(address)
        if new == wallet.payout_address:
            raise InvalidArgument(f"{new} is the wallet's payout address already")
        challenge = await self.policy.new_challenge(wallet, new)
        return wallet_pb2.NewPayoutChallengeResponse(
            challenge_id=str(challenge.id),
            message=challenge.message,
            signer_address=challenge.signer_address,
            expires_at=wire.timestamp(challenge.expires_at),
        )

    async def ChangePayoutAddress(
        self, request: wallet_pb2.ChangePayoutAddressRequest, context: Any
    ) -> wallet_pb2.ChangePayoutAddressResponse:
        address = check_account("public_key", request.public_key)
        challenge_id = check_uuid("challenge_id", request.challenge_id)
        new = check_account("new_payout_address", request.new_payout_address)
        if len(request.signature) != SIGNATURE_BYTES:
            raise InvalidArgument(
                f"signature must be {SIGNATURE_BYTES} bytes (ed25519), got {len(request.signature)}"
            )
        wallet = await self._open_wallet(address)
        # Under the account's lock: no payout is being decided while its address changes.
        async with self._lock(address):
            changed, previous, replayed = await self.policy.change_address(
                wallet, challenge_id, new, request.signature, caller=_caller(context)
            )
        return wallet_pb2.ChangePayoutAddressResponse(
            wallet=self._wallet_pb(changed), previous_payout_address=previous, replayed=replayed
        )

    async def _open_wallet(self, address: str) -> WalletRow:
        wallet = await self._wallet(address)
        if wallet.closed_at is not None:
            raise FailedPrecondition(f"wallet {address} is closed")
        return wallet


def _caller(context: Any) -> str | None:
    """The caller's certificate name (None when called in-process, without gRPC)."""
    return None if context is None else caller_name(context)


def _refusing(check: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[Result | None]]:
    """A `_transact` hook that only refuses (by raising) and otherwise lets it build."""

    async def hook() -> Result | None:
        await check()
        return None

    return hook


def _close_amounts(row: TxRow) -> tuple[int | None, int | None]:
    """(KALE sent, XLM merged) read from the applied envelope and its result."""
    sent: int | None = None
    merged: int | None = None
    try:
        envelope = stellar_xdr.TransactionEnvelope.from_xdr(row.envelope_xdr)
        assert envelope.v1 is not None
        for op in envelope.v1.tx.operations:
            if op.body.payment_op is not None:
                sent = op.body.payment_op.amount.int64
        sent = sent or 0
        if row.result_xdr:
            result = stellar_xdr.TransactionResult.from_xdr(row.result_xdr)
            for op_result in result.result.results or []:
                merge = op_result.tr.account_merge_result if op_result.tr else None
                if merge is not None and merge.source_account_balance is not None:
                    merged = merge.source_account_balance.int64
    except Exception:  # a shape we did not build: report nothing rather than guess
        return None, None
    return sent, merged
