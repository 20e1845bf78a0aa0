"""Starting the pool service from a deployment's settings, as `kale-pool up` would."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kalepool.settings import Settings
from kalepool.tls import (
    OPERATOR,
    POOL_SERVER,
    DevPki,
    MissingCertificateError,
    channel_credentials,
    ensure_dev_identities,
)
from kalepool.v1 import pool_pb2, pool_pb2_grpc
from pool_service.server import start_pool_for

from .conftest import PoolStage


async def test_start_pool_for_serves_operators_and_health(pool: PoolStage, tmp_path: Path) -> None:
    settings = Settings(
        network="devnet",
        rpc_url=pool.stage.server.url,
        data_dir=tmp_path,
        pool_listen="127.0.0.1:0",
        _env_file=None,
    )
    pki = DevPki(settings.layout().certs)
    # The service only reads its certificates: here, as under `kale-pool up`, the
    # development CA issued them first.
    with pytest.raises(MissingCertificateError) as missing:
        async with AsyncExitStack() as stack:
            await start_pool_for(settings, pool.conninfo, stack)
    assert {p.name for p in missing.value.missing} == {
        "ca.pem",
        "pool-service.pem",
        "pool-service-key.pem",
        "pool-client.pem",
        "pool-client-key.pem",
    }
    assert not settings.layout().certs.exists() or not any(settings.layout().certs.iterdir())
    ensure_dev_identities(pki)
    async with AsyncExitStack() as stack:
        server = await start_pool_for(settings, pool.conninfo, stack)
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{server.port}",
            channel_credentials(pki.client(OPERATOR), pki.ca_pem),
            options=[("grpc.ssl_target_name_override", POOL_SERVER)],
        )
        async with channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kalepool.v1.PoolerService")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            listed = await pool_pb2_grpc.PoolServiceStub(channel).ListPoolers(
                pool_pb2.ListPoolersRequest()
            )
            assert list(listed.poolers) == []
