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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import psycopg
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
    read_accounts,
    read_pail_changes,
    read_pails,
    reconcile,
    sign,
    submit,
)
from kalepool.grpc_server import (
    AlreadyExists,
    ErrorMap,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    caller_name,
    status_of,
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
    NewTx,
    Settlement,
    Store,
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


def _done_future() -> asyncio.Future[Result]:
    done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    # Retrieved here too: an ask answered when sent may end with nobody awaiting it.
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return done


@dataclass(eq=False)
class TxAsk:
    """One transaction asked of `_transact_many`, and where it stands."""

    wallet: WalletRow  # the source's
    key: str
    kind: TxKind
    digest: bytes  # of what was asked (`digest`)
    # Builds it, given the source: the account as read with the others of its group
    # (`with_accounts`), else its address.
    build: Callable[[str | Account], Awaitable[UnsignedTx]]
    block_index: int | None = None
    amount: int | None = None
    # Checked under the lock before building: raises to refuse, or answers early.
    before_build: Callable[[], Awaitable[Result | None]] | None = None
    sweep_of: Callable[[], uuid.UUID] | None = None
    # Set once the RPC server accepted the envelope (queued, or already queued).
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    # Its Result, or its refusal, once known.
    done: asyncio.Future[Result] = field(default_factory=_done_future)
    locked: bool = False  # whether it holds its account's lock

    @property
    def source(self) -> str:
        return self.wallet.public_key


@dataclass(frozen=True)
class PlantAsked:
    """One plant asked for (a PlantRequest's or a PlantItem's fields), checked."""

    key: str
    farmer: str
    block: int
    stake: int


def _checked_plant(item: wallet_pb2.PlantItem) -> PlantAsked:
    """The plant an item asks for; INVALID_ARGUMENT for a malformed one."""
    key = check_idempotency_key(item.idempotency_key)
    farmer = check_account("farmer_address", item.farmer_address)
    stake = item.stake_stroops
    if stake < 0:
        raise InvalidArgument(f"stake_stroops must be 0 or more, got {stake}")
    return PlantAsked(key, farmer, item.block_index, stake)


async def _sent_or_done(ask: TxAsk) -> None:
    """Until the ask's envelope is accepted by the RPC server, or the ask ended."""
    sent: asyncio.Future[Any] = asyncio.ensure_future(ask.sent.wait())
    try:
        await asyncio.wait({sent, ask.done}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sent.cancel()


def _no_account(address: str) -> FailedPrecondition:
    return FailedPrecondition(f"account {address} does not exist on chain: fund it with XLM first")


# Items of one PlantBatch, at most.
PLANT_BATCH_MAX = 1000

# Exceptions other than StatusError the service's calls map to a status (its server's
# `error_map`, and each item of a batch): the database out of reach is UNAVAILABLE.
ERRORS: ErrorMap = {psycopg.OperationalError: grpc.StatusCode.UNAVAILABLE}

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
        # Plants answered when sent, still followed to their ledger here.
        self._follows: set[asyncio.Future[None]] = set()
        # Asks whose rest runs in a task of its own (a replay, a send followed to its
        # ledger), and those tasks, kept referenced until done.
        self._handed_off: set[TxAsk] = set()
        self._tasks: set[asyncio.Task[None]] = set()
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
    ) -> Result:
        """One transaction: `_transact_many` of one; its refusal is raised."""
        ask = TxAsk(
            wallet,
            key,
            kind,
            request_digest,
            lambda _source: build(),
            block_index=block_index,
            amount=amount,
            before_build=before_build,
            sweep_of=sweep_of,
        )
        await self._transact_many([ask])
        return await ask.done

    async def _transact_many(self, asks: Sequence[TxAsk], *, with_accounts: bool = False) -> None:
        """Make the transactions asked for, each from its own source account (at most
        one ask per account); each ask's `done` holds its Result or its refusal when
        this returns, and its `sent` is set once its envelope was accepted.

        Every ask takes the path of one transaction (the module's docstring), under its
        account's lock; the asks whose lock is free now go through it together, sharing
        one look-up of their keys, one read of their accounts (`with_accounts`: the
        build then gets the account read, else the address) and one insert of their
        envelopes (each stored before it is sent, as always); an ask whose account is
        busy (a transaction of it in flight) waits for the lock on its own, and then
        goes through the same path as a group of one.
        """
        free: list[TxAsk] = []
        busy: list[TxAsk] = []
        try:
            # In the accounts' order: two groups never wait for each other's locks.
            for ask in sorted(asks, key=lambda a: a.source):
                lock = self._lock(ask.source)
                if lock.locked():
                    busy.append(ask)
                else:
                    await lock.acquire()
                    ask.locked = True
                    free.append(ask)
        except BaseException as exc:
            for ask in free:
                self._finish(ask, exc)
            raise

        async def alone(ask: TxAsk) -> None:
            try:
                await self._lock(ask.source).acquire()
            except BaseException as exc:
                self._finish(ask, exc)
                raise
            ask.locked = True
            await self._group([ask], with_accounts)

        await asyncio.gather(self._group(free, with_accounts), *(alone(a) for a in busy))

    async def _group(self, asks: list[TxAsk], with_accounts: bool) -> None:
        """`_transact_many`'s path for asks whose locks are held. Each ask ends either
        here (`_finish`: a refusal, an early answer, or the error that stopped the
        group) or in a task of its own (its replay, or its send and follow to the
        ledger, each at its own pace), which releases the lock when done."""
        if not asks:
            return
        tasks: list[asyncio.Task[None]] = []
        try:
            rows = await self.store.txs_by_keys([a.key for a in asks])
            building: list[TxAsk] = []
            for ask in asks:
                row = rows.get(ask.key)
                if row is not None and not row.rejected:
                    tasks.append(self._hand_off(ask, self._replay(row, ask.key, ask.digest)))
                elif ask.wallet.closed_at is not None:
                    self._finish(ask, FailedPrecondition(f"wallet {ask.source} is closed"))
                else:
                    building.append(ask)
            # The checks before building, together (a plant's block check is one read
            # of the farm shared by all: `PlantableReads`).
            go = await asyncio.gather(*(self._checked(a) for a in building))
            building = [a for a, ok in zip(building, go, strict=True) if ok]
            sources: dict[str, str | Account] = {a.source: a.source for a in building}
            if with_accounts and building:
                try:
                    accounts = await read_accounts(self.chain, [a.source for a in building])
                except ChainError as exc:
                    for ask in building:
                        self._finish(ask, Unavailable(f"the chain cannot be reached: {exc}"))
                    accounts = {}
                for ask in building:
                    state = accounts.get(ask.source)
                    if state is None:
                        self._finish(ask, _no_account(ask.source))
                    else:
                        sources[ask.source] = Account(ask.source, state.sequence)
                building = [a for a in building if not a.done.done()]
            built = await asyncio.gather(*(self._build(a, sources[a.source]) for a in building))
            signed = [(a, tx) for a, tx in zip(building, built, strict=True) if tx is not None]
            # Stored before any is sent, in one statement: never lost.
            stored = await self.store.insert_txs(
                [
                    NewTx(
                        ask.key,
                        tx,
                        ask.digest,
                        ask.block_index,
                        ask.amount,
                        ask.sweep_of() if ask.sweep_of is not None else None,
                    )
                    for ask, tx in signed
                ]
            )
            for ask, tx in signed:
                tx_id = stored.get(ask.key)
                if tx_id is None:
                    tasks.append(self._hand_off(ask, self._taken(ask)))
                else:
                    tasks.append(self._hand_off(ask, self._send(tx_id, tx, ask)))
        except BaseException as exc:
            # Nothing of the asks still here was stored: each ends with the error.
            for ask in asks:
                if ask not in self._handed_off:
                    self._finish(ask, exc)
            if not isinstance(exc, Exception):
                raise
            return
        # Cancelled with the call (as one transaction's call always was: its row stays
        # unsettled until a replay or the start-up reconciliation drives it).
        await asyncio.gather(*tasks)

    async def _checked(self, ask: TxAsk) -> bool:
        """Whether the ask goes on to be built: its `before_build` (if any) neither
        refused it nor answered it early (either ends it)."""
        if ask.before_build is None:
            return True
        try:
            early = await ask.before_build()
        except Exception as exc:
            self._finish(ask, exc)
            return False
        if early is not None:
            self._finish(ask, early)
            return False
        return True

    async def _build(self, ask: TxAsk, source: str | Account) -> SignedTx | None:
        """Build, simulate and sign the ask's transaction; None when that ended the ask
        (a refusal at simulation, a missing account, the chain out of reach)."""
        kind = ask.kind
        try:
            unsigned = await ask.build(source)
        except AccountNotFoundError:
            self._finish(ask, _no_account(ask.source))
            return None
        except ContractError as exc:
            fault = attribute_fault(kind, exc, payer=Fault.FARMER)
            code = wire.chain_failure_code(exc.code)
            out = refused(ask.key, kind, ask.source, code, fault, str(exc), exc.number)
            self._finish(ask, Result(out, None))
            return None
        except SimulationError as exc:
            fault = attribute_fault(kind, exc, payer=Fault.FARMER)
            out = refused(
                ask.key, kind, ask.source, common_pb2.FAILURE_CODE_TX_FAILED, fault, str(exc)
            )
            self._finish(ask, Result(out, None))
            return None
        except ChainUnavailableError as exc:
            self._finish(ask, Unavailable(f"the chain cannot be reached: {exc}"))
            return None
        except Exception as exc:
            self._finish(ask, exc)
            return None
        with self.keyring.signer(ask.wallet.sealed, ask.source) as keypair:
            return sign(unsigned, keypair)

    def _hand_off(self, ask: TxAsk, work: Coroutine[Any, Any, Result]) -> asyncio.Task[None]:
        """Run the rest of an ask in a task of its own, which ends it."""
        self._handed_off.add(ask)

        async def run() -> None:
            try:
                result = await work
            except BaseException as exc:
                self._finish(ask, exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                self._finish(ask, result)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _finish(self, ask: TxAsk, outcome: Result | BaseException) -> None:
        """End an ask (once): its outcome or refusal, and its account's lock released."""
        if ask.done.done():
            return
        if isinstance(outcome, Result):
            ask.done.set_result(outcome)
        elif isinstance(outcome, Exception):
            ask.done.set_exception(outcome)
        else:  # cancelled
            ask.done.cancel()
        self._handed_off.discard(ask)
        if ask.locked:
            ask.locked = False
            self._lock(ask.source).release()

    async def _taken(self, ask: TxAsk) -> Result:
        """The key's transaction when another process (a second replica, or a second
        call racing on this key) stored its envelope between our look-up and our insert;
        ours was never sent. The key's transaction is the winner's: replay it."""
        row = await self.store.tx_by_key(ask.key)
        if row is None or row.rejected:
            raise Unavailable(
                f"another transaction of account {ask.source} was signed at the same "
                "time; nothing was sent: retry"
            )
        return await self._replay(row, ask.key, ask.digest)

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

    async def _send(self, tx_id: uuid.UUID, signed: SignedTx, ask: TxAsk) -> Result:
        """Send and follow `signed`, stored as row `tx_id`: its outcome, with the chain's
        when it was followed to the end (left pending when the chain went out of reach)."""
        try:
            outcome = await submit(
                self.chain, signed, observe=self._observer([tx_id], ask.sent.set)
            )
        except ChainUnavailableError as exc:
            log.warning("tx %s left pending: %s", signed.hash, exc)
            row = await self.store.tx(tx_id)
            return Result(outcome_of_row(row, replayed=False), row)
        done = settlement(signed.kind, outcome)
        log.info("tx %s %s %s", signed.kind.value, signed.hash, outcome.describe())
        if done is not None:
            row = await self.store.settle(tx_id, done)
        else:
            row = await self.store.tx(tx_id)
        return Result(outcome_of_row(row, replayed=False), row, outcome)

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
            return await self.store.settle(row.id, done)
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
        item = wallet_pb2.PlantItem(
            idempotency_key=request.idempotency_key,
            farmer_address=request.farmer_address,
            block_index=request.block_index,
            stake_stroops=request.stake_stroops,
        )
        (answer,) = await self._plant_many([_checked_plant(item)], request.answer_when_sent)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def PlantBatch(
        self, request: wallet_pb2.PlantBatchRequest, context: Any
    ) -> wallet_pb2.PlantBatchResponse:
        items = request.plants
        if not 1 <= len(items) <= PLANT_BATCH_MAX:
            raise InvalidArgument(
                f"plants must hold 1 to {PLANT_BATCH_MAX} items, got {len(items)}"
            )
        plants: list[PlantAsked] = []
        keys: set[str] = set()
        farmers: set[str] = set()
        for i, item in enumerate(items):
            try:
                plant = _checked_plant(item)
            except InvalidArgument as exc:
                raise InvalidArgument(f"plants[{i}]: {exc.message}") from None
            if plant.key in keys:
                raise InvalidArgument(f"plants[{i}]: idempotency_key {plant.key} given twice")
            if plant.farmer in farmers:
                raise InvalidArgument(f"plants[{i}]: farmer_address {plant.farmer} given twice")
            keys.add(plant.key)
            farmers.add(plant.farmer)
            plants.append(plant)
        answers = await self._plant_many(plants, request.answer_when_sent)
        response = wallet_pb2.PlantBatchResponse()
        for plant, answer in zip(plants, answers, strict=True):
            result = response.results.add(idempotency_key=plant.key)
            if isinstance(answer, BaseException):
                code, message = status_of(answer, ERRORS, "PlantBatch")
                result.error.code = code.value[0]
                result.error.message = message
            else:
                result.plant.CopyFrom(answer)
        return response

    async def _plant_many(
        self, plants: Sequence[PlantAsked], when_sent: bool
    ) -> list[wallet_pb2.PlantResponse | Exception]:
        """The plants of one Plant or PlantBatch (at most one per farmer), each answered
        on its own: its response, or its refusal. One path for both RPCs: the wallets in
        one read, then `_transact_many` (one look-up of the keys, one block check, one
        read of the accounts, one insert). `when_sent`: answered once each is sent (see
        PlantRequest.answer_when_sent), the sent ones followed to their ledger here."""
        wallets = await self.store.wallets([p.farmer for p in plants])
        asks: dict[str, TxAsk] = {}
        for plant in plants:
            wallet = wallets.get(plant.farmer)
            if wallet is not None:
                asks[plant.key] = self._plant_ask(wallet, plant)
        work = asyncio.ensure_future(self._transact_many(list(asks.values()), with_accounts=True))
        if when_sent:
            # In a task of its own: the sent plants are followed to their ledger after
            # the answer (and after a cancelled call).
            self._follows.add(work)
            work.add_done_callback(self._follows.discard)
            await asyncio.gather(*(_sent_or_done(a) for a in asks.values()))
        else:
            await work
        # Those sent and still followed are PENDING: their rows, in one read.
        following = [k for k, a in asks.items() if not a.done.done()]
        rows = await self.store.txs_by_keys(following) if following else {}

        async def answer(plant: PlantAsked) -> wallet_pb2.PlantResponse:
            ask = asks.get(plant.key)
            if ask is None:
                raise NotFound(f"the wallet service holds no wallet {plant.farmer}")
            if ask.done.done():
                return await self._plant_response(plant, ask.done.result())
            self._keep_followed(ask)
            row = rows[plant.key]  # stored before it was sent
            return wallet_pb2.PlantResponse(outcome=outcome_of_row(row, replayed=False))

        # Together: a replayed success may read its pail from the chain.
        answers = await asyncio.gather(*(answer(p) for p in plants), return_exceptions=True)
        out: list[wallet_pb2.PlantResponse | Exception] = []
        for got in answers:
            if isinstance(got, BaseException) and not isinstance(got, Exception):
                raise got
            out.append(got)
        return out

    def _plant_ask(self, wallet: WalletRow, plant: PlantAsked) -> TxAsk:
        """The transaction of one plant: its block checked before building (a refusal is
        a REJECTED outcome), time bounds from the clock that check read."""
        checked_at: list[int] = []  # the chain's clock the block check read

        async def check_block() -> Result | None:
            try:
                plantable = await self.plantable.get(fresh=True)
            except ChainError as exc:
                raise Unavailable(f"the farm cannot be read: {exc}") from None
            target = plantable.target
            checked_at.append(plantable.close_time)
            if plant.block == target:
                return None
            return Result(
                refused(
                    plant.key,
                    TxKind.PLANT,
                    plant.farmer,
                    common_pb2.FAILURE_CODE_BLOCK_MISMATCH,
                    Fault.NONE,
                    f"block {plant.block} cannot be planted now: the block to plant is {target}",
                ),
                None,
            )

        return TxAsk(
            wallet,
            plant.key,
            TxKind.PLANT,
            digest("plant", plant.farmer, plant.block, plant.stake),
            # Time bounds from the clock the block check read just before (one read less).
            lambda source: build_plant(
                self.chain, plant.farmer, plant.stake, source=source, now=checked_at[-1]
            ),
            block_index=plant.block,
            before_build=check_block,
        )

    def _keep_followed(self, ask: TxAsk) -> None:
        """Keep the chain's outcome of a plant answered when sent, once followed, for the
        next Plant with its key (its pail is then read from the meta, not asked again)."""

        def done(f: asyncio.Future[Result]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            chain = f.result().chain
            if chain is not None:
                while len(self._followed) >= _FOLLOWED_KEPT:
                    self._followed.pop(next(iter(self._followed)))
                self._followed[ask.key] = chain

        ask.done.add_done_callback(done)

    async def _plant_response(self, plant: PlantAsked, result: Result) -> wallet_pb2.PlantResponse:
        """A plant's answer from its Result: where its pail is once applied."""
        followed = self._followed.pop(plant.key, None) or result.chain
        response = wallet_pb2.PlantResponse(outcome=result.outcome)
        out = response.outcome
        if out.HasField("failure") and out.failure.code == common_pb2.FAILURE_CODE_PAIL_EXISTS:
            # An earlier attempt for this farmer already opened the pail: not a failure of
            # anyone (that attempt's outcome is the record).
            out.failure.fault = common_pb2.FAULT_PARTY_NONE
        row = result.row
        if out.status == common_pb2.TX_STATUS_SUCCESS and row is not None and row.ledger:
            found = await self._pail_of(plant.farmer, plant.block, row, followed)
            if found is not None:
                response.block_index, response.plant_ledger = found
        return response

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
