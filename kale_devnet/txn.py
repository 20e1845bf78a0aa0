"""Transactions: parsing envelopes, stellar-core's validity checks, fees, and applying them
with the result and meta XDR a client reads back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass, field, replace

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from stellar_sdk import Asset, StrKey
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import classic, soroban
from kale_devnet import values as v
from kale_devnet.host import AuthMode, Footprint, LedgerInfo, contract_event
from kale_devnet.ledger import StateView, load_account, store_account

TRC = stellar_xdr.TransactionResultCode
OT = stellar_xdr.OperationType
ORC = stellar_xdr.OperationResultCode
IHF = stellar_xdr.InvokeHostFunctionResultCode
ET = stellar_xdr.EnvelopeType

MAX_OPS = 100

log = logging.getLogger(__name__)


class EnvelopeError(ValueError):
    """The bytes are not a transaction envelope (bad base64 or XDR)."""


@dataclass
class TxFrame:
    """A parsed transaction envelope with what validation and apply need."""

    envelope: stellar_xdr.TransactionEnvelope
    b64: str
    hash: bytes
    tx: stellar_xdr.Transaction
    source: str
    signatures: list[stellar_xdr.DecoratedSignature]
    inner_hash: bytes
    fee_source: str
    fee_bid: int
    outer_signatures: list[stellar_xdr.DecoratedSignature] = field(default_factory=list)

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def fee_bump(self) -> bool:
        return self.envelope.type == ET.ENVELOPE_TYPE_TX_FEE_BUMP

    @property
    def seq(self) -> int:
        return int(self.tx.seq_num.sequence_number.int64)

    @property
    def ops(self) -> list[stellar_xdr.Operation]:
        return list(self.tx.operations)

    @property
    def soroban_data(self) -> stellar_xdr.SorobanTransactionData | None:
        return self.tx.ext.soroban_data if self.tx.ext.v == 1 else None

    @property
    def is_soroban(self) -> bool:
        return any(
            op.body.type in (OT.INVOKE_HOST_FUNCTION, OT.EXTEND_FOOTPRINT_TTL, OT.RESTORE_FOOTPRINT)
            for op in self.tx.operations
        )

    def op_source(self, op: stellar_xdr.Operation) -> str:
        return classic.muxed_to_account(op.source_account) if op.source_account else self.source

    @property
    def size(self) -> int:
        return len(base64.b64decode(self.b64))


def _payload_hash(
    network_id: bytes, tagged: stellar_xdr.TransactionSignaturePayloadTaggedTransaction
) -> bytes:
    payload = stellar_xdr.TransactionSignaturePayload(stellar_xdr.Hash(network_id), tagged)
    return hashlib.sha256(payload.to_xdr_bytes()).digest()


def tx_hash(network_id: bytes, tx: stellar_xdr.Transaction) -> bytes:
    return _payload_hash(
        network_id,
        stellar_xdr.TransactionSignaturePayloadTaggedTransaction(ET.ENVELOPE_TYPE_TX, tx=tx),
    )


def _v0_to_v1(v0: stellar_xdr.TransactionV0) -> stellar_xdr.Transaction:
    """A v0 transaction as the v1 transaction it is hashed and applied as."""
    preconditions = (
        stellar_xdr.Preconditions(
            stellar_xdr.PreconditionType.PRECOND_TIME, time_bounds=v0.time_bounds
        )
        if v0.time_bounds is not None
        else stellar_xdr.Preconditions(stellar_xdr.PreconditionType.PRECOND_NONE)
    )
    return stellar_xdr.Transaction(
        source_account=stellar_xdr.MuxedAccount(
            stellar_xdr.CryptoKeyType.KEY_TYPE_ED25519, ed25519=v0.source_account_ed25519
        ),
        fee=v0.fee,
        seq_num=v0.seq_num,
        cond=preconditions,
        memo=v0.memo,
        operations=v0.operations,
        ext=stellar_xdr.TransactionExt(0),
    )


def parse(b64: str, network_id: bytes) -> TxFrame:
    """Decode an envelope; the XDR must be canonical (re-encoding gives the same bytes)."""
    try:
        raw = base64.b64decode(b64, validate=True)
        envelope = stellar_xdr.TransactionEnvelope.from_xdr_bytes(raw)
        canonical = envelope.to_xdr_bytes() == raw
    except (binascii.Error, ValueError, TypeError, IndexError, EOFError, KeyError) as exc:
        raise EnvelopeError("invalid_xdr") from exc
    except Exception as exc:  # the XDR decoder raises assorted errors on garbage
        raise EnvelopeError("invalid_xdr") from exc
    if not canonical:
        raise EnvelopeError("invalid_xdr")
    if envelope.type == ET.ENVELOPE_TYPE_TX and envelope.v1 is not None:
        tx = envelope.v1.tx
        h = tx_hash(network_id, tx)
        source = classic.muxed_to_account(tx.source_account)
        return TxFrame(
            envelope, b64, h, tx, source, list(envelope.v1.signatures), h, source, tx.fee.uint32
        )
    if envelope.type == ET.ENVELOPE_TYPE_TX_V0 and envelope.v0 is not None:
        tx = _v0_to_v1(envelope.v0.tx)
        h = tx_hash(network_id, tx)
        source = classic.muxed_to_account(tx.source_account)
        return TxFrame(
            envelope, b64, h, tx, source, list(envelope.v0.signatures), h, source, tx.fee.uint32
        )
    if envelope.type == ET.ENVELOPE_TYPE_TX_FEE_BUMP and envelope.fee_bump is not None:
        fb = envelope.fee_bump.tx
        inner = fb.inner_tx.v1
        if inner is None:
            raise EnvelopeError("invalid_xdr")
        outer_hash = _payload_hash(
            network_id,
            stellar_xdr.TransactionSignaturePayloadTaggedTransaction(
                ET.ENVELOPE_TYPE_TX_FEE_BUMP, fee_bump=fb
            ),
        )
        source = classic.muxed_to_account(inner.tx.source_account)
        return TxFrame(
            envelope,
            b64,
            outer_hash,
            inner.tx,
            source,
            list(inner.signatures),
            tx_hash(network_id, inner.tx),
            classic.muxed_to_account(fb.fee_source),
            fb.fee.int64,
            list(envelope.fee_bump.signatures),
        )
    raise EnvelopeError("invalid_xdr")


# ---- results ------------------------------------------------------------------------


def tx_result(
    code: stellar_xdr.TransactionResultCode,
    fee: int = 0,
    results: list[stellar_xdr.OperationResult] | None = None,
) -> stellar_xdr.TransactionResult:
    with_results = code in (TRC.txSUCCESS, TRC.txFAILED)
    return stellar_xdr.TransactionResult(
        fee_charged=stellar_xdr.Int64(fee),
        result=stellar_xdr.TransactionResultResult(
            code, results=(results or []) if with_results else None
        ),
        ext=stellar_xdr.TransactionResultExt(0),
    )


def wrap_fee_bump(
    frame: TxFrame, inner: stellar_xdr.TransactionResult, outer_fee: int
) -> stellar_xdr.TransactionResult:
    """A fee-bump result wrapping the inner transaction's result."""
    ok = inner.result.code == TRC.txSUCCESS
    return stellar_xdr.TransactionResult(
        fee_charged=stellar_xdr.Int64(outer_fee),
        result=stellar_xdr.TransactionResultResult(
            TRC.txFEE_BUMP_INNER_SUCCESS if ok else TRC.txFEE_BUMP_INNER_FAILED,
            inner_result_pair=stellar_xdr.InnerTransactionResultPair(
                stellar_xdr.Hash(frame.inner_hash),
                stellar_xdr.InnerTransactionResult(
                    fee_charged=stellar_xdr.Int64(0),
                    result=stellar_xdr.InnerTransactionResultResult(
                        inner.result.code, results=inner.result.results
                    ),
                    ext=stellar_xdr.InnerTransactionResultExt(0),
                ),
            ),
        ),
        ext=stellar_xdr.TransactionResultExt(0),
    )


