"""Running the pool service: PoolService and PoolerService on one mTLS port.

`start_pool_server()` is what tests use; `start_pool_for()` starts it from settings, for
`python -m pool_service` (see kalepool.serving) and `kale-pool up` (see docs/pool.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import psycopg

from kalepool.amounts import STROOPS_PER_KALE
from kalepool.chain import ChainClient, resolve_chain_config
from kalepool.db.reads import Pool, open_pool
from kalepool.db.roles import POOL
from kalepool.grpc_server import BuiltServer, ServerSpec, build_server
from kalepool.limits import Limit, RateLimits
from kalepool.settings import Settings
from kalepool.tls import (
    FARMER_WEB,
    OPERATOR,
    POOL_CLIENT,
    POOL_SERVER,
    WALLET_SERVER,
    CertificateFiles,
    Identity,
)
from kalepool.v1 import pool_pb2_grpc, pooler_pb2_grpc
from kalepool.webhook import Webhook
from pool_service.alerts import AlertEngine, IncidentStore
from pool_service.auth import FAILED_AUTH, POOLER_CALLS, Authenticator
from pool_service.blocks import BlockReports
from pool_service.books.actions import ActionNonceStore
from pool_service.books.blocks import BlockStore
from pool_service.books.certificates import CertificateStore
from pool_service.books.compensations import CompensationStore
from pool_service.books.contracts import ContractAckStore
from pool_service.books.farmers import FarmerStore
from pool_service.books.harvests import HarvestStore
from pool_service.books.ledger import LedgerStore
from pool_service.books.payouts import PayoutStore
from pool_service.books.plantings import PlantingStore
from pool_service.books.poolers import PoolerStore
from pool_service.books.sweeps import AccountPayoutStore, CompensationPaymentStore, SweepStore
from pool_service.books.works import WorkStore
from pool_service.chain_view import ChainView
from pool_service.contract_watch import ContractWatch
from pool_service.deposits import ChainFollower
from pool_service.feed import AssignmentFeed, Feeds
from pool_service.harvesting import Harvester
from pool_service.loops import every
from pool_service.metrics import Monitor
from pool_service.payouts import Payouts
from pool_service.planting import Planter
from pool_service.pooler_api import PoolerApi
from pool_service.reconcile import PlantReconciler
from pool_service.registry import PoolRegistry
from pool_service.shares import Shares
from pool_service.wallet import WalletClient
from pool_service.work import WorkReports

log = logging.getLogger("pool_service")

POOL_SERVICE = "kalepool.v1.PoolService"
POOLER_SERVICE = "kalepool.v1.PoolerService"
OPERATOR_CALLS = "operator"

FARMER_WEB_RPCS = (
    "ListPoolers",
    "GetPoolerStats",
    "ListBlocks",
    "GetPoolStats",
    "ListFarmers",
    "GetFarmerBalance",
    "GetFarmer",
    "ListFarmerLedger",
    "ListFarmerBlocks",
    "ListPayouts",
    "ConfirmFunding",
    "RegisterFarmer",
    "RequestPayout",
    "LeavePool",
)
"""What the farmers' web page (`farmer-web`) may call (least privilege; docs/api.md): the
reads its pages show, ConfirmFunding (safe to repeat: it only checks the chain and adds
the KALE trustline), and the three farmer actions, each of which the pool takes from it
only with the farmer's own signature of the action (PoolRegistry._consent). Every other
PoolService RPC refuses it (PERMISSION_DENIED)."""


@dataclass
class PoolServer:
    """A running pool service."""

    built: BuiltServer
    registry: PoolRegistry
    pooler_api: PoolerApi
    feeds: Feeds
    pool: Pool
    shares: Shares
    # The background loops (pool_service.loops.every), each stopped with the server:
    # the contract watch (the farm's code and pause flag, pool_service.contract_watch),
    # plant reconciliation (unsettled plant requests driven again), harvests (when
    # harvest_interval_seconds is set), payout settlement (pending payouts driven), shares
    # (each harvest's fee and pooler share swept), the chain follower (deposits credited,
    # anyone's harvests recorded) and the monitor (metrics read, alert rules judged:
    # `alerts`).
    loops: list[asyncio.Task[None]]
    alerts: AlertEngine
    _stack: AsyncExitStack

    @property
    def port(self) -> int:
        return self.built.port

    @property
    def health_port(self) -> int | None:
        """The plaintext health-only port (None without one)."""
        return self.built.health_port

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop harvesting and serving, then release the wallet channel and the database."""
        for task in self.loops:
            task.cancel()
        for task in self.loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.built.stop(grace)
        await self._stack.aclose()


