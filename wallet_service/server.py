"""Running the wallet service: its gRPC server, database pool, chain client and keys.

`start_wallet_server()` is what tests use; `start_wallet_for()` starts it from settings, for
`python -m wallet_service` (see kalepool.serving) and `kale-pool up`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc

from kalepool.chain import ChainClient, resolve_chain_config
from kalepool.db.reads import Pool, open_pool
from kalepool.db.roles import WALLET
from kalepool.grpc_server import BuiltServer, ServerSpec, build_server
from kalepool.limits import Limit, RateLimits
from kalepool.settings import Settings
from kalepool.tls import POOL_CLIENT, WALLET_SERVER, CertificateFiles, Identity
from kalepool.v1 import wallet_pb2_grpc
from kalepool.webhook import Webhook
from wallet_service.keystore import Keyring, KeyringSource
from wallet_service.metrics import start_database_watch
from wallet_service.policy import PayoutLimits
from wallet_service.service import ERRORS, WalletService
from wallet_service.store import Store

log = logging.getLogger("wallet_service")

SERVICE_NAME = "kalepool.v1.WalletService"
CALLER_CALLS = "wallet_caller"


@dataclass
class WalletServer:
    """A running wallet service."""

    built: BuiltServer
    service: WalletService
    pool: Pool
    reconciled: asyncio.Task[int]
    _stack: AsyncExitStack

    @property
    def port(self) -> int:
        return self.built.port

    @property
    def health_port(self) -> int | None:
        """The plaintext health-only port (None without one)."""
        return self.built.health_port

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, then release the pool and the chain client."""
        if not self.reconciled.done():
            self.reconciled.cancel()
        await self.built.stop(grace)
        await self._stack.aclose()


async def start_wallet_server(
    *,
    address: str,
    conninfo: str,
    keyring: Keyring | KeyringSource,
    chain: ChainClient,
    identity: Identity,
    ca_pem: bytes,
    allowed_callers: tuple[str, ...] = (POOL_CLIENT,),
    pool_size: int = 10,
    statement_timeout_seconds: float = 30.0,
    limits: PayoutLimits | None = None,
    webhook: Webhook | None = None,
    calls_per_minute: int = 30000,
    health_address: str | None = None,
    drain_seconds: float = 0.0,
) -> WalletServer:
    """Open the database pool, start serving, and reconcile unsettled transactions.

    The pool's connections are checked on checkout (a PostgreSQL restart costs no call)
    and bounded by the statement timeout (a stuck query fails instead of holding an
    account's lock for ever). Reconciliation runs in the background
    (`WalletServer.reconciled`); it takes each account's lock, so a call for an account
    waits until that account is reconciled. Each caller may make `calls_per_minute`
    calls (a bucket in the database, shared by every replica); more are
    RESOURCE_EXHAUSTED. With a `health_address`, gRPC health alone is served there in
    plaintext too (`kalepool.grpc_server`); stopping drains `drain_seconds` first.
    """
    stack = AsyncExitStack()
    pool = await open_pool(
        conninfo,
        role=WALLET,
        max_size=pool_size,
        statement_timeout_seconds=statement_timeout_seconds,
    )
    stack.push_async_callback(pool.close)
    service = WalletService(Store(pool), keyring, chain, limits, webhook)
    rate_limits = RateLimits(pool, SERVICE_NAME)
    per_caller = Limit(CALLER_CALLS, calls_per_minute)

    async def limit_caller(caller: str) -> None:
        await rate_limits.admit(per_caller, caller, f"caller {caller!r}")

    def register(server: grpc.aio.Server) -> list[str]:
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(service, server)
        return [SERVICE_NAME]

    spec = ServerSpec(
        address=address,
        identity=identity,
        ca_pem=ca_pem,
        allowed_callers={SERVICE_NAME: allowed_callers},
        caller_limits={SERVICE_NAME: limit_caller},
        error_map=ERRORS,
        health_address=health_address,
        drain_seconds=drain_seconds,
    )
    try:
        built = build_server(spec, register)
        await built.start([SERVICE_NAME])
    except BaseException:
        await stack.aclose()
        raise
    task = asyncio.create_task(service.reconcile_all(), name="wallet-reconcile")
    log.info("wallet service listening on port %d", built.port)
    return WalletServer(built, service, pool, task, stack)


async def start_wallet_for(
    settings: Settings, conninfo: str, stack: AsyncExitStack
) -> WalletServer:
    """Start the wallet service a deployment's settings describe, on ``stack``'s lifetime.

    Raises :class:`MasterKeyError` (missing or bad master key) or
    :class:`MissingCertificateError` (its certificate or the CA not in the data
    directory's `certs/`: issued by `kale-pool up`, mounted in a pod) before anything
    starts.
    """
    keyring = KeyringSource(settings)
    certs = CertificateFiles(settings.layout().certs)
    certs.check(WALLET_SERVER)
    chain = ChainClient(
        await resolve_chain_config(settings), max_in_flight=settings.chain_rpc_concurrency
    )
    stack.push_async_callback(chain.aclose)
    server = await start_wallet_server(
        address=settings.wallet_listen,
        conninfo=conninfo,
        keyring=keyring,
        chain=chain,
        identity=certs.identity(WALLET_SERVER),
        ca_pem=certs.ca_pem,
        pool_size=settings.db_pool_size,
        statement_timeout_seconds=settings.db_timeout_seconds,
        limits=PayoutLimits.of(settings),
        webhook=Webhook.of(settings),
        calls_per_minute=settings.rate_limit_wallet_per_minute,
        health_address=settings.wallet_health_listen or None,
        drain_seconds=settings.shutdown_drain_seconds,
    )
    stack.push_async_callback(server.stop, 5.0)
    start_database_watch(
        conninfo, settings.monitor_interval_seconds, settings.db_health_timeout_seconds, stack
    )
    return server
