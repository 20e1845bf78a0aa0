"""Sending a signed transaction so that it applies at most once, and finding out its fate.

The rules (Stellar's own guidance; docs/protocol.md, "Submitting safely"):

1. Every transaction has a time bound, and its signed envelope and hash exist as a
   :class:`SignedTx` *before* it is sent; the `record` hook stores it (the wallet
   service writes the `transactions` row) and only then is it sent.
2. `getTransaction` answering NOT_FOUND does not mean it failed. Until a ledger has
   closed past `max_time`, the *same* envelope is sent again (same sequence number, same
   hash: the network applies it at most once); a new one is never built here.
3. Once a ledger has closed past `max_time` and the hash is still unknown, the
   transaction can no longer apply: it is EXPIRED, and only then may a replacement be built.
4. After a restart, :func:`reconcile` takes the stored envelope and does the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from stellar_sdk import Keypair, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.operation import (
    AccountMerge,
    ChangeTrust,
    InvokeHostFunction,
    Payment,
)
from stellar_sdk.soroban_rpc import (
    GetTransactionResponse,
    GetTransactionStatus,
    SendTransactionStatus,
)
from stellar_sdk.transaction_envelope import TransactionEnvelope

from kalepool.chain.calls import TxKind, UnsignedTx
from kalepool.chain.client import ChainClient, describe_failure, is_transient
from kalepool.chain.errors import (
    ChainDataError,
    ChainUnavailableError,
    ContractError,
    make_contract_error,
    raised_contract_error,
    result_codes,
)
from kalepool.chain.farm_state import read_account
from kalepool.chain.metrics import CHAIN_TRANSACTIONS

log = logging.getLogger(__name__)


# --- the signed transaction ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed envelope and what identifies it, fixed before anything is sent.

    The fields map onto the `transactions` table: `envelope_xdr`, `tx_hash` (`hash`),
    `source_account`, `sequence_number`, `min_time`, `max_time`, `kind`.
    """

    envelope_xdr: str
    hash: str  # lower-case hex, the network's transaction hash
    source: str
    sequence: int
    min_time: int
    max_time: int
    kind: TxKind
    network_passphrase: str
    contract_id: str | None = None  # for a contract call: the contract invoked
    function: str | None = None  # ... and its function

    @classmethod
    def from_envelope(cls, envelope_xdr: str, network_passphrase: str) -> SignedTx:
        """Rebuild the description of a stored envelope (reconciliation after a restart)."""
        try:
            envelope = TransactionEnvelope.from_xdr(envelope_xdr, network_passphrase)
        except (ValueError, TypeError, IndexError, EOFError) as exc:
            raise ValueError(f"not a transaction envelope: {type(exc).__name__}") from None
        return cls._of(envelope)

    @classmethod
    def _of(cls, envelope: TransactionEnvelope) -> SignedTx:
        tx = envelope.transaction
        bounds = tx.preconditions.time_bounds if tx.preconditions else None
        if bounds is None or bounds.max_time == 0:
            raise ValueError("transaction has no time bound (max_time): refused")
        if not envelope.signatures:
            raise ValueError("transaction is not signed")
        return cls.describing(envelope)

    @classmethod
    def describing(cls, envelope: TransactionEnvelope) -> SignedTx:
        """The description of any envelope of a kind we know, e.g. one read back from the
        chain that someone else built: unlike `from_envelope`, no bound or signature is
        required (a missing time bound reads as 0). ValueError for an unknown kind."""
        tx = envelope.transaction
        bounds = tx.preconditions.time_bounds if tx.preconditions else None
        kind, contract_id, function = _classify(envelope)
        return cls(
            envelope_xdr=envelope.to_xdr(),
            hash=envelope.hash_hex(),
            source=tx.source.account_id,
            sequence=tx.sequence,
            min_time=0 if bounds is None else bounds.min_time,
            max_time=0 if bounds is None else bounds.max_time,
            kind=kind,
            network_passphrase=envelope.network_passphrase,
            contract_id=contract_id,
            function=function,
        )


class ContractCall(NamedTuple):
    """An InvokeHostFunction operation that calls a contract function."""

    contract_id: str
    function: str
    args: list[stellar_xdr.SCVal]


def contract_call(op: InvokeHostFunction) -> ContractCall | None:
    """The contract, function and arguments the operation calls; None for another host
    function (an upload or a deployment)."""
    call = op.host_function.invoke_contract
    if call is None:
        return None
    contract = scval.from_address(
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_ADDRESS, address=call.contract_address)
    ).address
    return ContractCall(contract, call.function_name.sc_symbol.decode(), list(call.args))


