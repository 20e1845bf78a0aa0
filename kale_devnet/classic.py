"""Classic operations the pool needs: CreateAccount, Payment, ChangeTrust, AccountMerge,
BumpSequence, with stellar-core's validity checks, reserves and result codes, and the
token events protocol 23 has them emit (CAP-67, `token_events`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from stellar_sdk import StrKey
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import token_events
from kale_devnet.ledger import (
    AUTHORIZED_FLAG,
    I64_MAX,
    AccountRec,
    StateView,
    TrustlineRec,
    account_id_str,
    account_key,
    delete_trustline,
    load_account,
    load_trustline,
    store_account,
    store_trustline,
)

OT = stellar_xdr.OperationType
CAR = stellar_xdr.CreateAccountResultCode
PR = stellar_xdr.PaymentResultCode
CTR = stellar_xdr.ChangeTrustResultCode
AMR = stellar_xdr.AccountMergeResultCode
BSR = stellar_xdr.BumpSequenceResultCode

SUPPORTED = {
    OT.CREATE_ACCOUNT,
    OT.PAYMENT,
    OT.CHANGE_TRUST,
    OT.ACCOUNT_MERGE,
    OT.BUMP_SEQUENCE,
    OT.INVOKE_HOST_FUNCTION,
}


NATIVE = stellar_xdr.Asset(stellar_xdr.AssetType.ASSET_TYPE_NATIVE)

Events = list[stellar_xdr.ContractEvent]


@dataclass(frozen=True, slots=True)
class ClassicContext:
    ledger_seq: int
    base_reserve: int
    network_id: bytes  # the asset contract ids the events come from depend on it
    memo: stellar_xdr.Memo  # the transaction's memo: a classic event's `to_muxed_id`


def muxed_to_account(muxed: stellar_xdr.MuxedAccount) -> str:
    """The G… account behind a (possibly muxed) account."""
    if muxed.ed25519 is not None:
        return str(StrKey.encode_ed25519_public_key(muxed.ed25519.uint256))
    assert muxed.med25519 is not None
    return str(StrKey.encode_ed25519_public_key(muxed.med25519.ed25519.uint256))


def min_balance(num_sub_entries: int, base_reserve: int) -> int:
    return (2 + num_sub_entries) * base_reserve


def available_balance(acc: AccountRec, base_reserve: int) -> int:
    """What an account can spend without going under its reserve."""
    return acc.balance - min_balance(acc.num_sub_entries, base_reserve)


def op_result(op_type: stellar_xdr.OperationType, **arm: object) -> stellar_xdr.OperationResult:
    return stellar_xdr.OperationResult(
        stellar_xdr.OperationResultCode.opINNER,
        tr=stellar_xdr.OperationResultTr(type=op_type, **arm),  # type: ignore[arg-type]
    )


def op_code(code: stellar_xdr.OperationResultCode) -> stellar_xdr.OperationResult:
    """An operation result outside opINNER (opBAD_AUTH, opNO_ACCOUNT, opNOT_SUPPORTED)."""
    return stellar_xdr.OperationResult(code)


def _create(code: stellar_xdr.CreateAccountResultCode) -> stellar_xdr.OperationResult:
    return op_result(OT.CREATE_ACCOUNT, create_account_result=stellar_xdr.CreateAccountResult(code))


def _payment(code: stellar_xdr.PaymentResultCode) -> stellar_xdr.OperationResult:
    return op_result(OT.PAYMENT, payment_result=stellar_xdr.PaymentResult(code))


def _trust(code: stellar_xdr.ChangeTrustResultCode) -> stellar_xdr.OperationResult:
    return op_result(OT.CHANGE_TRUST, change_trust_result=stellar_xdr.ChangeTrustResult(code))


def _merge(
    code: stellar_xdr.AccountMergeResultCode, balance: int | None = None
) -> stellar_xdr.OperationResult:
    return op_result(
        OT.ACCOUNT_MERGE,
        account_merge_result=stellar_xdr.AccountMergeResult(
            code, None if balance is None else stellar_xdr.Int64(balance)
        ),
    )


def _bump(code: stellar_xdr.BumpSequenceResultCode) -> stellar_xdr.OperationResult:
    return op_result(OT.BUMP_SEQUENCE, bump_seq_result=stellar_xdr.BumpSequenceResult(code))


def _asset_code_issuer(
    asset: stellar_xdr.Asset | stellar_xdr.ChangeTrustAsset,
) -> tuple[str, str] | None:
    """(code, issuer) of a credit asset, None for native; ValueError if malformed."""
    AT = stellar_xdr.AssetType
    if asset.type == AT.ASSET_TYPE_NATIVE:
        return None
    if asset.type == AT.ASSET_TYPE_CREDIT_ALPHANUM4 and asset.alpha_num4 is not None:
        raw = bytes(asset.alpha_num4.asset_code.asset_code4)
        issuer = account_id_str(asset.alpha_num4.issuer)
        max_len, min_len = 4, 1
    elif asset.type == AT.ASSET_TYPE_CREDIT_ALPHANUM12 and asset.alpha_num12 is not None:
        raw = bytes(asset.alpha_num12.asset_code.asset_code12)
        issuer = account_id_str(asset.alpha_num12.issuer)
        max_len, min_len = 12, 5
    else:
        raise ValueError("unsupported asset type")
    code = raw.rstrip(b"\x00")
    if not min_len <= len(code) <= max_len or b"\x00" in code or not code.isalnum():
        raise ValueError("malformed asset code")
    return code.decode(), issuer


def check_valid(op: stellar_xdr.Operation, source: str) -> stellar_xdr.OperationResult | None:
    """stellar-core's per-operation validity checks (doCheckValid): malformed inputs."""
    body = op.body
    if body.type not in SUPPORTED:
        return op_code(stellar_xdr.OperationResultCode.opNOT_SUPPORTED)
    if body.type == OT.CREATE_ACCOUNT and body.create_account_op is not None:
        o = body.create_account_op
        if o.starting_balance.int64 < 0 or account_id_str(o.destination) == source:
            return _create(CAR.CREATE_ACCOUNT_MALFORMED)
    elif body.type == OT.PAYMENT and body.payment_op is not None:
        p = body.payment_op
        try:
            _asset_code_issuer(p.asset)
        except ValueError:
            return _payment(PR.PAYMENT_MALFORMED)
        if p.amount.int64 <= 0:
            return _payment(PR.PAYMENT_MALFORMED)
    elif body.type == OT.CHANGE_TRUST and body.change_trust_op is not None:
        t = body.change_trust_op
        try:
            asset = _asset_code_issuer(t.line)
        except ValueError:
            return _trust(CTR.CHANGE_TRUST_MALFORMED)
        if asset is None or t.limit.int64 < 0 or asset[1] == source:
            return _trust(CTR.CHANGE_TRUST_MALFORMED)
    elif body.type == OT.ACCOUNT_MERGE and body.destination is not None:
        if muxed_to_account(body.destination) == source:
            return _merge(AMR.ACCOUNT_MERGE_MALFORMED)
    elif (
        body.type == OT.BUMP_SEQUENCE
        and body.bump_sequence_op is not None
        and body.bump_sequence_op.bump_to.sequence_number.int64 < 0
    ):
        return _bump(BSR.BUMP_SEQUENCE_BAD_SEQ)
    return None


