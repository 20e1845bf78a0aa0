"""The token events of protocol 23 (CAP-67): one home for their shapes.

The Stellar Asset Contract's own calls and the classic operations that move an asset
emit the same events, from the asset's contract id (whether or not the contract is
deployed):

- `transfer`: topics `[transfer, from, to, sep0011_asset]`;
- `mint` (the issuer pays): topics `[mint, to, sep0011_asset]`;
- `burn` (the issuer is paid): topics `[burn, from, sep0011_asset]`.

The data is the amount as an i128, except that a `transfer` or `mint` whose destination
carries a multiplexing id (a muxed account, or for classic operations a transaction
memo) has the map `{amount: i128, to_muxed_id: u64 | string | bytes}`. Addresses in the
topics never carry the id. `sep0011_asset` is `native` or `CODE:ISSUER`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from stellar_sdk import StrKey
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import values as v
from kale_devnet.host import contract_event

Topics = list[stellar_xdr.SCVal]


def asset_name(asset: stellar_xdr.Asset) -> str:
    """The SEP-11 name of a classic asset: `native` or `CODE:ISSUER`."""
    AT = stellar_xdr.AssetType
    if asset.type == AT.ASSET_TYPE_NATIVE:
        return "native"
    if asset.type == AT.ASSET_TYPE_CREDIT_ALPHANUM4 and asset.alpha_num4 is not None:
        code = bytes(asset.alpha_num4.asset_code.asset_code4)
        issuer = asset.alpha_num4.issuer
    elif asset.type == AT.ASSET_TYPE_CREDIT_ALPHANUM12 and asset.alpha_num12 is not None:
        code = bytes(asset.alpha_num12.asset_code.asset_code12)
        issuer = asset.alpha_num12.issuer
    else:
        raise ValueError("unsupported asset type")
    assert issuer.account_id.ed25519 is not None
    account = StrKey.encode_ed25519_public_key(issuer.account_id.ed25519.uint256)
    return code.rstrip(b"\0").decode() + ":" + account


def asset_issuer(asset: stellar_xdr.Asset) -> str | None:
    """The issuer of a credit asset, None for the native asset."""
    name = asset_name(asset)
    return None if name == "native" else name.split(":", 1)[1]


@lru_cache(maxsize=64)
def _contract_id(network_id: bytes, asset_xdr: bytes) -> str:
    preimage = stellar_xdr.HashIDPreimage(
        stellar_xdr.EnvelopeType.ENVELOPE_TYPE_CONTRACT_ID,
        contract_id=stellar_xdr.HashIDPreimageContractID(
            network_id=stellar_xdr.Hash(network_id),
            contract_id_preimage=stellar_xdr.ContractIDPreimage(
                stellar_xdr.ContractIDPreimageType.CONTRACT_ID_PREIMAGE_FROM_ASSET,
                from_asset=stellar_xdr.Asset.from_xdr_bytes(asset_xdr),
            ),
        ),
    )
    return str(StrKey.encode_contract(hashlib.sha256(preimage.to_xdr_bytes()).digest()))


def asset_contract_id(network_id: bytes, asset: stellar_xdr.Asset) -> str:
    """The asset's contract id on this network (as `Asset.contract_id(passphrase)` derives it)."""
    return _contract_id(network_id, asset.to_xdr_bytes())


def amount_data(amount: int, to_muxed_id: stellar_xdr.SCVal | None) -> stellar_xdr.SCVal:
    """An event's data: the amount, or `{amount, to_muxed_id}` when the destination has an id."""
    if to_muxed_id is None:
        return v.i128(amount)
    return v.struct({"amount": v.i128(amount), "to_muxed_id": to_muxed_id})


def transfer(
    from_: str,
    to: str,
    name: stellar_xdr.SCVal,
    amount: int,
    to_muxed_id: stellar_xdr.SCVal | None = None,
) -> tuple[Topics, stellar_xdr.SCVal]:
    """(topics, data) of a `transfer` event."""
    return (
        [v.symbol("transfer"), v.address(from_), v.address(to), name],
        amount_data(amount, to_muxed_id),
    )


def mint(
    to: str, name: stellar_xdr.SCVal, amount: int, to_muxed_id: stellar_xdr.SCVal | None = None
) -> tuple[Topics, stellar_xdr.SCVal]:
    """(topics, data) of a `mint` event (no admin topic since protocol 23)."""
    return [v.symbol("mint"), v.address(to), name], amount_data(amount, to_muxed_id)


def burn(from_: str, name: stellar_xdr.SCVal, amount: int) -> tuple[Topics, stellar_xdr.SCVal]:
    """(topics, data) of a `burn` event (its data is always the bare amount)."""
    return [v.symbol("burn"), v.address(from_), name], v.i128(amount)


def movement(
    from_: str,
    to: str,
    issuer: str | None,
    name: stellar_xdr.SCVal,
    amount: int,
    to_muxed_id: stellar_xdr.SCVal | None = None,
) -> tuple[Topics, stellar_xdr.SCVal]:
    """(topics, data) of a movement of `amount` from `from_` to `to` (G… or C…).

    Protocol 23 names a movement by who is involved: from the issuer it is a `mint`, to the
    issuer a `burn`, otherwise (and when the issuer pays itself) a `transfer`.
    """
    if from_ != to and from_ == issuer:
        return mint(to, name, amount, to_muxed_id)
    if from_ != to and to == issuer:
        return burn(from_, name, amount)
    return transfer(from_, to, name, amount, to_muxed_id)


def memo_id(memo: stellar_xdr.Memo) -> stellar_xdr.SCVal | None:
    """A transaction memo as a classic event's `to_muxed_id` (None for MEMO_NONE)."""
    MT = stellar_xdr.MemoType
    if memo.type == MT.MEMO_TEXT and memo.text is not None:
        return stellar_xdr.SCVal(
            stellar_xdr.SCValType.SCV_STRING, str=stellar_xdr.SCString(memo.text)
        )
    if memo.type == MT.MEMO_ID and memo.id is not None:
        return v.u64(memo.id.uint64)
    if memo.type == MT.MEMO_HASH and memo.hash is not None:
        return v.bytes_val(memo.hash.hash)
    if memo.type == MT.MEMO_RETURN and memo.ret_hash is not None:
        return v.bytes_val(memo.ret_hash.hash)
    return None


def classic_muxed_id(
    destination: stellar_xdr.MuxedAccount | None, memo: stellar_xdr.Memo
) -> stellar_xdr.SCVal | None:
    """`to_muxed_id` of a classic movement: a muxed destination's id, else the memo.

    `destination` is None where the operation's destination cannot be muxed (CreateAccount),
    which leaves the memo. stellar-core prefers the muxed id when there are both.
    """
    if destination is not None and destination.med25519 is not None:
        return v.u64(destination.med25519.id.uint64)
    return memo_id(memo)


def classic_event(
    network_id: bytes,
    asset: stellar_xdr.Asset,
    from_: str,
    to: str,
    amount: int,
    to_muxed_id: stellar_xdr.SCVal | None,
) -> stellar_xdr.ContractEvent:
    """The event a classic operation emits for moving `amount` of `asset` from `from_` to `to`."""
    topics, data = movement(
        from_, to, asset_issuer(asset), v.string_val(asset_name(asset)), amount, to_muxed_id
    )
    return contract_event(
        asset_contract_id(network_id, asset),
        stellar_xdr.ContractEventType.CONTRACT,
        topics,
        data,
    )