def _classify(envelope: TransactionEnvelope) -> tuple[TxKind, str | None, str | None]:
    ops = envelope.transaction.operations
    if len(ops) > 1:
        # The one multi-operation shape we sign: closing an account (send its KALE,
        # remove the trustline, merge), whose steps must apply together or not at all.
        if not isinstance(ops[-1], AccountMerge) or not all(
            isinstance(op, Payment | ChangeTrust) for op in ops[:-1]
        ):
            raise ValueError(
                f"{len(ops)} operations: only a close (payments, trustline removal, then "
                "an account merge) may have more than one"
            )
        return TxKind.CLOSE, None, None
    if not ops:
        raise ValueError("transaction has no operation")
    op = ops[0]
    if isinstance(op, InvokeHostFunction):
        call = contract_call(op)
        if call is None:
            raise ValueError("host function is not a contract call")
        kinds = {"plant": TxKind.PLANT, "work": TxKind.WORK, "harvest": TxKind.HARVEST}
        if call.function in kinds:
            return kinds[call.function], call.contract_id, call.function
        if call.function == "transfer":
            return TxKind.TRANSFER, call.contract_id, call.function
        raise ValueError(f"unsupported contract function {call.function!r}")
    if isinstance(op, ChangeTrust):
        return TxKind.TRUSTLINE, None, None
    if isinstance(op, Payment):
        return TxKind.TRANSFER, None, None
    if isinstance(op, AccountMerge):
        return TxKind.CLOSE, None, None
    raise ValueError(f"unsupported operation {type(op).__name__}")


def sign(tx: UnsignedTx, *signers: Keypair) -> SignedTx:
    """Sign the envelope (the fee source's key, plus any other source's) into a SignedTx.

    Refuses while Soroban authorization entries are unsigned: `authorize` comes first,
    because signing the auth entries changes the envelope and so its hash.
    """
    if tx.needs_auth:
        raise ValueError(
            f"{tx.kind.value} needs authorization from {', '.join(tx.needs_auth)}: "
            "authorize it before signing"
        )
    if tx.source not in {kp.public_key for kp in signers}:
        raise ValueError(f"the fee source {tx.source} must sign the envelope")
    # Signing appends to the envelope's signatures only: a new envelope over the same
    # transaction keeps the unsigned one as it was, without a deep copy of the whole
    # transaction (its footprint and auth entries: most of a plant's signing time).
    unsigned = tx.envelope
    envelope = TransactionEnvelope(
        unsigned.transaction, unsigned.network_passphrase, list(unsigned.signatures)
    )
    for keypair in signers:
        envelope.sign(keypair)
    return SignedTx._of(envelope)


# --- outcomes and progress -----------------------------------------------------------------


class TxStatus(StrEnum):
    """The fate of a transaction."""

    SUCCESS = "success"  # applied, operations succeeded
    FAILED = "failed"  # applied (fee charged, sequence used), operations failed
    EXPIRED = "expired"  # never applied, and a ledger closed past max_time: it never will
    REJECTED = "rejected"  # refused on its first send (sendTransaction ERROR): never queued
    UNKNOWN = "unknown"  # the server's history no longer covers it and its sequence is used


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What became of a SignedTx."""

    status: TxStatus
    tx: SignedTx
    ledger: int | None = None
    result_code: str | None = None  # txSUCCESS, txFAILED, txBAD_SEQ, ...
    operation_code: str | None = None  # e.g. INVOKE_HOST_FUNCTION_TRAPPED, PAYMENT_UNDERFUNDED
    contract_error: ContractError | None = None
    return_value: stellar_xdr.SCVal | None = None
    fee_charged: int | None = None
    result_xdr: str | None = None
    sends: int = 0  # how many times the envelope was handed to sendTransaction
    # The applied transaction's result meta, decoded once: what it changed (e.g. the pail
    # a plant opened) without asking the server again. None unless applied.
    meta: stellar_xdr.TransactionMeta | None = field(default=None, repr=False, compare=False)

    @property
    def hash(self) -> str:
        return self.tx.hash

    @property
    def ok(self) -> bool:
        return self.status is TxStatus.SUCCESS

    @property
    def value(self) -> int | None:
        """The call's decoded result: `work` → gap (u32), `harvest` → reward (i128)."""
        if self.return_value is None or self.status is not TxStatus.SUCCESS:
            return None
        if self.tx.kind is TxKind.WORK:
            return int(scval.from_uint32(self.return_value))
        if self.tx.kind is TxKind.HARVEST:
            return int(scval.from_int128(self.return_value))
        return None

    @property
    def error_code(self) -> str | None:
        """The most specific code for a failure, as the database's `error_code` wants it."""
        if self.status is TxStatus.SUCCESS:
            return None
        if self.contract_error is not None:
            return self.contract_error.code
        return self.operation_code or self.result_code or self.status.value

    @property
    def db_status(self) -> str | None:
        """The `transaction_status` to settle the row with (None: leave it unsettled)."""
        return {
            TxStatus.SUCCESS: "success",
            TxStatus.FAILED: "failed",
            TxStatus.EXPIRED: "expired",
            TxStatus.REJECTED: "failed",
        }.get(self.status)

    def describe(self) -> str:
        """One line a person understands."""
        what = f"{self.tx.kind.value} {self.tx.hash[:12]}"
        if self.status is TxStatus.SUCCESS:
            shown = "" if self.value is None else f" (returned {self.value})"
            return f"{what} applied in ledger {self.ledger}{shown}"
        if self.status is TxStatus.FAILED:
            cause = str(self.contract_error) if self.contract_error else self.error_code
            return f"{what} failed in ledger {self.ledger}: {cause}"
        if self.status is TxStatus.REJECTED:
            return f"{what} rejected by the server: {self.error_code}"
        if self.status is TxStatus.EXPIRED:
            return f"{what} expired unapplied (max_time {self.tx.max_time} passed)"
        return f"{what}: fate unknown (outside the server's history, sequence number used)"