def invoke_result(
    code: stellar_xdr.InvokeHostFunctionResultCode, success: bytes | None = None
) -> stellar_xdr.OperationResult:
    return classic.op_result(
        OT.INVOKE_HOST_FUNCTION,
        invoke_host_function_result=stellar_xdr.InvokeHostFunctionResult(
            code, None if success is None else stellar_xdr.Hash(success)
        ),
    )


def _default_result(op: stellar_xdr.Operation) -> stellar_xdr.OperationResult:
    t = op.body.type
    if t == OT.CREATE_ACCOUNT:
        return classic.op_result(
            t,
            create_account_result=stellar_xdr.CreateAccountResult(
                stellar_xdr.CreateAccountResultCode.CREATE_ACCOUNT_SUCCESS
            ),
        )
    if t == OT.PAYMENT:
        return classic.op_result(
            t,
            payment_result=stellar_xdr.PaymentResult(stellar_xdr.PaymentResultCode.PAYMENT_SUCCESS),
        )
    if t == OT.CHANGE_TRUST:
        return classic.op_result(
            t,
            change_trust_result=stellar_xdr.ChangeTrustResult(
                stellar_xdr.ChangeTrustResultCode.CHANGE_TRUST_SUCCESS
            ),
        )
    if t == OT.ACCOUNT_MERGE:
        return classic.op_result(
            t,
            account_merge_result=stellar_xdr.AccountMergeResult(
                stellar_xdr.AccountMergeResultCode.ACCOUNT_MERGE_SUCCESS, stellar_xdr.Int64(0)
            ),
        )
    if t == OT.BUMP_SEQUENCE:
        return classic.op_result(
            t,
            bump_seq_result=stellar_xdr.BumpSequenceResult(
                stellar_xdr.BumpSequenceResultCode.BUMP_SEQUENCE_SUCCESS
            ),
        )
    if t == OT.INVOKE_HOST_FUNCTION:
        return invoke_result(IHF.INVOKE_HOST_FUNCTION_SUCCESS, bytes(32))
    return classic.op_code(ORC.opNOT_SUPPORTED)


