"""Soroban values (SCVal): building, checked decoding, ordering and display.

Contract arguments arrive as SCVal; a value of the wrong type fails the way the host
fails a conversion (`Error(Value, UnexpectedType)`), never with a Python exception.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, cast

from stellar_sdk import Address, scval
from stellar_sdk import xdr as stellar_xdr

from kale_devnet.errors import ErrCode, ErrType, HostError, sc_error_display

T = stellar_xdr.SCValType

I128_MIN = -(2**127)
I128_MAX = 2**127 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


def _unexpected(what: str) -> HostError:
    return HostError(ErrType.SCE_VALUE, ErrCode.SCEC_UNEXPECTED_TYPE, f"expected {what}")


def symbol(name: str) -> stellar_xdr.SCVal:
    return scval.to_symbol(name)


def u32(value: int) -> stellar_xdr.SCVal:
    return scval.to_uint32(value)


def u64(value: int) -> stellar_xdr.SCVal:
    return scval.to_uint64(value)


def i128(value: int) -> stellar_xdr.SCVal:
    if not I128_MIN <= value <= I128_MAX:
        raise HostError(ErrType.SCE_OBJECT, ErrCode.SCEC_ARITH_DOMAIN, "i128 overflow")
    return scval.to_int128(value)


def bytes_val(value: bytes) -> stellar_xdr.SCVal:
    return scval.to_bytes(value)


def string_val(value: str) -> stellar_xdr.SCVal:
    return scval.to_string(value)


def boolean(value: bool) -> stellar_xdr.SCVal:
    return scval.to_bool(value)


def void() -> stellar_xdr.SCVal:
    return stellar_xdr.SCVal(T.SCV_VOID)


def vec(items: Iterable[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
    return stellar_xdr.SCVal(T.SCV_VEC, vec=stellar_xdr.SCVec(list(items)))


@functools.lru_cache(maxsize=65536)
def _parsed(strkey: str) -> Address:
    # Checking and decoding a strkey (base32 and its checksum) was a tenth of the devnet's
    # time under load; an Address is never changed once made, so each is parsed once.
    return Address(strkey)


def address(strkey: str) -> stellar_xdr.SCVal:
    return stellar_xdr.SCVal(T.SCV_ADDRESS, address=_parsed(strkey).to_xdr_sc_address())


def sorted_map(entries: Iterable[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]]) -> stellar_xdr.SCVal:
    """An ScMap with its keys in the host's order (maps must be sorted and unique)."""
    items = sorted(entries, key=lambda kv: sort_key(kv[0]))
    return stellar_xdr.SCVal(
        T.SCV_MAP, map=stellar_xdr.SCMap([stellar_xdr.SCMapEntry(k, v) for k, v in items])
    )