def apply(
    view: StateView, ctx: ClassicContext, op: stellar_xdr.Operation, source: str
) -> tuple[stellar_xdr.OperationResult, bool, Events]:
    """Apply one classic operation; returns (result, success, the events it emitted)."""
    body = op.body
    events: Events = []
    if load_account(view, source) is None:
        return op_code(stellar_xdr.OperationResultCode.opNO_ACCOUNT), False, events
    if body.type == OT.CREATE_ACCOUNT and body.create_account_op is not None:
        result, ok = _apply_create(view, ctx, body.create_account_op, source, events)
    elif body.type == OT.PAYMENT and body.payment_op is not None:
        result, ok = _apply_payment(view, ctx, body.payment_op, source, events)
    elif body.type == OT.CHANGE_TRUST and body.change_trust_op is not None:
        result, ok = _apply_change_trust(view, ctx, body.change_trust_op, source)
    elif body.type == OT.ACCOUNT_MERGE and body.destination is not None:
        result, ok = _apply_merge(view, ctx, body.destination, source, events)
    elif body.type == OT.BUMP_SEQUENCE and body.bump_sequence_op is not None:
        acc = load_account(view, source)
        assert acc is not None
        bump_to = body.bump_sequence_op.bump_to.sequence_number.int64
        if bump_to > acc.seq_num:
            store_account(view, replace(acc, seq_num=bump_to))
        result, ok = _bump(BSR.BUMP_SEQUENCE_SUCCESS), True
    else:
        result, ok = op_code(stellar_xdr.OperationResultCode.opNOT_SUPPORTED), False
    # A failed operation fails its transaction, whose operations then leave no meta.
    return result, ok, events if ok else []


