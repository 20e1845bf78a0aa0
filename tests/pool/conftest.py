"""The pool service's stage: real PostgreSQL, an in-process devnet whose ledgers a
background task closes, the real wallet server and the real pool server, both on
127.0.0.1 over mutual TLS, called through real stubs, each connected as its own
database role (the tests read as the owner)."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from kalepool.chain import ChainClient, read_account
from kalepool.db.roles import AUDITOR, POOL
from kalepool.settings import Settings
from kalepool.tls import OPERATOR, POOL_CLIENT, POOL_SERVER, DevPki, channel_credentials
from kalepool.v1 import pool_pb2, pool_pb2_grpc, pooler_pb2_grpc
from pool_service.server import PoolServer, start_pool_server
from tests.chain.stage import Stage
from tests.dbkit import service_conninfo
from tests.waits import until
from tests.wallet.conftest import WalletStage, wallet_stage

KALE = 10_000_000

# Blocks an hour long: a block never rolls over by itself during a test (the closer runs
# the chain's clock at about 100x); tests that need the next block advance the clock.
BLOCK_SECONDS = 3600


@dataclass
class PoolStage:
    wallet: WalletStage
    pki: DevPki
    conninfo: str  # the owner's, for the tests' own reads
    data_dir: Path
    server: PoolServer | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    replicas: list[PoolServer] = field(default_factory=list)
    # Which certificate (its name in `pki`) each API key's pooler presents.
    key_certs: dict[str, str] = field(default_factory=dict)
    pooler_certs: dict[str, str] = field(default_factory=dict)
    # The keyed stubs' channels, by (server port, certificate): a restart moves the port.
    _stubs: dict[tuple[int, str], pooler_pb2_grpc.PoolerServiceStub] = field(default_factory=dict)

    @property
    def stage(self) -> Stage:
        return self.wallet.stage

    @property
    def chain(self) -> ChainClient:
        return self.wallet.chain

    @property
    def service_conninfo(self) -> str:
        """What the pool server connects with: the pool's database role."""
        return service_conninfo(self.conninfo, POOL)

    @property
    def auditor_conninfo(self) -> str:
        """What `kale-pool check` connects with: the auditor's database role."""
        return service_conninfo(self.conninfo, AUDITOR)

    async def start(
        self,
        harvest_interval: float | None = None,
        feed_poll_seconds: float = 0.2,
        **settings: Any,
    ) -> PoolServer:
        """Start (or restart) the pool server with these settings over the same state.
        The chain follower polls every 0.1 s unless the settings say otherwise."""
        if self.server is not None:
            await self.server.stop(0)
        self.server = await self._server(harvest_interval, feed_poll_seconds, **settings)
        return self.server

    async def start_replica(self, **settings: Any) -> PoolServer:
        """Another pool server on the same database and wallet (a second replica)."""
        replica = await self._server(None, 0.2, **settings)
        self.replicas.append(replica)
        return replica

    async def _server(
        self, harvest_interval: float | None, feed_poll_seconds: float, **settings: Any
    ) -> PoolServer:
        settings.setdefault("deposit_poll_interval_seconds", 0.1)
        return await start_pool_server(
            address="127.0.0.1:0",
            conninfo=self.service_conninfo,
            chain=self.chain,
            identity=self.pki.server(POOL_SERVER),
            ca_pem=self.pki.ca_pem,
            wallet_address=f"127.0.0.1:{self.wallet.server.port}",
            wallet_identity=self.pki.client(POOL_CLIENT),
            settings=Settings(network="devnet", data_dir=self.data_dir, _env_file=None, **settings),
            pool_size=8,
            feed_poll_seconds=feed_poll_seconds,
            harvest_interval_seconds=harvest_interval,
        )

    def channel(self, client: str) -> grpc.aio.Channel:
        assert self.server is not None
        ch = grpc.aio.secure_channel(
            f"127.0.0.1:{self.server.port}",
            channel_credentials(self.pki.client(client), self.pki.ca_pem),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )
        self.channels.append(ch)
        return ch

    def operator(self, client: str = OPERATOR) -> pool_pb2_grpc.PoolServiceStub:
        return pool_pb2_grpc.PoolServiceStub(self.channel(client))

    def pooler(self, client: str | None = None) -> Any:
        """A PoolerService stub presenting the certificate `client`; without one, each call
        presents the certificate registered for the pooler whose API key it sends (as
        that pooler's own machine would)."""
        if client is not None:
            return pooler_pb2_grpc.PoolerServiceStub(self.channel(client))
        return KeyedPoolerStub(self)

    def stub_for_key(self, key: str) -> pooler_pb2_grpc.PoolerServiceStub:
        """A stub presenting the certificate of the pooler holding `key` (one no pooler
        has, `stranger`, when the key is nobody's)."""
        cert = self.key_certs.get(key)
        if cert is None:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT pooler_id::text FROM pooler_api_keys WHERE key_hash = %s",
                    (hashlib.sha256(key.encode()).digest(),),
                ).fetchone()
            cert = self.pooler_certs.get(str(row[0]), "stranger") if row else "stranger"
        assert self.server is not None
        where = (self.server.port, cert)
        if where not in self._stubs:
            self._stubs[where] = pooler_pb2_grpc.PoolerServiceStub(self.channel(cert))
        return self._stubs[where]

    # --- building blocks of the scenarios ------------------------------------------------

    async def register_pooler(
        self,
        name: str = "rig",
        max_farmers: int = 10,
        *,
        certificate: str | None = "",
        public_key: str | None = None,
    ) -> tuple[pool_pb2.Pooler, str]:
        """A pooler registered with the client certificate `certificate` of the stage's
        CA (by default the one named like the pooler; None: registered without one) and
        `public_key` (by default a fresh key nobody holds)."""
        from stellar_sdk import Keypair

        cert = name if certificate == "" else certificate
        made = await self.operator().RegisterPooler(
            pool_pb2.RegisterPoolerRequest(
                name=name,
                public_key=public_key or Keypair.random().public_key,
                max_farmers=max_farmers,
                certificate_pem=self.pki.client(cert).cert_pem.decode() if cert else "",
            )
        )
        if cert:
            self.key_certs[made.api_key] = cert
            self.pooler_certs[made.pooler.pooler_id] = cert
        return made.pooler, made.api_key

    async def funded_farmer(
        self,
        pooler_id: str,
        *,
        stake_bps: int = 0,
        kale: int = 0,
        ledger_kale: int | None = None,
        payout_address: str | None = None,
    ) -> pool_pb2.Farmer:
        """A farmer registered, funded with XLM, confirmed (trustline added), and `kale`
        minted on chain by the friendbot and credited by the pool's chain follower (a
        deposit; this waits for it). `ledger_kale` is credited on top by an operator's
        adjustment, for tests where the books deliberately differ from the chain."""
        from stellar_sdk import Keypair

        op = self.operator()
        made = await op.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler_id,
                payout_address=payout_address or Keypair.random().public_key,
                stake_bps=stake_bps,
            )
        )
        address = made.custodial_address
        await self.stage.friendbot(address)

        async def exists() -> bool:
            return await read_account(self.chain, address) is not None

        await until(exists)
        confirmed = await op.ConfirmFunding(
            pool_pb2.ConfirmFundingRequest(farmer_id=made.farmer.farmer_id)
        )
        assert confirmed.funded, confirmed
        farmer_id = made.farmer.farmer_id
        if kale:
            await self.stage.friendbot(address, kale)

            async def credited() -> bool:
                return await self.deposited(farmer_id) >= kale

            await until(credited, 30)
        if ledger_kale:
            await self.credit(farmer_id, ledger_kale)
        return (await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer_id))).farmer

    async def deposited(self, farmer_id: str) -> int:
        """The KALE the pool credited to the farmer as deposits."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM deposits WHERE farmer_id = %s",
                (farmer_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    async def credit(self, farmer_id: str, stroops: int) -> None:
        """Credit the farmer in the pool's ledger by an operator's adjustment (no KALE
        moves on chain)."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO balance_ledger (farmer_id, amount, kind, note)"
                " VALUES (%s, %s, 'adjustment', 'deposit seen on chain')",
                (farmer_id, stroops),
            )

    async def count(self, table: str) -> int:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    async def counts(self) -> dict[str, int]:
        tables = (
            "poolers",
            "pooler_api_keys",
            "farmers",
            "custodial_wallets",
            "plantings",
            "works",
            "transactions",
            "block_operations",
            "payouts",
            "balance_ledger",
        )
        return {t: await self.count(t) for t in tables}


