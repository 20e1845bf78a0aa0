"""Who a PoolerService caller is: the pooler's API key (`authorization: Bearer <key>`)
together with a client certificate registered for that same pooler; and the limits on
both (a pooler's calls, a certificate's refused attempts), shared by every replica through
the database (`kalepool.limits`). An open stream is re-checked every few seconds and
ended once the pooler is disabled or its key or certificate revoked."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

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
from kalepool.tls import SERVICE_NAMES, pem_fingerprint
from pool_service.books.certificates import CertificateStore
from pool_service.books.poolers import PoolerRow, PoolerStore
from pool_service.registry import hash_api_key

T = TypeVar("T")


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


@functools.lru_cache(maxsize=1024)
def _fingerprint_of(cert_pem: bytes) -> str:
    return pem_fingerprint(cert_pem)


def presented_fingerprint(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The SHA-256 fingerprint of the client certificate the call's TLS session presented
    (the handshake verified it against the CA already)."""
    for pem in context.auth_context().get("x509_pem_cert") or ():
        return _fingerprint_of(bytes(pem))
    return None


@dataclass(frozen=True)
class Caller:
    """An admitted PoolerService call: the pooler, and the key and certificate it used."""

    pooler: PoolerRow
    key_hash: bytes
    fingerprint: str


class Authenticator:
    """Resolves the calling pooler from its key and certificate together; refuses, and
    rate-limits, the rest.

    A certificate whose refused attempts (no key, a wrong or revoked key, a foreign or
    revoked certificate, a disabled pooler, a service identity) used up `failed` is
    refused before its key is even looked up: a flood of guesses costs one read of its
    bucket each, not a key lookup. A known pooler's calls are limited by `per_pooler`,
    whichever certificate it uses.
    """

    def __init__(
        self,
        poolers: PoolerStore,
        certificates: CertificateStore,
        limits: RateLimits,
        per_pooler: Limit,
        failed: Limit,
        recheck_seconds: float = 5.0,
    ) -> None:
        self.poolers = poolers
        self.certificates = certificates
        self.limits = limits
        self.per_pooler = per_pooler
        self.failed = failed
        self.recheck_seconds = recheck_seconds

    async def pooler(self, context: grpc.aio.ServicerContext[Any, Any]) -> PoolerRow:
        """The calling pooler (see `caller`)."""
        return (await self.caller(context)).pooler

    async def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The call's pooler: its API key must be live and the certificate presented an
        active certificate of that same pooler; the pooler must be active and within its
        rate limit."""
        name = caller_name(context)
        fingerprint = presented_fingerprint(context)
        if name is None or fingerprint is None:
            raise Unauthenticated("a client certificate is required")
        # Refused attempts are counted per certificate (its fingerprint: two certificates
        # of one name are two buckets).
        if await self.limits.spent(self.failed, fingerprint):
            self.limits.refused(self.failed)
            raise ResourceExhausted(
                f"client certificate {show(name)} had more than {self.failed.per_minute}"
                " refused attempts a minute; fix its API key and retry later"
            )
        try:
            caller = await self._identify(name, fingerprint, context)
        except StatusError:
            await self.limits.take(self.failed, fingerprint)
            raise
        pooler_id = caller.pooler.id
        await self.limits.admit(self.per_pooler, str(pooler_id), f"pooler {pooler_id}")
        return caller

    async def _identify(
        self, name: str, fingerprint: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Caller:
        """The active pooler whose key the call sends and whose certificate it presents,
        or the refusal."""
        if name in SERVICE_NAMES:
            raise PermissionDenied(f"caller {show(name)} is not a pooler")
        key = bearer_key(context)
        if key is None:
            raise Unauthenticated("send the pooler's API key as 'authorization: Bearer <key>'")
        # Never log or echo the key: only whether it matched.
        key_hash = hash_api_key(key)
        pooler = await self.poolers.pooler_by_key(key_hash)
        if pooler is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        # The key names the pooler; the certificate must be that pooler's own. Which
        # pooler a foreign certificate belongs to is never said.
        check = await self.certificates.check(pooler.id, fingerprint)
        if not check.any_active:
            raise PermissionDenied(
                f"pooler {pooler.id} has no active client certificate registered; an"
                " operator must add one (kale-pool pooler cert add)"
            )
        if not check.matches:
            raise PermissionDenied(
                "the client certificate is not an active certificate of the pooler whose"
                " API key was sent; present that pooler's own certificate"
            )
        if not pooler.is_active:
            raise PermissionDenied(f"pooler {pooler.id} is disabled")
        return Caller(pooler, key_hash, fingerprint)

    async def guard(self, caller: Caller, source: AsyncIterator[T]) -> AsyncIterator[T]:
        """`source`'s items, for as long as the caller is still admitted: every
        `recheck_seconds` the pooler, its key and its certificate are read again, and the
        stream ends with PERMISSION_DENIED once any of them is gone."""
        watcher = asyncio.create_task(self._watch(caller))
        step: asyncio.Future[T] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(source))
                racing: set[asyncio.Future[Any]] = {step, watcher}
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    await _cancelled(step)
                    watcher.result()  # raises why the caller is no longer admitted
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            # However the stream ends (the caller gone, refused, the source done): nothing
            # of it keeps running, and the source closes only once no step runs it.
            await _cancelled(watcher)
            if step is not None:
                await _cancelled(step)
            if isinstance(source, AsyncGenerator):
                await source.aclose()

    async def _watch(self, caller: Caller) -> None:
        """Returns only by raising: PermissionDenied once the caller is no longer admitted."""
        pooler_id = caller.pooler.id
        while True:
            await asyncio.sleep(self.recheck_seconds)
            if not await self.certificates.still_admits(
                pooler_id, caller.key_hash, caller.fingerprint
            ):
                raise PermissionDenied(
                    f"pooler {pooler_id} is no longer admitted (disabled, or its certificate"
                    " or API key was revoked); the stream is closed"
                )


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel the task and wait for it to end, whatever it ends with."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
