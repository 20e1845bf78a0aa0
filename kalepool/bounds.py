"""What a request's fields may hold before any of it reaches SQL, and how much of a
caller's input a message may show back.

Every service's server checks each request against its message descriptor
(`out_of_bounds`, run by `kalepool.grpc_server` before the handler): integers that fit the
database's columns (a uint32 above the int32 range would otherwise fail inside PostgreSQL
as an internal error), enum values the contract knows, strings and bytes of a sane length
without NUL (PostgreSQL text cannot hold it), bounded repeated fields and valid
timestamps. Each service still checks what its fields mean (`kalepool.request_checks`,
`pool_service.validate`); this is the floor under all of them, so a new RPC gets it too.

Messages show a caller's raw input through `show` (a short prefix); an identifier a
check has already accepted (an address, a UUID, a transaction hash) is bounded and well
formed, and is named in full.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
TEXT_MAX = 1000
"""Characters of any string field; fields with a meaning are checked tighter."""
PEM_MAX = 16_384
"""Characters of a field named `*_pem` (a certificate: a long chain or an RSA-4096 key's
certificate runs past TEXT_MAX)."""
BYTES_MAX = 1024
REPEATED_MAX = 10_000
PAGE_SIZE_MAX = 500
"""Rows of one page of a List RPC (Pagination.page_size), and of a web API list."""
STAKE_BPS_MAX = 10_000
"""A farmer's stake: 0 to 10000 basis points (100 %)."""
MESSAGE_MAX = 300
"""Characters of any error message a caller gets."""
SHOWN_MAX = 40
"""Characters of the caller's own input a message may show."""

# Timestamp.seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z (the proto's range).
_TIMESTAMP_MIN = -62_135_596_800
_TIMESTAMP_MAX = 253_402_300_799

# uint64 fields whose column holds the whole range (numeric(20,0)): a miner's nonces
# wrap at 2^64. Every other uint64 lands in a bigint.
FULL_UINT64 = frozenset({"kalepool.v1.WorkReport.nonce"})

_UNSIGNED_32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
_UNSIGNED_64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)


def show(value: object) -> str:
    """A caller's value as a message may echo it: its repr, at most SHOWN_MAX characters
    of it, an ellipsis where it was cut."""
    if isinstance(value, str | bytes) and len(value) > SHOWN_MAX:
        return f"{value[:SHOWN_MAX]!r}…"
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else f"{text[:SHOWN_MAX]}…"


def cut(message: str) -> str:
    """A message as a caller gets it: at most MESSAGE_MAX characters."""
    return message if len(message) <= MESSAGE_MAX else f"{message[: MESSAGE_MAX - 1]}…"


def out_of_bounds(message: Message, prefix: str = "") -> str | None:
    """The first field of `message` (recursively) outside what any service takes, as one
    sentence naming it; None when every field is within bounds."""
    if isinstance(message, Timestamp):
        seconds, nanos = message.seconds, message.nanos
        if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX or not 0 <= nanos <= 999_999_999:
            return f"{prefix.rstrip('.') or 'timestamp'} is not a valid time"
        return None
    for field in message.DESCRIPTOR.fields:
        name = f"{prefix}{field.name}"
        value = getattr(message, field.name)
        if field.is_repeated:
            if len(value) > REPEATED_MAX:
                return f"{name} has {len(value)} entries, at most {REPEATED_MAX}"
            for i, item in enumerate(value):
                problem = _item(field, f"{name}[{i}]", item)
                if problem:
                    return problem
        elif field.type != FieldDescriptor.TYPE_MESSAGE or message.HasField(field.name):
            problem = _item(field, name, value)
            if problem:
                return problem
    return None


def _item(field: Any, name: str, value: object) -> str | None:
    """Why one value of `field` (a field descriptor, of either protobuf runtime) is out
    of bounds, or None."""
    kind = field.type
    if kind in _UNSIGNED_32 and isinstance(value, int) and value > INT32_MAX:
        return f"{name} must be at most {INT32_MAX}, got {value}"
    if (
        kind in _UNSIGNED_64
        and isinstance(value, int)
        and value > INT64_MAX
        and field.full_name not in FULL_UINT64
    ):
        return f"{name} must be at most {INT64_MAX}, got {value}"
    if kind == FieldDescriptor.TYPE_STRING and isinstance(value, str):
        longest = PEM_MAX if field.name.endswith("_pem") else TEXT_MAX
        if len(value) > longest:
            return f"{name} is {len(value)} characters long, at most {longest}"
        if "\x00" in value:
            return f"{name} must not contain NUL characters"
    if kind == FieldDescriptor.TYPE_BYTES and isinstance(value, bytes) and len(value) > BYTES_MAX:
        return f"{name} is {len(value)} bytes long, at most {BYTES_MAX}"
    if kind == FieldDescriptor.TYPE_ENUM and isinstance(value, int):
        enum = field.enum_type
        if enum is not None and value not in enum.values_by_number:
            return f"{name} is not a known {enum.name} (got {value})"
    if kind == FieldDescriptor.TYPE_MESSAGE and isinstance(value, Message):
        return out_of_bounds(value, f"{name}.")
    return None