# ---- validity -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """Network parameters validation and apply use."""

    network_id: bytes
    base_fee: int
    base_reserve: int


class SignatureChecker:
    """Which signatures of a transaction verify, and whether all were used."""

    def __init__(
        self, payload_hash: bytes, signatures: list[stellar_xdr.DecoratedSignature]
    ) -> None:
        self.hash = payload_hash
        self.signatures = signatures
        self.used = [False] * len(signatures)
        self._verified: dict[tuple[int, bytes], bool] = {}

    def _verifies(self, i: int, raw: bytes) -> bool:
        key = (i, raw)
        if key not in self._verified:
            sig = self.signatures[i]
            ok = False
            if bytes(sig.hint.signature_hint) == raw[-4:] and len(sig.signature.signature) == 64:
                try:
                    VerifyKey(raw).verify(self.hash, bytes(sig.signature.signature))
                    ok = True
                except BadSignatureError:
                    ok = False
            self._verified[key] = ok
        return self._verified[key]

    def check(self, account_id: str, threshold: int = 0) -> bool:
        """The master key's weight (1) must exceed the threshold, as stellar-core requires."""
        raw = StrKey.decode_ed25519_public_key(account_id)
        weight = 0
        for i in range(len(self.signatures)):
            if self._verifies(i, raw):
                self.used[i] = True
                weight = 1
        return weight > threshold

    def all_used(self) -> bool:
        return all(self.used)


def _time_and_ledger_bounds(
    tx: stellar_xdr.Transaction, close_time: int, ledger_seq: int, min_time_close: int
) -> stellar_xdr.TransactionResultCode | None:
    """stellar-core's isTooEarly (time, then ledger) before its isTooLate (time, then ledger).

    `min_time_close` is the close time `minTime` is judged against and `close_time` the one
    `maxTime` is: both the ledger's close time when applying; at submission the last close
    and an upper estimate of the next, as stellar-core's queue judges them.
    """
    cond = tx.cond
    PT = stellar_xdr.PreconditionType
    bounds: stellar_xdr.TimeBounds | None = None
    ledger_bounds: stellar_xdr.LedgerBounds | None = None
    if cond.type == PT.PRECOND_TIME:
        bounds = cond.time_bounds
    elif cond.type == PT.PRECOND_V2 and cond.v2 is not None:
        bounds = cond.v2.time_bounds
        ledger_bounds = cond.v2.ledger_bounds
    min_time = bounds.min_time.time_point.uint64 if bounds is not None else 0
    max_time = bounds.max_time.time_point.uint64 if bounds is not None else 0
    min_ledger = ledger_bounds.min_ledger.uint32 if ledger_bounds is not None else 0
    max_ledger = ledger_bounds.max_ledger.uint32 if ledger_bounds is not None else 0
    if (min_time and min_time > min_time_close) or min_ledger > ledger_seq:
        return TRC.txTOO_EARLY
    if (max_time and max_time < close_time) or (max_ledger and max_ledger <= ledger_seq):
        return TRC.txTOO_LATE
    return None