class SubmitStep(StrEnum):
    """What just happened while driving a transaction."""

    SENT = "sent"  # sendTransaction: PENDING
    DUPLICATE = "duplicate"  # sendTransaction: already queued
    TRY_AGAIN_LATER = "try_again_later"  # sendTransaction: the source has another pending
    REFUSED = "refused"  # sendTransaction: ERROR (after an earlier send: may have applied)
    SEND_LOST = "send_lost"  # sendTransaction's answer never came: it may be queued
    NOT_FOUND = "not_found"  # getTransaction: not (yet) applied
    LOOKUP_FAILED = "lookup_failed"  # getTransaction's answer never came


@dataclass(frozen=True, slots=True)
class SubmitEvent:
    """One step of a submission, for status updates and logs."""

    step: SubmitStep
    tx: SignedTx
    sends: int
    ledger: int | None = None  # the latest ledger the server reported
    detail: str | None = None  # the refusal code or transport failure


RecordHook = Callable[[SignedTx], Awaitable[None]]
Observer = Callable[[SubmitEvent], Awaitable[None]]


# --- driving a transaction to its fate -------------------------------------------------------


async def submit(
    client: ChainClient,
    tx: SignedTx,
    *,
    record: RecordHook | None = None,
    observe: Observer | None = None,
) -> TxOutcome:
    """Record, send and follow a signed transaction until it applies or provably cannot.

    `record` runs before the first send; if it raises, nothing is sent. `observe` is
    awaited at every step (an exception in it stops the drive: reconcile later). Raises
    :class:`ChainUnavailableError` when the server stays unreachable or no ledger closes
    for `client.stall_seconds`; the transaction may then be in flight and must be
    reconciled by hash.
    """
    _check_network(client, tx)
    if record is not None:
        await record(tx)
    return await _counted(tx, _Drive(client, tx, observe, sent_before=False).run())


async def reconcile(
    client: ChainClient, tx: SignedTx, *, observe: Observer | None = None
) -> TxOutcome:
    """The fate of a stored envelope that may have been sent before (after a restart).

    Looks it up by hash; while it is unknown and within its time bound, sends the same
    envelope again. Never builds a new one.
    """
    _check_network(client, tx)
    return await _counted(tx, _Drive(client, tx, observe, sent_before=True).run())


async def _counted(tx: SignedTx, drive: Awaitable[TxOutcome]) -> TxOutcome:
    """The drive's outcome, counted in `kalepool_chain_transactions_total`."""
    function = tx.function or tx.kind.value
    try:
        outcome = await drive
    except ChainUnavailableError:
        CHAIN_TRANSACTIONS.labels(function, "unavailable").inc()
        raise
    CHAIN_TRANSACTIONS.labels(function, outcome.status.value).inc()
    return outcome


def _check_network(client: ChainClient, tx: SignedTx) -> None:
    if tx.network_passphrase != client.config.network_passphrase:
        raise ValueError("transaction was signed for another network")


