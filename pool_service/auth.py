"""Who a PoolerService caller is: a client certificate of the pool's CA plus the
pooler's API key (`authorization: Bearer <key>`), and a per-pooler rate limit."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import grpc

from kalepool.grpc_server import PermissionDenied, ResourceExhausted, Unauthenticated, caller_name
from kalepool.tls import OPERATOR, POOL_CLIENT, POOL_SERVER, WALLET_SERVER
from pool_service.books.poolers import PoolerRow, PoolerStore
from pool_service.registry import hash_api_key

# The service identities of the deployment are not poolers, whatever key they send.
RESERVED_NAMES = frozenset({OPERATOR, POOL_CLIENT, POOL_SERVER, WALLET_SERVER})


class RateLimiter:
    """A token bucket per pooler: `per_minute` calls a minute, bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[UUID, tuple[float, float]] = {}

    def allow(self, pooler_id: UUID) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(pooler_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[pooler_id] = (tokens, now)
            return False
        self._buckets[pooler_id] = (tokens - 1.0, now)
        return True


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
    """Resolves the calling pooler from its key; refuses, and rate-limits, the rest."""

    def __init__(self, poolers: PoolerStore, limiter: RateLimiter) -> None:
        self.poolers = poolers
        self.limiter = limiter

    async def pooler(self, context: grpc.aio.ServicerContext[Any, Any]) -> PoolerRow:
        name = caller_name(context)
        if name is None:
            raise Unauthenticated("a client certificate is required")
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
        if not self.limiter.allow(pooler.id):
            raise ResourceExhausted(
                f"pooler {pooler.id} exceeded {int(self.limiter.capacity)} requests a minute;"
                " slow down and retry"
            )
        return pooler