def _bearer_of(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and str(value).startswith("Bearer "):
            return str(value)[len("Bearer ") :]
    return ""


class KeyedPoolerStub:
    """PoolerService calls that present, each, the certificate of the pooler whose API key
    they send (`PoolStage.stub_for_key`): real stubs on real mTLS channels underneath."""

    def __init__(self, stage: PoolStage) -> None:
        self._stage = stage

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, *args: Any, metadata: Any = (), **kwargs: Any) -> Any:
            stub = self._stage.stub_for_key(_bearer_of(metadata))
            return getattr(stub, method)(request, *args, metadata=metadata, **kwargs)

        return call


@pytest.fixture
async def pool(
    db_conninfo: str, pki: DevPki, request: pytest.FixtureRequest
) -> AsyncIterator[PoolStage]:
    """The stage; devnet settings may be given by indirect parametrization."""
    devnet: dict[str, Any] = getattr(request, "param", {})
    async with pool_stage(db_conninfo, pki, **devnet) as stage:
        yield stage


@contextlib.asynccontextmanager
async def pool_stage(db_conninfo: str, pki: DevPki, **devnet: Any) -> AsyncIterator[PoolStage]:
    """The stage on this database: devnet (hour-long blocks, and these settings), wallet
    server, pool server."""
    async with wallet_stage(db_conninfo, pki, block_seconds=BLOCK_SECONDS, **devnet) as ws:
        with tempfile.TemporaryDirectory() as data_dir:
            ps = PoolStage(ws, pki, db_conninfo, Path(data_dir))
            await ps.start()
            try:
                yield ps
            finally:
                for ch in ps.channels:
                    await ch.close()
                for replica in ps.replicas:
                    await replica.stop(0)
                if ps.server is not None:
                    await ps.server.stop(0)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki(Path(tmp_path_factory.mktemp("pool-certs")))
