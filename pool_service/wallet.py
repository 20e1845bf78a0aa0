"""The pool's client of WalletService: an mTLS channel as `pool-client`, and the
translation of the wallet's refusals into statuses the pool's own callers understand."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from kalepool.grpc_server import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StatusError,
    Unavailable,
)
from kalepool.tls import WALLET_SERVER, Identity, channel_credentials
from kalepool.v1 import wallet_pb2_grpc

T = TypeVar("T")

_PASSED_ON: dict[grpc.StatusCode, type[StatusError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
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

    Refusals about the request (bad input, unknown wallet, preconditions) keep their code
    and message; anything else (unreachable, internal) is UNAVAILABLE for our caller,
    which may retry: the wallet signs nothing twice for one idempotency key.
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
