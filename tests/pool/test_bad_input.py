"""Bad input over every RPC of every service, generated from the proto descriptors.

Each RPC gets requests whose every field is drawn from malformed and boundary values
(ids, addresses, amounts, percentages, block indexes, cursors, page sizes and tokens,
unknown enum numbers, unicode, NUL, empty, oversized strings and lists, whole messages
larger than the servers take). Every answer must be a status a caller can act on,
never INTERNAL or UNKNOWN, with one short sentence that shows no more than a short
prefix of what was sent; a field out of bounds must be INVALID_ARGUMENT; a refused
request must leave the database as it was; and both servers must stay healthy.

The RPCs come from the descriptors, so a new RPC is fuzzed without a line here
(`test_every_rpc_is_fuzzed` fails if a service has no caller below). The examples per
RPC come from KALE_POOL_FUZZ_EXAMPLES (15 here; `make fuzz` runs many more).

The servers run on the test's event loop; the examples run in a thread with blocking
stubs (hypothesis drives a plain function), so the servers keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import pkgutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from stellar_sdk import Keypair, StrKey

import kalepool.v1
from kalepool.bounds import MESSAGE_MAX, SHOWN_MAX, out_of_bounds
from kalepool.grpc_server import MAX_MESSAGE_BYTES
from kalepool.tls import OPERATOR, POOL_CLIENT, POOL_SERVER, WALLET_SERVER, channel_credentials
from tests.dbkit import owner_view

from .conftest import PoolStage

EXAMPLES = int(os.environ.get("KALE_POOL_FUZZ_EXAMPLES", "15"))

# Whom each service answers: (client certificate, which server, sends the pooler's key).
CALLERS = {
    "kalepool.v1.WalletService": (POOL_CLIENT, "wallet", False),
    "kalepool.v1.PoolService": (OPERATOR, "pool", False),
    "kalepool.v1.PoolerService": ("rig-fuzz", "pool", True),
}

# What a refusal may be: each a status a caller can act on.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Tables the servers write whatever the input: the rate limiter's buckets and the chain
# follower's position; neither is something a request asked for.
NOT_COMPARED = {"rate_buckets", "chain_cursors"}
# Liveness stamps of a pooler whose key matched (pool_service.books.poolers, at most every
# 30 s): the machine was seen, whatever it asked; and the row's `updated_at`, which that
# stamp moves. Any other change of a row still shows in its other columns.
NOT_COMPARED_COLUMNS = {"last_seen_at", "last_used_at", "updated_at"}


def services() -> Iterator[Any]:
    """Every service of every generated module of kalepool.v1."""
    for info in pkgutil.iter_modules(kalepool.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"kalepool.v1.{info.name}")
            yield from module.DESCRIPTOR.services_by_name.values()


def test_every_rpc_is_fuzzed() -> None:
    found = {s.full_name: [m.name for m in s.methods] for s in services()}
    assert set(found) == set(CALLERS), "a service without a caller here is not fuzzed"
    assert sum(len(m) for m in found.values()) >= 27  # the descriptors were read at all


# --- values ------------------------------------------------------------------------------

_VALID_ADDRESS = Keypair.random().public_key  # well formed, of no account
_TEXT = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "x" * 64,
            "x" * 65,
            "x" * 201,
            "x" * 1000,
            "x" * 1001,
            "x" * 100_000,
            "\x00",
            "a\x00b",
            "'; DROP TABLE poolers; --",
            "ñ" * 70,
            "🌱" * 30,
            "\u202e\ufeff",
            "G" + "A" * 55,  # the shape of an account, a wrong checksum
            _VALID_ADDRESS,
            _VALID_ADDRESS.lower(),
            "M" + _VALID_ADDRESS[1:],
            "C" + _VALID_ADDRESS[1:],
            "00000000-0000-0000-0000-000000000000",
            "AAAAAAAA-AAAA-4AAA-8AAA-AAAAAAAAAAAA",
            "e30=",  # base64 of {}: a page token this server never issued
            "eyJrIjpbMV0sImYiOiIifQ==",  # {"k":[1],"f":""}
            "%%%",
            "00" * 32,
            "zz" * 32,
        ]
    ),
    st.uuids().map(str),
    st.text(max_size=60),
)
_BYTES = st.one_of(
    st.sampled_from([b"", b"\x00" * 32, b"\xff" * 33, b"x" * 1025]), st.binary(max_size=40)
)
_INT32 = [0, 1, -1, 2**31 - 1, -(2**31)]
_INT64 = [*_INT32, 2**63 - 1, -(2**63), 10**15]
_UINT32 = [0, 1, 10_000, 10_001, 2**31 - 1, 2**31, 2**32 - 1]
_UINT64 = [0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1]


def _ints(fixed: list[int], low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(fixed), st.integers(low, high))


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: _TEXT,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: _ints(_INT32, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: _ints(_INT32, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: _ints(_INT32, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: _ints(_INT64, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: _ints(_INT64, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: _ints(_INT64, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: _ints(_UINT32, 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: _ints(_UINT32, 0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: _ints(_UINT64, 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: _ints(_UINT64, 0, 2**64 - 1),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
}


def _value(field: Any, depth: int) -> st.SearchStrategy[Any]:
    """One value of `field`: a boundary or malformed one of its type."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = sorted(field.enum_type.values_by_number)
        return st.sampled_from([*known, -1, max(known) + 1, 2**31 - 1])
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _SCALARS[field.type]


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` whose fields are each unset or a bad or boundary value."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _value(field, depth)
        if field.is_repeated:
            many = st.lists(value, max_size=3)
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                many = many | st.just([field.default_value or _empty(field)] * 10_001)
            fields[field.name] = many
        else:
            fields[field.name] = st.none() | value

    def build(values: dict[str, Any]) -> Message:
        made = cls()
        for name, value in values.items():
            if value is None:
                continue
            target = getattr(made, name)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, Message):
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(made, name, value)
        return made

    return st.fixed_dictionaries(fields).map(build)


def _empty(field: Any) -> Any:
    return {FieldDescriptor.TYPE_STRING: "", FieldDescriptor.TYPE_BYTES: b""}.get(field.type, 0)


def requests(method: MethodDescriptor) -> st.SearchStrategy[Message]:
    """Requests of `method`, now and then one larger than any server takes."""
    cls = message_factory.GetMessageClass(method.input_type)
    strings = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING]
    huge = [cls(**{f.name: "x" * (MAX_MESSAGE_BYTES + 1)}) for f in strings if not f.is_repeated]
    return messages(method.input_type) | st.sampled_from(huge or [cls()])


# --- the checks --------------------------------------------------------------------------


def _strings(message: Message) -> Iterator[str]:
    """Every string value in `message`, nested ones included."""
    for field, value in message.ListFields():
        items = value if field.is_repeated else [value]
        for item in items:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Message):
                yield from _strings(item)


def _identifier(text: str) -> bool:
    """A well-formed address, UUID or transaction hash: checked, bounded, and named in
    full by messages."""
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        canonical = False
    return (
        canonical
        or (len(text) == 64 and all(c in "0123456789abcdef" for c in text))
        or StrKey.is_valid_ed25519_public_key(text)
        or StrKey.is_valid_med25519_public_key(text)
        or StrKey.is_valid_contract(text)
    )


@dataclass
class Target:
    """One server as the fuzz calls it, with blocking stubs."""

    channels: dict[str, grpc.Channel]
    metadata: tuple[tuple[str, str], ...]
    owner_conninfo: str
    tables: list[str] = dataclasses.field(default_factory=list)
    digest_query: sql.Composed | None = None

    def snapshot(self) -> dict[str, str]:
        """Each table of the services' schemas: its rows' digest, in one query."""
        with psycopg.connect(owner_view(self.owner_conninfo), autocommit=True) as conn:
            if self.digest_query is None:
                self.digest_query = self._digest_query(conn)
            row = conn.execute(self.digest_query).fetchone()
            assert row is not None
            return dict(zip(self.tables, row, strict=True))

    def _digest_query(self, conn: psycopg.Connection[Any]) -> sql.Composed:
        """One SELECT of every compared table's row count and rows' md5."""
        columns = conn.execute(
            "SELECT c.table_schema, c.table_name, array_agg(c.column_name::text"
            " ORDER BY c.ordinal_position) FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE c.table_schema IN ('pool', 'wallet') AND t.table_type = 'BASE TABLE'"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        parts = []
        for schema, name, names in columns:
            if name in NOT_COMPARED:
                continue
            kept = [sql.Identifier(n) for n in names if n not in NOT_COMPARED_COLUMNS]
            row_text = sql.SQL("row({})::text").format(sql.SQL(", ").join(kept))
            parts.append(
                sql.SQL(
                    "(SELECT count(*) || ':' || coalesce(md5(string_agg({row}, ','"
                    " ORDER BY {row})), '') FROM {table})"
                ).format(row=row_text, table=sql.Identifier(schema, name))
            )
            self.tables.append(f"{schema}.{name}")
        return sql.SQL("SELECT {}").format(sql.SQL(", ").join(parts))

    def healthy(self) -> None:
        for server, ch in self.channels.items():
            if server.startswith("health:"):
                got = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert got.status == health_pb2.HealthCheckResponse.SERVING, server


def call(
    ch: grpc.Channel,
    method: MethodDescriptor,
    request: Message,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[grpc.StatusCode, str]:
    """The status and message of one call; a stream that stays open (valid input, nothing
    to send yet) is OK."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    answer = message_factory.GetMessageClass(method.output_type).FromString
    serialize: Callable[[Message], bytes] = lambda m: m.SerializeToString()  # noqa: E731
    try:
        if method.server_streaming:
            stream = ch.unary_stream(path, serialize, answer)
            for _ in stream(request, metadata=metadata, timeout=0.5):
                break
        else:
            ch.unary_unary(path, serialize, answer)(request, metadata=metadata, timeout=20)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if method.server_streaming and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK, ""
        return code, details
    return grpc.StatusCode.OK, ""


def fuzz(target: Target, service: str, method: MethodDescriptor) -> None:
    """EXAMPLES requests of `method`, each checked."""
    ch = target.channels[CALLERS[service][1]]
    metadata = target.metadata if CALLERS[service][2] else ()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(method))
    def one(request: Message) -> None:
        before = target.snapshot()
        code, details = call(ch, method, request, metadata)
        where = f"{service}/{method.name}"
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (where, details)
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (where, code)
        elif out_of_bounds(request) is not None:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (where, code, details)
        if code is not grpc.StatusCode.OK:
            assert code in REFUSALS, (where, code, details)
            assert details and len(details) <= MESSAGE_MAX, (where, details)
            for text in _strings(request):
                if len(text) > SHOWN_MAX and not _identifier(text):
                    assert text[: SHOWN_MAX + 1] not in details, (where, details)
            assert target.snapshot() == before, (where, code, details)
        target.healthy()

    one()


@pytest.mark.parametrize("service", sorted(CALLERS))
async def test_bad_input_is_refused_cleanly(pool: PoolStage, service: str) -> None:
    # Limits high enough for the examples: the limits have tests of their own.
    server = await pool.start(
        rate_limit_requests_per_minute=10**6,
        rate_limit_operator_per_minute=10**6,
        rate_limit_failed_auth_per_minute=10**6,
    )
    _, key = await pool.register_pooler("fuzz")
    client, _, _ = CALLERS[service]

    def open_channel(port: int, name: str, server_name: str) -> grpc.Channel:
        return grpc.secure_channel(
            f"127.0.0.1:{port}",
            channel_credentials(pool.pki.client(name), pool.pki.ca_pem),
            options=[("grpc.ssl_target_name_override", server_name)],
        )

    wallet_port = pool.wallet.server.port
    channels = {
        "pool": open_channel(server.port, client, POOL_SERVER),
        "wallet": open_channel(wallet_port, client, WALLET_SERVER),
        "health:pool": open_channel(server.port, OPERATOR, POOL_SERVER),
        "health:wallet": open_channel(wallet_port, OPERATOR, WALLET_SERVER),
    }
    target = Target(channels, (("authorization", f"Bearer {key}"),), pool.conninfo)
    descriptor = next(s for s in services() if s.full_name == service)

    def run() -> None:
        for method in descriptor.methods:
            fuzz(target, service, method)

    try:
        await asyncio.to_thread(run)
    finally:
        for ch in channels.values():
            ch.close()