def _emit(
    events: Events,
    ctx: ClassicContext,
    asset: stellar_xdr.Asset,
    from_: str,
    to: str,
    amount: int,
    destination: stellar_xdr.MuxedAccount | None,
) -> None:
    """Record the movement's token event; `destination` is the operation's (maybe muxed) one."""
    events.append(
        token_events.classic_event(
            ctx.network_id,
            asset,
            from_,
            to,
            amount,
            token_events.classic_muxed_id(destination, ctx.memo),
        )
    )


def _apply_create(
    view: StateView,
    ctx: ClassicContext,
    o: stellar_xdr.CreateAccountOp,
    source: str,
    events: Events,
) -> tuple[stellar_xdr.OperationResult, bool]:
    dest = account_id_str(o.destination)
    amount = o.starting_balance.int64
    if load_account(view, dest) is not None:
        return _create(CAR.CREATE_ACCOUNT_ALREADY_EXIST), False
    if amount < min_balance(0, ctx.base_reserve):
        return _create(CAR.CREATE_ACCOUNT_LOW_RESERVE), False
    src = load_account(view, source)
    assert src is not None
    if available_balance(src, ctx.base_reserve) < amount:
        return _create(CAR.CREATE_ACCOUNT_UNDERFUNDED), False
    store_account(view, replace(src, balance=src.balance - amount))
    # A new account's sequence number starts at the creating ledger shifted into the high bits.
    store_account(view, AccountRec(dest, amount, ctx.ledger_seq << 32, 0))
    # The destination of CreateAccount cannot be muxed: only the memo can name a sub-account.
    _emit(events, ctx, NATIVE, source, dest, amount, None)
    return _create(CAR.CREATE_ACCOUNT_SUCCESS), True


def _apply_payment(
    view: StateView,
    ctx: ClassicContext,
    p: stellar_xdr.PaymentOp,
    source: str,
    events: Events,
) -> tuple[stellar_xdr.OperationResult, bool]:
    result, ok = _move_payment(view, ctx, p, source)
    if ok:
        # stellar-core emits the movement even for XLM paid to oneself (a transfer to self).
        dest = muxed_to_account(p.destination)
        _emit(events, ctx, p.asset, source, dest, p.amount.int64, p.destination)
    return result, ok