def _unsupported_preconditions(tx: stellar_xdr.Transaction) -> bool:
    v2 = tx.cond.v2
    if v2 is None:
        return False
    return bool(
        v2.min_seq_num is not None
        or v2.min_seq_age.duration.uint64
        or v2.min_seq_ledger_gap.uint32
        or v2.extra_signers
    )


def min_fee(frame: TxFrame, rules: Rules) -> int:
    """What the transaction must bid: inclusion at the base fee, plus its resource fee."""
    data = frame.soroban_data
    resource = data.resource_fee.int64 if data is not None else 0
    return rules.base_fee * max(len(frame.tx.operations), 1) + resource


def fee_to_charge(frame: TxFrame, rules: Rules) -> int:
    """Without surge pricing the network charges the base fee per operation (plus resources)."""
    fee = min_fee(frame, rules)
    if frame.fee_bump:
        fee += rules.base_fee  # the fee bump counts as one more operation
    return fee


def check_valid(
    view: StateView,
    frame: TxFrame,
    close_time: int,
    ledger_seq: int,
    rules: Rules,
    *,
    min_time_close: int | None = None,
) -> stellar_xdr.TransactionResult | None:
    """stellar-core's checkValid: None when valid, else the error result to report.

    `close_time` judges `maxTime`, `min_time_close` (default: `close_time`) judges `minTime`.
    """
    earliest = close_time if min_time_close is None else min_time_close
    if frame.fee_bump:
        return _check_valid_fee_bump(view, frame, close_time, ledger_seq, rules, earliest)
    return _check_valid_tx(view, frame, close_time, ledger_seq, rules, earliest, charge_fee=True)


def _check_valid_fee_bump(
    view: StateView,
    frame: TxFrame,
    close_time: int,
    ledger_seq: int,
    rules: Rules,
    min_time_close: int,
) -> stellar_xdr.TransactionResult | None:
    fee = fee_to_charge(frame, rules)
    if frame.fee_bid < fee:
        return tx_result(TRC.txINSUFFICIENT_FEE, fee)
    fee_acc = load_account(view, frame.fee_source)
    if fee_acc is None:
        return tx_result(TRC.txNO_ACCOUNT, fee)
    checker = SignatureChecker(frame.hash, frame.outer_signatures)
    if not checker.check(frame.fee_source):
        return tx_result(TRC.txBAD_AUTH, fee)
    if not checker.all_used():
        return tx_result(TRC.txBAD_AUTH_EXTRA, fee)
    # stellar-core wants the whole bid available, not just what it will charge
    if classic.available_balance(fee_acc, rules.base_reserve) < frame.fee_bid:
        return tx_result(TRC.txINSUFFICIENT_BALANCE, fee)
    inner = _check_valid_tx(
        view, frame, close_time, ledger_seq, rules, min_time_close, charge_fee=False
    )
    if inner is not None:
        return wrap_fee_bump(frame, inner, fee)
    return None