async def start_pool_server(
    *,
    address: str,
    conninfo: str,
    chain: ChainClient,
    identity: Identity,
    ca_pem: bytes,
    wallet_address: str,
    wallet_identity: Identity,
    settings: Settings,
    wallet_server_name: str = WALLET_SERVER,
    operators: tuple[str, ...] = (OPERATOR,),
    web_callers: tuple[str, ...] = (FARMER_WEB,),
    pool_size: int | None = None,
    feed_poll_seconds: float = 1.0,
    harvest_interval_seconds: float | None = 10.0,
) -> PoolServer:
    """Open the database pool and the wallet channel, and start serving.

    `identity` is the pool server's certificate (`pool-service`), `wallet_identity` the
    client certificate it presents to the wallet service (`pool-client`). PoolService
    admits the `operators` common names, and `web_callers` (the farmers' web page) for
    `FARMER_WEB_RPCS` only, each limited to `rate_limit_operator_per_minute` calls;
    PoolerService admits a certificate of the CA only together with the API key of the
    pooler it is registered for
    (`pool_service.auth`: the pooler's calls and each certificate's refused attempts
    limited). The limits' buckets live in the database, shared by every replica. Unless
    `harvest_interval_seconds` is None, a background task harvests finished blocks'
    worked pails that often. Another drives unsettled plant requests at once and every
    `plant_reconcile_interval_seconds`. With `pool_health_listen` set, gRPC health
    alone is served there in plaintext too (`kalepool.grpc_server`); stopping drains
    `shutdown_drain_seconds` first.
    """
    stack = AsyncExitStack()
    pool = await open_pool(
        conninfo,
        role=POOL,
        max_size=pool_size or settings.db_pool_size,
        statement_timeout_seconds=settings.db_timeout_seconds,
    )
    stack.push_async_callback(pool.close)
    # The assignment streams read on connections of their own: on the shared pool each
    # wake's read queued behind the plant records of a block's first ledgers (every
    # connection held by a record waiting on its pooler's lock), which delayed the
    # assignments by hundreds of milliseconds (docs/performance.md).
    stream_pool = await open_pool(
        conninfo,
        role=POOL,
        max_size=settings.db_stream_pool_size,
        statement_timeout_seconds=settings.db_timeout_seconds,
    )
    stack.push_async_callback(stream_pool.close)
    wallet = WalletClient(wallet_address, wallet_identity, ca_pem, wallet_server_name)
    stack.push_async_callback(wallet.close)

    poolers, farmers, plantings = PoolerStore(pool), FarmerStore(pool), PlantingStore(pool)
    works, harvests, compensations = WorkStore(pool), HarvestStore(pool), CompensationStore(pool)
    view = ChainView(chain)
    feeds = Feeds()
    payouts = Payouts(farmers, PayoutStore(pool), wallet, view, settings)
    sweeps, share_payouts = SweepStore(pool), AccountPayoutStore(pool)
    shares = Shares(sweeps, share_payouts, CompensationPaymentStore(pool), wallet, settings)
    reports = BlockReports(
        poolers,
        BlockStore(pool),
        compensations,
        view,
        feeds,
        sweeps,
        share_payouts,
        settings.pooler_obligation_limit_kale * STROOPS_PER_KALE,
    )
    certificates = CertificateStore(pool)
    watch = ContractWatch(ContractAckStore(pool), view)
    registry = PoolRegistry(
        poolers,
        farmers,
        LedgerStore(pool),
        wallet,
        settings,
        reports,
        payouts,
        certificates,
        ca_pem,
        shares,
        watch,
        nonces=ActionNonceStore(pool),
        network_passphrase=chain.config.network_passphrase,
        signing_callers=frozenset(web_callers),
    )
    harvester = Harvester(harvests, works, wallet, view, settings, compensations)
    follower = ChainFollower(pool, chain, harvests)
    planter = Planter(farmers, plantings, wallet, view, settings, feeds.notify, watch)
    pooler_api = PoolerApi(
        Authenticator(
            poolers,
            certificates,
            RateLimits(pool, POOLER_SERVICE),
            Limit(POOLER_CALLS, settings.rate_limit_requests_per_minute),
            Limit(FAILED_AUTH, settings.rate_limit_failed_auth_per_minute),
            settings.pooler_auth_recheck_seconds,
        ),
        planter,
        AssignmentFeed(PlantingStore(stream_pool), view, feeds, feed_poll_seconds),
        WorkReports(plantings, works, view),
        harvester,
        view,
    )

    operator_limits = RateLimits(pool, POOL_SERVICE)
    per_operator = Limit(OPERATOR_CALLS, settings.rate_limit_operator_per_minute)

    async def limit_operator(caller: str) -> None:
        await operator_limits.admit(per_operator, caller, f"caller {caller!r}")

    def register(server: grpc.aio.Server) -> list[str]:
        pool_pb2_grpc.add_PoolServiceServicer_to_server(registry, server)
        pooler_pb2_grpc.add_PoolerServiceServicer_to_server(pooler_api, server)
        return [POOL_SERVICE, POOLER_SERVICE]

    spec = ServerSpec(
        address=address,
        identity=identity,
        ca_pem=ca_pem,
        allowed_callers={
            POOL_SERVICE: operators,
            **{f"{POOL_SERVICE}/{rpc}": web_callers for rpc in FARMER_WEB_RPCS},
        },
        caller_limits={POOL_SERVICE: limit_operator},
        error_map={psycopg.OperationalError: grpc.StatusCode.UNAVAILABLE},
        health_address=settings.pool_health_listen or None,
        drain_seconds=settings.shutdown_drain_seconds,
    )
    try:
        built = build_server(spec, register)
        await built.start([POOL_SERVICE, POOLER_SERVICE])
    except BaseException:
        await stack.aclose()
        raise
    plants = PlantReconciler(plantings, planter)
    alerts = AlertEngine(
        Monitor(pool, chain, conninfo, settings.db_health_timeout_seconds),
        IncidentStore(pool),
        Webhook.of(settings),
        settings,
        watch,
    )
    loops = [
        # At once (the first sighting of the farm's code is recorded) and then regularly,
        # so the gauge and the log follow the farm when nobody asks to plant.
        asyncio.create_task(
            every(settings.contract_watch_interval_seconds, watch.refresh, "contract watch"),
            name="pool-contract-watch",
        ),
        asyncio.create_task(
            every(
                settings.plant_reconcile_interval_seconds, plants.reconcile, "plant reconciliation"
            ),
            name="pool-plants",
        ),
        asyncio.create_task(
            every(settings.payout_settle_interval_seconds, payouts.reconcile, "payout settlement"),
            name="pool-payouts",
        ),
        asyncio.create_task(
            every(settings.deposit_poll_interval_seconds, follower.run_once, "chain follower"),
            name="pool-deposits",
        ),
        asyncio.create_task(
            every(settings.monitor_interval_seconds, alerts.run_once, "monitor"),
            name="pool-monitor",
        ),
        asyncio.create_task(
            every(settings.share_sweep_interval_seconds, shares.run_once, "shares"),
            name="pool-shares",
        ),
    ]
    if harvest_interval_seconds is not None:
        loops.append(
            asyncio.create_task(harvester.run(harvest_interval_seconds), name="pool-harvest")
        )
    log.info("pool service listening on port %d", built.port)
    return PoolServer(built, registry, pooler_api, feeds, pool, shares, loops, alerts, stack)


async def start_pool_for(
    settings: Settings,
    conninfo: str,
    stack: AsyncExitStack,
    *,
    wallet_address: str | None = None,
) -> PoolServer:
    """Start the pool service a deployment's settings describe, on ``stack``'s lifetime.

    Listens on `pool_listen` with the `pool-service` certificate and calls the wallet
    service at `wallet_address` (default `wallet_listen`) as `pool-client`; the
    certificates are read from the data directory's `certs/`, as the wallet service's
    are (issued there by `kale-pool up`, or mounted in a pod).
    """
    certs = CertificateFiles(settings.layout().certs)
    certs.check(POOL_SERVER, POOL_CLIENT)
    chain = ChainClient(
        await resolve_chain_config(settings), max_in_flight=settings.chain_rpc_concurrency
    )
    stack.push_async_callback(chain.aclose)
    server = await start_pool_server(
        address=settings.pool_listen,
        conninfo=conninfo,
        chain=chain,
        identity=certs.identity(POOL_SERVER),
        ca_pem=certs.ca_pem,
        wallet_address=wallet_address or settings.wallet_listen,
        wallet_identity=certs.identity(POOL_CLIENT),
        settings=settings,
    )
    stack.push_async_callback(server.stop, 5.0)
    return server