class _Drive:
    """The submission state machine for one envelope."""

    def __init__(
        self, client: ChainClient, tx: SignedTx, observe: Observer | None, *, sent_before: bool
    ) -> None:
        self.client = client
        self.tx = tx
        self.observe = observe
        # Whether the envelope may have reached the network: then a refusal is not final
        # (it may have applied already, e.g. txBAD_SEQ because its sequence is now used).
        self.maybe_sent = sent_before
        self.look_first = sent_before
        self.sends = 0
        self.failures = 0
        self.last_refusal: tuple[str, str | None] | None = None
        self.newest_ledger = -1
        self.newest_seen_at = time.monotonic()
        # The first ledger not yet searched for the hash, known once a first send was
        # answered with nothing lost before it (it cannot have applied earlier): look-ups
        # then join the client's shared waiter. Unknown (a restart, a lost first send):
        # the hash is asked for on its own, whatever ledger it applied in.
        self.search_from: int | None = None

    async def run(self) -> TxOutcome:
        # The ledger we last sent in: the same envelope is sent again once per new ledger
        # while it is not found (a queued one just answers DUPLICATE).
        sent_in: int | None = None
        while True:
            self._check_stall()
            if self.look_first:
                got = await self._lookup()
                if got is None:
                    continue
                if got.status != GetTransactionStatus.NOT_FOUND:
                    return self._applied(got)
                if got.latest_ledger_close_time > self.tx.max_time:
                    return await self._expired(got)
                await self._emit(SubmitStep.NOT_FOUND, got.latest_ledger)
                if sent_in is not None and got.latest_ledger <= sent_in:
                    await asyncio.sleep(self.client.poll_interval)
                    continue
            self.look_first = True
            try:
                async with self.client.limit:
                    sent = await self.client.rpc.send_transaction(self.tx.envelope_xdr)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # The request may have arrived: from now on a refusal is not final.
                self.maybe_sent = True
                sent_in = None
                await self._emit(SubmitStep.SEND_LOST, None, describe_failure(exc))
                await self._transport_failed("sendTransaction", exc)
                continue
            self.failures = 0
            if self.sends == 0 and not self.maybe_sent:
                self.search_from = sent.latest_ledger + 1
            self.sends += 1
            self._saw_ledger(sent.latest_ledger)
            sent_in = sent.latest_ledger
            if sent.hash.lower() != self.tx.hash:
                raise ChainDataError(
                    f"server computed hash {sent.hash} for transaction {self.tx.hash}: "
                    "is it on another network?"
                )
            if sent.status == SendTransactionStatus.PENDING:
                self.maybe_sent = True
                await self._emit(SubmitStep.SENT, sent.latest_ledger)
            elif sent.status == SendTransactionStatus.DUPLICATE:
                self.maybe_sent = True
                await self._emit(SubmitStep.DUPLICATE, sent.latest_ledger)
            elif sent.status == SendTransactionStatus.TRY_AGAIN_LATER:
                await self._emit(SubmitStep.TRY_AGAIN_LATER, sent.latest_ledger)
            else:
                codes = _refusal_codes(sent.error_result_xdr)
                await self._emit(SubmitStep.REFUSED, sent.latest_ledger, codes[1] or codes[0])
                if not self.maybe_sent:
                    return TxOutcome(
                        TxStatus.REJECTED,
                        self.tx,
                        result_code=codes[0],
                        operation_code=codes[1],
                        result_xdr=sent.error_result_xdr,
                        sends=self.sends,
                    )
                self.last_refusal = codes
            await asyncio.sleep(self.client.poll_interval)

    # ---- steps ----------------------------------------------------------------------------

    async def _lookup(self) -> GetTransactionResponse | None:
        try:
            if self.search_from is None:
                async with self.client.limit:
                    got = await self.client.rpc.get_transaction(self.tx.hash)
            else:
                # The waiter answers once a new ledger is searched; no ledger for the
                # rest of `stall_seconds` is the stall `_check_stall` reports.
                quiet = time.monotonic() - self.newest_seen_at
                waiting = asyncio.ensure_future(
                    self.client.waiter.lookup(self.tx.hash, since=self.search_from)
                )
                try:
                    done, _ = await asyncio.wait(
                        {waiting},
                        timeout=max(0.0, self.client.stall_seconds - quiet)
                        + self.client.poll_interval,
                    )
                finally:
                    if not waiting.done():
                        waiting.cancel()  # timed out, or this drive was cancelled
                if not done:
                    return None  # no answer: the loop's stall check decides
                got = waiting.result()
                if got.status == GetTransactionStatus.NOT_FOUND:
                    self.search_from = max(self.search_from, got.latest_ledger + 1)
        except Exception as exc:
            if not is_transient(exc):
                raise
            await self._emit(SubmitStep.LOOKUP_FAILED, None, describe_failure(exc))
            await self._transport_failed("getTransaction", exc)
            return None
        self.failures = 0
        self._saw_ledger(got.latest_ledger)
        return got

    async def _transport_failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self.failures >= self.client.retry.attempts:
            raise ChainUnavailableError(
                f"{what} for {self.tx.kind.value} {self.tx.hash} failed {self.failures} times "
                f"({describe_failure(exc)}); it may be in flight: reconcile it by hash"
            ) from exc
        await asyncio.sleep(self.client.retry.delay(self.failures))

    def _saw_ledger(self, sequence: int) -> None:
        if sequence > self.newest_ledger:
            self.newest_ledger = sequence
            self.newest_seen_at = time.monotonic()

    def _check_stall(self) -> None:
        quiet = time.monotonic() - self.newest_seen_at
        if quiet > self.client.stall_seconds:
            raise ChainUnavailableError(
                f"no ledger closed for {quiet:.0f} s while following {self.tx.kind.value} "
                f"{self.tx.hash}; it may be in flight: reconcile it by hash"
            )

    async def _emit(self, step: SubmitStep, ledger: int | None, detail: str | None = None) -> None:
        log.debug("%s %s: %s (%s)", self.tx.kind.value, self.tx.hash, step.value, detail or "")
        if self.observe is not None:
            await self.observe(SubmitEvent(step, self.tx, self.sends, ledger, detail))

    # ---- outcomes -------------------------------------------------------------------------

    def _applied(self, got: GetTransactionResponse) -> TxOutcome:
        return outcome_of(self.client, self.tx, got, sends=self.sends)

    async def _expired(self, got: GetTransactionResponse) -> TxOutcome:
        """NOT_FOUND with a ledger closed past max_time: gone for good, if history covers it."""
        code, op_code = self.last_refusal or (None, None)
        expired = TxOutcome(
            TxStatus.EXPIRED, self.tx, result_code=code, operation_code=op_code, sends=self.sends
        )
        # The server keeps a window of ledgers. If it reaches back to min_time, every ledger
        # that could have applied the transaction was searched.
        if self.tx.min_time > 0 and got.oldest_ledger_close_time <= self.tx.min_time:
            return expired
        # Otherwise ask the account: a sequence number not yet used was never applied.
        account = await read_account(self.client, self.tx.source)
        if account is None or account.sequence < self.tx.sequence:
            return expired
        return TxOutcome(TxStatus.UNKNOWN, self.tx, sends=self.sends)


