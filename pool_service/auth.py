"""Who a PoolerService caller is: a client certificate of the pool's CA plus the
pooler's API key (`authorization: Bearer <key>`); and the limits on both (a pooler's
calls, a certificate's refused attempts), shared by every replica through the database
(`kalepool.limits`)."""

from __future__ import annotations

from typing import Any

import grpc

from kalepool.bounds import show
from kalepool.grpc_server import (
    PermissionDenied,
    ResourceExhausted,
    StatusError,
    Unauthenticated,
    caller_name,
)
from kalepool.limits import Limit, RateLimits
from kalepool.tls import OPERATOR, POOL_CLIENT, POOL_SERVER, WALLET_SERVER
from pool_service.books.poolers import PoolerRow, PoolerStore
from pool_service.registry import hash_api_key

# The service identities of the deployment are not poolers, whatever key they send.
RESERVED_NAMES = frozenset({OPERATOR, POOL_CLIENT, POOL_SERVER, WALLET_SERVER})

POOLER_CALLS = "pooler"
FAILED_AUTH = "failed_auth"


def bearer_key(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The API key of the call's `authorization: Bearer …` metadata."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Authenticator:
    """Resolves the calling pooler from its key; refuses, and rate-limits, the rest.

    A certificate whose refused attempts (no key, a wrong or revoked key, a disabled
    pooler, a service identity) used up `failed` is refused before its key is even
    looked up: a flood of guesses costs one read of its bucket each, not a key lookup.
    A known pooler's calls are limited by `per_pooler`, whichever certificate it uses.
    """

    def __init__(
        self, poolers: PoolerStore, limits: RateLimits, per_pooler: Limit, failed: Limit
    ) -> None:
        self.poolers = poolers
        self.limits = limits
        self.per_pooler = per_pooler
        self.failed = failed

    async def pooler(self, context: grpc.aio.ServicerContext[Any, Any]) -> PoolerRow:
        name = caller_name(context)
        if name is None:
            raise Unauthenticated("a client certificate is required")
        if await self.limits.spent(self.failed, name):
            self.limits.refused(self.failed)
            raise ResourceExhausted(
                f"client certificate {show(name)} had more than {self.failed.per_minute}"
                " refused attempts a minute; fix its API key and retry later"
            )
        try:
            pooler = await self._identify(name, context)
        except StatusError:
            await self.limits.take(self.failed, name)
            raise
        await self.limits.admit(self.per_pooler, str(pooler.id), f"pooler {pooler.id}")
        return pooler

    async def _identify(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> PoolerRow:
        """The active pooler whose key the call sends, or the refusal."""
        if name in RESERVED_NAMES:
            raise PermissionDenied(f"caller {name!r} is not a pooler")
        key = bearer_key(context)
        if key is None:
            raise Unauthenticated("send the pooler's API key as 'authorization: Bearer <key>'")
        # Never log or echo the key: only whether it matched.
        pooler = await self.poolers.pooler_by_key(hash_api_key(key))
        if pooler is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        if not pooler.is_active:
            raise PermissionDenied(f"pooler {pooler.id} is disabled")
        return pooler
