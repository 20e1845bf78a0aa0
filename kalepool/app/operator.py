"""The operator's client of PoolService: mTLS with the `operator` certificate.

Every operator command (`status`, `blocks`, `farmers`, `pooler add`, ...) and the local
stack's provisioning talk to the pool through this, exactly as `grpcurl` would: the
pool's public API, never its database.
"""

from __future__ import annotations

from types import TracebackType

import grpc

from kalepool.app.runstate import RunState
from kalepool.settings import Settings
from kalepool.tls import OPERATOR, POOL_SERVER, DevPki, channel_credentials
from kalepool.v1 import pool_pb2_grpc


def pool_address(settings: Settings) -> str:
    """Where the pool listens: the running stack's address, else `pool_listen`."""
    state = RunState.load(settings)
    if state is not None:
        return state.pool_address
    return settings.pool_listen


class OperatorClient:
    """`async with OperatorClient(settings) as op: await op.pool.ListFarmers(...)`."""

    def __init__(
        self, settings: Settings, *, address: str | None = None, timeout: float = 15.0
    ) -> None:
        pki = DevPki(settings.layout().certs)
        self.address = address or pool_address(settings)
        self.timeout = timeout
        self.channel = grpc.aio.secure_channel(
            self.address,
            channel_credentials(pki.client(OPERATOR), pki.ca_pem),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )
        self.pool = pool_pb2_grpc.PoolServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> OperatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