def _check_valid_tx(
    view: StateView,
    frame: TxFrame,
    close_time: int,
    ledger_seq: int,
    rules: Rules,
    min_time_close: int,
    *,
    charge_fee: bool,
) -> stellar_xdr.TransactionResult | None:
    tx = frame.tx
    fee = fee_to_charge(frame, rules)
    ops = frame.ops
    if not ops:
        return tx_result(TRC.txMISSING_OPERATION, fee)
    if len(ops) > MAX_OPS:
        return tx_result(TRC.txMALFORMED, fee)
    data = frame.soroban_data
    if frame.is_soroban:
        if len(ops) != 1 or data is None:
            return tx_result(TRC.txMALFORMED, fee)
        if soroban.check_resources(data.resources) is not None or data.resource_fee.int64 < 0:
            return tx_result(TRC.txSOROBAN_INVALID, fee)
        # stellar-core checks the declared resource fee with the Soroban rules, before the
        # time bounds: above the whole fee (a fee bump's inner transaction is exempt since
        # protocol 23) or below what the resources cost is txSOROBAN_INVALID
        if charge_fee and data.resource_fee.int64 > tx.fee.uint32:
            return tx_result(TRC.txSOROBAN_INVALID, fee)
        needed = soroban.resources_fee(data.resources) + soroban.size_fee(frame.size)
        if data.resource_fee.int64 < needed:
            return tx_result(TRC.txSOROBAN_INVALID, fee)
    elif data is not None:
        return tx_result(TRC.txMALFORMED, fee)
    if _unsupported_preconditions(tx):
        return tx_result(TRC.txNOT_SUPPORTED, fee)
    bounds = _time_and_ledger_bounds(tx, close_time, ledger_seq, min_time_close)
    if bounds is not None:
        return tx_result(bounds, fee)
    # the inclusion fee (the bid above the declared resource fee) must meet the base fee
    if charge_fee and tx.fee.uint32 < min_fee(frame, rules):
        return tx_result(TRC.txINSUFFICIENT_FEE, fee)
    source = load_account(view, frame.source)
    if source is None:
        return tx_result(TRC.txNO_ACCOUNT, fee)
    if frame.seq != source.seq_num + 1:
        return tx_result(TRC.txBAD_SEQ, fee)
    checker = SignatureChecker(frame.inner_hash, frame.signatures)
    if not checker.check(frame.source):
        return tx_result(TRC.txBAD_AUTH, fee)
    # stellar-core wants the whole bid available, not just what it will charge
    if charge_fee and classic.available_balance(source, rules.base_reserve) < tx.fee.uint32:
        return tx_result(TRC.txINSUFFICIENT_BALANCE, fee)
    results: list[stellar_xdr.OperationResult] = []
    failed = False
    for op in ops:
        op_source = frame.op_source(op)
        if failed:
            results.append(_default_result(op))
            continue
        if load_account(view, op_source) is None:
            results.append(classic.op_code(ORC.opNO_ACCOUNT))
            failed = True
        elif not checker.check(op_source):
            results.append(classic.op_code(ORC.opBAD_AUTH))
            failed = True
        elif (bad := classic.check_valid(op, op_source)) is not None:
            results.append(bad)
            failed = True
        else:
            results.append(_default_result(op))
    if failed:
        return tx_result(TRC.txFAILED, fee, results)
    if not checker.all_used():
        return tx_result(TRC.txBAD_AUTH_EXTRA, fee)
    return None


# ---- apply --------------------------------------------------------------------------


@dataclass
class Applied:
    """A transaction applied in a ledger: result, meta and the events it produced."""

    frame: TxFrame
    result: stellar_xdr.TransactionResult
    meta: stellar_xdr.TransactionMeta
    fee_changes: stellar_xdr.LedgerEntryChanges
    contract_events: list[list[stellar_xdr.ContractEvent]]
    transaction_events: list[stellar_xdr.TransactionEvent]
    diagnostics: list[stellar_xdr.DiagnosticEvent]

    @property
    def successful(self) -> bool:
        return self.result.result.code in (TRC.txSUCCESS, TRC.txFEE_BUMP_INNER_SUCCESS)


@dataclass(frozen=True, slots=True)
class ApplyContext:
    rules: Rules
    ledger: LedgerInfo
    contracts: soroban.Contracts
    native_contract: str


def native_contract_id(passphrase: str) -> str:
    return str(Asset.native().contract_id(passphrase))


def charge_fee(
    view: StateView, frame: TxFrame, ctx: ApplyContext
) -> tuple[int, stellar_xdr.LedgerEntryChanges, stellar_xdr.TransactionEvent | None]:
    """The fee phase of a ledger: take the fee before any transaction applies."""
    fee_view = view.child()
    acc = load_account(fee_view, frame.fee_source)
    if acc is None:
        return 0, stellar_xdr.LedgerEntryChanges([]), None
    fee = min(fee_to_charge(frame, ctx.rules), acc.balance)
    store_account(fee_view, replace(acc, balance=acc.balance - fee))
    changes = fee_view.meta_changes()
    fee_view.commit()
    event = stellar_xdr.TransactionEvent(
        stellar_xdr.TransactionEventStage.TRANSACTION_EVENT_STAGE_BEFORE_ALL_TXS,
        contract_event(
            ctx.native_contract,
            stellar_xdr.ContractEventType.CONTRACT,
            [v.symbol("fee"), v.address(frame.fee_source)],
            v.i128(fee),
        ),
    )
    return fee, changes, event