def _refusal_codes(error_result_xdr: str | None) -> tuple[str, str | None]:
    if not error_result_xdr:
        return "ERROR", None
    try:
        return result_codes(stellar_xdr.TransactionResult.from_xdr(error_result_xdr))
    except (ValueError, TypeError, IndexError, EOFError):
        return "ERROR", None


def outcome_of(
    client: ChainClient, tx: SignedTx, got: GetTransactionResponse, *, sends: int = 0
) -> TxOutcome:
    """A TxOutcome from a found getTransaction answer: codes, fee, return value, error."""
    status = TxStatus.SUCCESS if got.status == GetTransactionStatus.SUCCESS else TxStatus.FAILED
    code = op_code = None
    fee = None
    if got.result_xdr:
        result = stellar_xdr.TransactionResult.from_xdr(got.result_xdr)
        code, op_code = result_codes(result)
        fee = int(result.fee_charged.int64)
    return_value = None
    diagnostics: list[str | stellar_xdr.DiagnosticEvent] = list(got.diagnostic_events_xdr or [])
    meta = None
    if got.result_meta_xdr:
        meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
        if meta.v4 is not None:
            diagnostics.extend(meta.v4.diagnostic_events)
            if meta.v4.soroban_meta is not None:
                return_value = meta.v4.soroban_meta.return_value
        elif meta.v3 is not None and meta.v3.soroban_meta is not None:
            diagnostics.extend(meta.v3.soroban_meta.diagnostic_events)
            return_value = meta.v3.soroban_meta.return_value
    contract_error = None
    if status is TxStatus.FAILED and tx.function is not None:
        raised = raised_contract_error(diagnostics)
        if raised is not None:
            number, raiser = raised
            contract_error = make_contract_error(
                number,
                raiser or tx.contract_id or "",
                tx.function,
                farm_id=client.config.farm_contract_id,
                asset_id=client.config.sac_contract_id,
            )
    return TxOutcome(
        status,
        tx,
        ledger=got.ledger,
        result_code=code,
        operation_code=op_code,
        contract_error=contract_error,
        return_value=return_value if status is TxStatus.SUCCESS else None,
        fee_charged=fee,
        result_xdr=got.result_xdr,
        sends=sends,
        meta=meta,
    )