def _move_payment(
    view: StateView, ctx: ClassicContext, p: stellar_xdr.PaymentOp, source: str
) -> tuple[stellar_xdr.OperationResult, bool]:
    dest = muxed_to_account(p.destination)
    amount = p.amount.int64
    asset = _asset_code_issuer(p.asset)
    dest_acc = load_account(view, dest)
    if dest_acc is None:
        return _payment(PR.PAYMENT_NO_DESTINATION), False
    if asset is None:
        if dest == source:
            return _payment(PR.PAYMENT_SUCCESS), True
        src = load_account(view, source)
        assert src is not None
        if dest_acc.balance + amount > I64_MAX:
            return _payment(PR.PAYMENT_LINE_FULL), False
        if available_balance(src, ctx.base_reserve) < amount:
            return _payment(PR.PAYMENT_UNDERFUNDED), False
        store_account(view, replace(src, balance=src.balance - amount))
        dest_now = load_account(view, dest)
        assert dest_now is not None
        store_account(view, replace(dest_now, balance=dest_now.balance + amount))
        return _payment(PR.PAYMENT_SUCCESS), True

    code, issuer = asset
    # Credit the destination first, then debit the source (stellar-core's order of checks).
    if dest != issuer:
        dest_line = load_trustline(view, dest, code, issuer)
        if dest_line is None:
            return _payment(PR.PAYMENT_NO_TRUST), False
        if not dest_line.flags & AUTHORIZED_FLAG:
            return _payment(PR.PAYMENT_NOT_AUTHORIZED), False
        if dest_line.balance + amount > dest_line.limit:
            return _payment(PR.PAYMENT_LINE_FULL), False
        store_trustline(view, replace(dest_line, balance=dest_line.balance + amount))
    if source != issuer:
        src_line = load_trustline(view, source, code, issuer)
        if src_line is None:
            return _payment(PR.PAYMENT_SRC_NO_TRUST), False
        if not src_line.flags & AUTHORIZED_FLAG:
            return _payment(PR.PAYMENT_SRC_NOT_AUTHORIZED), False
        if src_line.balance < amount:
            return _payment(PR.PAYMENT_UNDERFUNDED), False
        store_trustline(view, replace(src_line, balance=src_line.balance - amount))
    return _payment(PR.PAYMENT_SUCCESS), True


def _apply_change_trust(
    view: StateView, ctx: ClassicContext, t: stellar_xdr.ChangeTrustOp, source: str
) -> tuple[stellar_xdr.OperationResult, bool]:
    asset = _asset_code_issuer(t.line)
    assert asset is not None
    code, issuer = asset
    limit = t.limit.int64
    src = load_account(view, source)
    assert src is not None
    line = load_trustline(view, source, code, issuer)
    if line is not None:
        if limit == 0:
            if line.balance > 0:
                return _trust(CTR.CHANGE_TRUST_INVALID_LIMIT), False
            delete_trustline(view, line)
            store_account(view, replace(src, num_sub_entries=src.num_sub_entries - 1))
            return _trust(CTR.CHANGE_TRUST_SUCCESS), True
        if limit < line.balance:
            return _trust(CTR.CHANGE_TRUST_INVALID_LIMIT), False
        store_trustline(view, replace(line, limit=limit))
        return _trust(CTR.CHANGE_TRUST_SUCCESS), True
    if limit == 0:
        return _trust(CTR.CHANGE_TRUST_INVALID_LIMIT), False
    if view.load(account_key(issuer)) is None:
        return _trust(CTR.CHANGE_TRUST_NO_ISSUER), False
    if src.balance < min_balance(src.num_sub_entries + 1, ctx.base_reserve):
        return _trust(CTR.CHANGE_TRUST_LOW_RESERVE), False
    store_trustline(view, TrustlineRec(source, code, issuer, 0, limit, AUTHORIZED_FLAG))
    store_account(view, replace(src, num_sub_entries=src.num_sub_entries + 1))
    return _trust(CTR.CHANGE_TRUST_SUCCESS), True


def _apply_merge(
    view: StateView,
    ctx: ClassicContext,
    destination: stellar_xdr.MuxedAccount,
    source: str,
    events: Events,
) -> tuple[stellar_xdr.OperationResult, bool]:
    dest = muxed_to_account(destination)
    dest_acc = load_account(view, dest)
    if dest_acc is None:
        return _merge(AMR.ACCOUNT_MERGE_NO_ACCOUNT), False
    src = load_account(view, source)
    assert src is not None
    if src.num_sub_entries > 0:
        return _merge(AMR.ACCOUNT_MERGE_HAS_SUB_ENTRIES), False
    if src.seq_num >= (ctx.ledger_seq << 32):
        return _merge(AMR.ACCOUNT_MERGE_SEQNUM_TOO_FAR), False
    if dest_acc.balance + src.balance > I64_MAX:
        return _merge(AMR.ACCOUNT_MERGE_DEST_FULL), False
    store_account(view, replace(dest_acc, balance=dest_acc.balance + src.balance))
    view.delete(account_key(source))
    _emit(events, ctx, NATIVE, source, dest, src.balance, destination)
    return _merge(AMR.ACCOUNT_MERGE_SUCCESS, src.balance), True