def apply_tx(
    view: StateView,
    frame: TxFrame,
    fee: int,
    fee_changes: stellar_xdr.LedgerEntryChanges,
    fee_event: stellar_xdr.TransactionEvent | None,
    ctx: ApplyContext,
) -> Applied:
    """Apply a validated transaction whose fee is already charged."""
    seq_view = view.child()
    acc = load_account(seq_view, frame.source)
    assert acc is not None
    store_account(seq_view, replace(acc, seq_num=frame.seq))
    changes_before = seq_view.meta_changes()
    seq_view.commit()

    ops_view = view.child()
    op_metas: list[stellar_xdr.OperationMetaV2] = []
    results: list[stellar_xdr.OperationResult] = []
    contract_events: list[list[stellar_xdr.ContractEvent]] = []
    diagnostics: list[stellar_xdr.DiagnosticEvent] = []
    return_value: stellar_xdr.SCVal | None = None
    success = True
    internal = False
    classic_ctx = classic.ClassicContext(
        ctx.ledger.seq, ctx.rules.base_reserve, ctx.rules.network_id, frame.tx.memo
    )
    for op in frame.ops:
        op_view = ops_view.child()
        source = frame.op_source(op)
        events: list[stellar_xdr.ContractEvent] = []
        try:
            if (
                op.body.type == OT.INVOKE_HOST_FUNCTION
                and op.body.invoke_host_function_op is not None
            ):
                op_result, ok, events, diags, return_value = _apply_invoke(
                    op_view, frame, op.body.invoke_host_function_op, source, ctx
                )
                diagnostics.extend(diags)
            else:
                op_result, ok, events = classic.apply(op_view, classic_ctx, op, source)
        except Exception:
            # A defect here must not take the ledger down with it: the transaction
            # fails as stellar-core reports its own internal errors, and changes nothing.
            log.exception("internal error applying %s", frame.hash_hex)
            internal = True
            success = False
            break
        results.append(op_result)
        if not ok:
            success = False
            continue
        op_metas.append(
            stellar_xdr.OperationMetaV2(
                stellar_xdr.ExtensionPoint(0), op_view.meta_changes(), events
            )
        )
        contract_events.append(events)
        op_view.commit()
    if success:
        ops_view.commit()
    else:
        op_metas, contract_events, return_value = [], [], None

    code = TRC.txSUCCESS if success else TRC.txFAILED
    inner = tx_result(TRC.txINTERNAL_ERROR, fee) if internal else tx_result(code, fee, results)
    result = wrap_fee_bump(frame, inner, fee) if frame.fee_bump else inner
    tx_events = [fee_event] if fee_event is not None else []
    meta = stellar_xdr.TransactionMeta(
        4,
        v4=stellar_xdr.TransactionMetaV4(
            ext=stellar_xdr.ExtensionPoint(0),
            tx_changes_before=changes_before,
            operations=op_metas,
            tx_changes_after=stellar_xdr.LedgerEntryChanges([]),
            soroban_meta=(
                stellar_xdr.SorobanTransactionMetaV2(
                    stellar_xdr.SorobanTransactionMetaExt(0), return_value
                )
                if frame.is_soroban
                else None
            ),
            events=tx_events,
            diagnostic_events=diagnostics,
        ),
    )
    return Applied(frame, result, meta, fee_changes, contract_events, tx_events, diagnostics)


def _apply_invoke(
    view: StateView,
    frame: TxFrame,
    op: stellar_xdr.InvokeHostFunctionOp,
    source: str,
    ctx: ApplyContext,
) -> tuple[
    stellar_xdr.OperationResult,
    bool,
    list[stellar_xdr.ContractEvent],
    list[stellar_xdr.DiagnosticEvent],
    stellar_xdr.SCVal | None,
]:
    data = frame.soroban_data
    assert data is not None
    outcome = soroban.invoke(
        view,
        ctx.ledger,
        op,
        source,
        ctx.contracts,
        footprint=Footprint.from_xdr(data.resources.footprint),
        auth_mode=AuthMode.ENFORCE,
        instruction_limit=data.resources.instructions.uint32,
    )
    if outcome.error is not None:
        code = (
            IHF.INVOKE_HOST_FUNCTION_RESOURCE_LIMIT_EXCEEDED
            if outcome.resource_limit_exceeded
            else IHF.INVOKE_HOST_FUNCTION_TRAPPED
        )
        return invoke_result(code), False, [], outcome.diagnostics, None
    assert outcome.return_value is not None
    preimage = stellar_xdr.InvokeHostFunctionSuccessPreImage(outcome.return_value, outcome.events)
    success_hash = hashlib.sha256(preimage.to_xdr_bytes()).digest()
    return (
        invoke_result(IHF.INVOKE_HOST_FUNCTION_SUCCESS, success_hash),
        True,
        outcome.events,
        [],
        outcome.return_value,
    )
