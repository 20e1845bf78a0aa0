"""The wallet service's stage: real PostgreSQL, an in-process devnet whose ledgers a
background task closes, and the real wallet server on 127.0.0.1 over mutual TLS, which
connects as the wallet's own database role (the tests read as the owner)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kalepool.chain import ChainClient
from kalepool.db.roles import WALLET
from kalepool.tls import POOL_CLIENT, WALLET_SERVER, DevPki, channel_credentials
from kalepool.v1 import wallet_pb2_grpc
from tests.chain.stage import Stage, open_stage
from tests.dbkit import service_conninfo
from wallet_service.keystore import Keyring, parse_master_keys
from wallet_service.server import WalletServer, start_wallet_server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki(Path(tmp_path_factory.mktemp("wallet-certs")))


class Closer:
    """Closes a ledger every `interval` seconds while running (the chain's heartbeat)."""

    def __init__(self, stage: Stage, interval: float = 0.05) -> None:
        self.stage = stage
        self.interval = interval
        self.running = asyncio.Event()
        self.running.set()
        self.parked = asyncio.Event()  # set while held, once no close is under way
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self.running.is_set():
                self.parked.set()
                await self.running.wait()
                self.parked.clear()
            await self.stage.close()
            await asyncio.sleep(self.interval)

    async def hold(self) -> None:
        """Stop closing ledgers; returns once no close is under way (the chain stands still)."""
        self.running.clear()
        await self.parked.wait()

    def release(self) -> None:
        self.running.set()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass(kw_only=True)
class WalletStage:
    stage: Stage
    chain: ChainClient
    closer: Closer
    keyring: Keyring
    conninfo: str  # the owner's, for the tests' own reads
    pki: DevPki
    server: WalletServer
    stub: wallet_pb2_grpc.WalletServiceStub
    channels: list[grpc.aio.Channel]

    @property
    def service_conninfo(self) -> str:
        """What the wallet server connects with: the wallet's database role."""
        return service_conninfo(self.conninfo, WALLET)

    async def start(self, port: int = 0, **options: Any) -> WalletServer:
        """Start a (new) wallet server on this database and chain (on `port`, e.g. the
        one a stopped server had, so that the pool's channel reaches it again), with
        these other options of `start_wallet_server`."""
        self.server = await start_wallet_server(
            address=f"127.0.0.1:{port}",
            conninfo=self.service_conninfo,
            keyring=self.keyring,
            chain=self.chain,
            identity=self.pki.server(WALLET_SERVER),
            ca_pem=self.pki.ca_pem,
            **options,
        )
        self.stub = wallet_pb2_grpc.WalletServiceStub(self.channel(POOL_CLIENT))
        return self.server

    def channel(self, client: str | None) -> grpc.aio.Channel:
        if client is None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.pki.ca_pem)
        else:
            creds = channel_credentials(self.pki.client(client), self.pki.ca_pem)
        ch = grpc.aio.secure_channel(
            f"127.0.0.1:{self.server.port}",
            creds,
            options=[("grpc.ssl_target_name_override", WALLET_SERVER)],
        )
        self.channels.append(ch)
        return ch


@pytest.fixture
async def wallet(db_conninfo: str, pki: DevPki) -> AsyncIterator[WalletStage]:
    async with wallet_stage(db_conninfo, pki) as ws:
        yield ws


@contextlib.asynccontextmanager
async def wallet_stage(db_conninfo: str, pki: DevPki, **devnet: Any) -> AsyncIterator[WalletStage]:
    """A devnet (these settings) whose ledgers a closer closes, and a wallet server."""
    async with open_stage(stall_seconds=20, **devnet) as stage:
        # Long time bounds: the closer runs the chain's clock at about 100x.
        chain = ChainClient(
            dataclasses.replace(stage.client.config, tx_timeout_seconds=3600),
            retry=stage.client.retry,
            poll_interval=0.02,
            stall_seconds=20,
        )
        closer = Closer(stage)
        keyring = parse_master_keys(base64.b64encode(os.urandom(32)).decode())
        ws = WalletStage(
            stage=stage,
            chain=chain,
            closer=closer,
            keyring=keyring,
            conninfo=db_conninfo,
            pki=pki,
            server=None,  # type: ignore[arg-type]  # set by start()
            stub=None,  # type: ignore[arg-type]
            channels=[],
        )
        await ws.start()
        try:
            yield ws
        finally:
            for ch in ws.channels:
                await ch.close()
            await ws.server.stop(0)
            await closer.stop()
            await chain.aclose()


Factory = Callable[[], object]
