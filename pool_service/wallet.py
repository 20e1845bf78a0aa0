"""The pool's client of WalletService: an mTLS channel as `pool-client`, the one rule for
which of its refusals prove that nothing was signed, and the translation of its refusals
into statuses the pool's own callers understand."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Protocol, TypeVar

import grpc

from kalepool.grpc_server import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StatusError,
    Unavailable,
)
from kalepool.tls import WALLET_SERVER, Identity, channel_credentials
from kalepool.v1 import wallet_pb2, wallet_pb2_grpc

T = TypeVar("T")

log = logging.getLogger("pool_service")

# Refusals that prove the wallet signed nothing under the idempotency key: it checks the
# request (INVALID_ARGUMENT), then looks the key up (a key already used always replays its
# transaction), then the wallet and the account (NOT_FOUND, FAILED_PRECONDITION) and its
# payout policy (PERMISSION_DENIED: not the registered payout address; RESOURCE_EXHAUSTED:
# over the wallet's limits), all before it builds anything. ALREADY_EXISTS is not one of
# them: it says the key *was* used, for a transaction with other parameters, which may be
# on its way. Any other status (deadline, unavailable, cancelled, internal, a dropped
# connection) may come after the send. Planting and payouts both settle by this rule.
NOTHING_SIGNED: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# Refusals that sign nothing yet settle nothing either: a caller over the wallet's rate
# limit, or a certificate the wallet does not admit (a deployment error). Either passes;
# a plant refused so is asked again (its block may still take it), not recorded as a
# failure that blames someone. A payout refused so fails and is reversed (asked again by
# whoever wants it).
REFUSED_FOR_NOW: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class Refusal(Protocol):
    """A wallet refusal: a call's error (`grpc.aio.AioRpcError`) or one item's
    (`ItemRefusal`), read the same way."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ItemRefusal:
    """The refusal of one item of a batch call (`wallet_pb2.ItemError`), as a Refusal."""

    def __init__(self, error: wallet_pb2.ItemError) -> None:
        self._code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
        self._details = error.message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def nothing_signed(exc: Refusal, key: str) -> bool:
    """Whether the wallet's refusal of the call made under `key` proves nothing was
    signed (see NOTHING_SIGNED). ALREADY_EXISTS is logged as an error: the pool asked
    again with other parameters than its first call under that key, which must never
    happen; the outcome stays pending until an operator looks."""
    code = exc.code()
    if code == grpc.StatusCode.ALREADY_EXISTS:
        log.error(
            "the wallet holds a transaction under %s made with other parameters (%s):"
            " left pending, it may be on its way; compare the wallet's transaction with"
            " the pool's record",
            key,
            exc.details(),
        )
    return code in NOTHING_SIGNED


_PASSED_ON: dict[grpc.StatusCode, type[StatusError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    # the wallet's payout policy: its message says why
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


class WalletClient:
    """A channel to the wallet service and its stub."""

    def __init__(
        self,
        address: str,
        identity: Identity,
        ca_pem: bytes,
        server_name: str = WALLET_SERVER,
    ) -> None:
        self.channel = grpc.aio.secure_channel(
            address,
            channel_credentials(identity, ca_pem),
            options=[("grpc.ssl_target_name_override", server_name)],
        )
        self.stub = wallet_pb2_grpc.WalletServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


async def wallet_call(call: Awaitable[T], what: str) -> T:
    """Await a wallet RPC; its refusal becomes the matching StatusError.

    Refusals about the request (bad input, unknown wallet, preconditions, the payout
    policy) keep their code and message; anything else (unreachable, internal) is
    UNAVAILABLE for our caller, which may retry: the wallet signs nothing twice for one
    idempotency key.
    """
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        kind = _PASSED_ON.get(exc.code())
        if kind is not None:
            raise kind(exc.details() or f"the wallet service refused to {what}") from None
        raise Unavailable(
            f"the wallet service could not {what} ({exc.code().name}); retry later"
        ) from None