def struct(fields: Mapping[str, stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
    """A `#[contracttype]` struct: an ScMap keyed by field-name symbols, sorted."""
    return sorted_map((symbol(name), value) for name, value in fields.items())


def option_u32(value: int | None) -> stellar_xdr.SCVal:
    return void() if value is None else u32(value)


def as_u32(val: stellar_xdr.SCVal) -> int:
    if val.type != T.SCV_U32 or val.u32 is None:
        raise _unexpected("u32")
    return int(val.u32.uint32)


def as_u64(val: stellar_xdr.SCVal) -> int:
    if val.type != T.SCV_U64 or val.u64 is None:
        raise _unexpected("u64")
    return int(val.u64.uint64)


def as_i128(val: stellar_xdr.SCVal) -> int:
    if val.type != T.SCV_I128 or val.i128 is None:
        raise _unexpected("i128")
    return int(scval.from_int128(val))


def as_bool(val: stellar_xdr.SCVal) -> bool:
    if val.type != T.SCV_BOOL or val.b is None:
        raise _unexpected("bool")
    return bool(val.b)


def as_bytes(val: stellar_xdr.SCVal, size: int | None = None) -> bytes:
    if val.type != T.SCV_BYTES or val.bytes is None:
        raise _unexpected("bytes")
    raw = bytes(val.bytes.sc_bytes)
    if size is not None and len(raw) != size:
        raise HostError(ErrType.SCE_VALUE, ErrCode.SCEC_UNEXPECTED_SIZE, f"expected {size} bytes")
    return raw


def as_option_u32(val: stellar_xdr.SCVal) -> int | None:
    return None if val.type == T.SCV_VOID else as_u32(val)


def as_sc_address(val: stellar_xdr.SCVal) -> stellar_xdr.SCAddress:
    """An account or contract address (the only kinds a contract argument may carry)."""
    if val.type != T.SCV_ADDRESS or val.address is None:
        raise _unexpected("address")
    if val.address.type not in (
        stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_ACCOUNT,
        stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_CONTRACT,
    ):
        raise _unexpected("account or contract address")
    return val.address


def as_address(val: stellar_xdr.SCVal) -> str:
    return address_str(as_sc_address(val))


def as_destination(val: stellar_xdr.SCVal) -> tuple[str, int | None]:
    """A destination that may be muxed (CAP-67): the account or contract, and the id if any."""
    if (
        val.type == T.SCV_ADDRESS
        and val.address is not None
        and val.address.type == stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_MUXED_ACCOUNT
        and val.address.muxed_account is not None
    ):
        muxed = val.address.muxed_account
        return (
            str(Address.from_raw_account(muxed.ed25519.uint256).address),
            int(muxed.id.uint64),
        )
    return as_address(val), None


def address_str(sc: stellar_xdr.SCAddress) -> str:
    return str(Address.from_xdr_sc_address(sc).address)


def is_account(strkey: str) -> bool:
    return strkey.startswith("G")


def struct_fields(val: stellar_xdr.SCVal, names: Iterable[str]) -> dict[str, stellar_xdr.SCVal]:
    """Read a contracttype struct (a symbol-keyed map) that must hold exactly `names`."""
    if val.type != T.SCV_MAP or val.map is None:
        raise _unexpected("struct map")
    fields: dict[str, stellar_xdr.SCVal] = {}
    for entry in val.map.sc_map:
        if entry.key.type != T.SCV_SYMBOL or entry.key.sym is None:
            raise _unexpected("symbol field name")
        fields[bytes(entry.key.sym.sc_symbol).decode()] = entry.val
    if set(fields) != set(names):
        raise _unexpected(f"struct fields {sorted(names)}")
    return fields


def sort_key(val: stellar_xdr.SCVal) -> tuple[Any, ...]:
    """The host's total order on values: by type tag, then by content."""
    t = val.type
    payload: Any
    if t == T.SCV_BOOL:
        payload = bool(val.b)
    elif t == T.SCV_VOID or t == T.SCV_LEDGER_KEY_CONTRACT_INSTANCE:
        payload = 0
    elif t == T.SCV_U32 and val.u32 is not None:
        payload = val.u32.uint32
    elif t == T.SCV_I32 and val.i32 is not None:
        payload = val.i32.int32
    elif t == T.SCV_U64 and val.u64 is not None:
        payload = val.u64.uint64
    elif t == T.SCV_I64 and val.i64 is not None:
        payload = val.i64.int64
    elif t in (T.SCV_U128, T.SCV_I128, T.SCV_U256, T.SCV_I256, T.SCV_TIMEPOINT, T.SCV_DURATION):
        payload = cast(int, scval.to_native(val))
    elif t == T.SCV_BYTES and val.bytes is not None:
        payload = bytes(val.bytes.sc_bytes)
    elif t == T.SCV_STRING and val.str is not None:
        payload = bytes(val.str.sc_string)
    elif t == T.SCV_SYMBOL and val.sym is not None:
        payload = bytes(val.sym.sc_symbol)
    elif t == T.SCV_VEC:
        payload = tuple(sort_key(v) for v in (val.vec.sc_vec if val.vec else []))
    elif t == T.SCV_MAP:
        payload = tuple(
            (sort_key(e.key), sort_key(e.val)) for e in (val.map.sc_map if val.map else [])
        )
    elif t == T.SCV_ADDRESS and val.address is not None:
        payload = (val.address.type.value, val.address.to_xdr_bytes())
    else:
        payload = val.to_xdr_bytes()
    return (t.value, payload)


def display(val: stellar_xdr.SCVal) -> str:
    """A short human rendering, close to the host's diagnostic event log."""
    t = val.type
    if t == T.SCV_SYMBOL and val.sym is not None:
        return bytes(val.sym.sc_symbol).decode(errors="replace")
    if t == T.SCV_ADDRESS and val.address is not None:
        try:
            return address_str(val.address)
        except Exception:  # an address kind the SDK cannot render as a strkey
            return val.address.to_xdr()
    if t == T.SCV_STRING and val.str is not None:
        return '"' + bytes(val.str.sc_string).decode(errors="replace") + '"'
    if t == T.SCV_BYTES and val.bytes is not None:
        return "Bytes(" + bytes(val.bytes.sc_bytes).hex() + ")"
    if t == T.SCV_VOID:
        return "Void"
    if t == T.SCV_BOOL:
        return "true" if val.b else "false"
    if t == T.SCV_ERROR and val.error is not None:
        return sc_error_display(val.error)
    if t == T.SCV_VEC:
        return "[" + ", ".join(display(v) for v in (val.vec.sc_vec if val.vec else [])) + "]"
    if t == T.SCV_MAP:
        items = val.map.sc_map if val.map else []
        return "{" + ", ".join(f"{display(e.key)}: {display(e.val)}" for e in items) + "}"
    if t in (
        T.SCV_U32,
        T.SCV_I32,
        T.SCV_U64,
        T.SCV_I64,
        T.SCV_U128,
        T.SCV_I128,
        T.SCV_U256,
        T.SCV_I256,
        T.SCV_TIMEPOINT,
        T.SCV_DURATION,
    ):
        return str(scval.to_native(val))
    return t.name


def error_val(err: HostError) -> stellar_xdr.SCVal:
    return stellar_xdr.SCVal(T.SCV_ERROR, error=err.sc_error())
