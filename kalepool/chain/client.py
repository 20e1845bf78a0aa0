"""The connection to a Stellar RPC server, with retries of transport failures.

Every other module of the chain client goes through :class:`ChainClient`: it owns the
`SorobanServerAsync`, knows the :class:`ChainConfig`, and retries what is safe to
retry (reads, simulations) with exponential backoff. Sending a transaction is not
retried here: `submit` decides what a lost answer means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from stellar_sdk.exceptions import (
    BadRequestError,
    BadResponseError,
    ConnectionError,
    SorobanRpcErrorResponse,
    UnknownRequestError,
)
from stellar_sdk.soroban_server_async import SorobanServerAsync

from kalepool.chain.config import ChainConfig
from kalepool.chain.errors import ChainDataError, ChainUnavailableError
from kalepool.chain.metrics import CHAIN_RPC_CALLS
from kalepool.chain.waiter import TxWaiter
from kalepool.masking import mask_url

log = logging.getLogger(__name__)

T = TypeVar("T")

# JSON-RPC "internal error": the server failed, not the request.
_RPC_INTERNAL_ERROR = -32603


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for transport failures: `attempts` tries in all."""

    attempts: int = 5
    initial_delay: float = 0.25
    max_delay: float = 5.0
    multiplier: float = 2.0

    def delay(self, failures: int) -> float:
        """The pause after the `failures`-th consecutive failure (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.multiplier ** (failures - 1)))


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """A ledger as the RPC server last saw it."""

    sequence: int
    close_time: int


def is_transient(exc: BaseException) -> bool:
    """A failure of the transport or the server, where asking again may work."""
    if isinstance(exc, ConnectionError | BadResponseError | UnknownRequestError | TimeoutError):
        return True
    if isinstance(exc, BadRequestError):
        return exc.status == 429  # rate limited
    if isinstance(exc, SorobanRpcErrorResponse):
        return exc.code == _RPC_INTERNAL_ERROR
    return False


def describe_failure(exc: BaseException) -> str:
    """A short description of a transport failure, without URLs (they may hold API keys)."""
    if isinstance(exc, SorobanRpcErrorResponse):
        return f"JSON-RPC error {exc.code}: {exc.message}"
    if isinstance(exc, BadRequestError | BadResponseError | UnknownRequestError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


class ChainClient:
    """One RPC server, one network: the handle every chain call takes.

    `poll_interval` paces `getTransaction` polling while a transaction is in flight;
    `stall_seconds` is how long submission waits without seeing a new ledger before it
    calls the chain unavailable. At most `max_in_flight` requests are at the server at
    once (the limit protects the RPC server; waiting for a ledger holds no slot: the
    shared :class:`~kalepool.chain.waiter.TxWaiter` polls once per ledger for every
    transaction in flight).
    """

    def __init__(
        self,
        config: ChainConfig,
        *,
        rpc: SorobanServerAsync | None = None,
        retry: RetryPolicy | None = None,
        poll_interval: float = 1.0,
        stall_seconds: float = 120.0,
        max_in_flight: int = 64,
    ) -> None:
        if poll_interval <= 0 or stall_seconds <= 0 or max_in_flight <= 0:
            raise ValueError("poll_interval, stall_seconds and max_in_flight must be positive")
        self.config = config
        self._own_rpc = rpc is None
        self.rpc = rpc if rpc is not None else SorobanServerAsync(config.rpc_url)
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.stall_seconds = stall_seconds
        self.limit = asyncio.Semaphore(max_in_flight)
        self._waiter: TxWaiter | None = None

    @property
    def waiter(self) -> TxWaiter:
        """The confirmations of this client's transactions, awaited together."""
        if self._waiter is None:
            self._waiter = TxWaiter(self)
        return self._waiter

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (only when this client opened it)."""
        if self._own_rpc:
            await self.rpc.close()

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent RPC call, retrying transport failures with backoff.

        Raises :class:`ChainUnavailableError` once the attempts are spent; other errors
        (bad parameters, a 4xx) propagate at once.
        """
        failures = 0
        while True:
            try:
                async with self.limit:
                    got = await fn()
            except Exception as exc:
                if not is_transient(exc):
                    CHAIN_RPC_CALLS.labels(what, "error").inc()
                    raise
                failures += 1
                if failures >= self.retry.attempts:
                    CHAIN_RPC_CALLS.labels(what, "unavailable").inc()
                    raise ChainUnavailableError(
                        f"{what}: RPC at {mask_url(self.config.rpc_url)} failed "
                        f"{failures} times ({describe_failure(exc)})"
                    ) from exc
                delay = self.retry.delay(failures)
                log.warning("%s failed (%s); retrying in %.2fs", what, describe_failure(exc), delay)
                await asyncio.sleep(delay)
            else:
                CHAIN_RPC_CALLS.labels(what, "ok").inc()
                return got

    async def latest_ledger(self) -> LedgerInfo:
        """The latest closed ledger: its sequence and close time (the chain's clock)."""
        got = await self.call("getLatestLedger", self.rpc.get_latest_ledger)
        return LedgerInfo(sequence=got.sequence, close_time=got.close_time)

    async def check_network(self) -> None:
        """Refuse to work against a server of another network (passphrase mismatch)."""
        got = await self.call("getNetwork", self.rpc.get_network)
        if got.passphrase != self.config.network_passphrase:
            raise ChainDataError(
                f"RPC at {mask_url(self.config.rpc_url)} serves {got.passphrase!r}, "
                f"not {self.config.network_passphrase!r}"
            )
