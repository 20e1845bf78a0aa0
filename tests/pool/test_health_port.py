"""The services' plaintext health port, what the kubelet's native gRPC probes call.

Real wallet and pool servers on 127.0.0.1: the port answers `grpc.health.v1` alone (a
service RPC or reflection there is UNIMPLEMENTED), says SERVING while the server
serves, NOT_SERVING from the moment it begins to stop (while it drains, still serving
its callers over mTLS), and is closed once the server has stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from stellar_sdk import Keypair

from kalepool.v1 import pool_pb2, pool_pb2_grpc, wallet_pb2, wallet_pb2_grpc
from pool_service.server import POOL_SERVICE, POOLER_SERVICE
from tests.pool.conftest import PoolStage
from tests.waits import until
from wallet_service.server import SERVICE_NAME as WALLET_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

#: How long a stopping server keeps serving as NOT_SERVING: the window the test reads.
DRAIN_SECONDS = 3.0


@pytest.fixture
async def plain() -> AsyncIterator[Callable[[int], grpc.aio.Channel]]:
    """Plaintext channels to 127.0.0.1 ports, as the kubelet dials (no certificate)."""
    channels: list[grpc.aio.Channel] = []

    def channel(port: int) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1]

    yield channel
    for ch in channels:
        await ch.close()


async def status(channel: grpc.aio.Channel, service: str = "") -> int:
    got = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(got.status)


async def refused(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    code = error.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


async def reflection_on(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stream:
            pass
    code = error.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


async def drains_then_closes(
    channel: grpc.aio.Channel,
    stop: Awaitable[None],
    still_served: Callable[[], Awaitable[None]],
) -> None:
    """Stop the server: the health port says NOT_SERVING while the server still serves
    its callers, then refuses to connect once it has stopped."""
    stopping = asyncio.ensure_future(stop)

    async def not_serving() -> bool:
        return await status(channel) == NOT_SERVING

    await until(not_serving, what="the health port to say NOT_SERVING")
    await still_served()
    assert not stopping.done(), "the server stopped before its drain ended"
    await stopping
    assert await refused(status(channel)) is grpc.StatusCode.UNAVAILABLE


async def test_the_wallets_health_port_serves_health_alone_and_follows_shutdown(
    pool: PoolStage, plain: Callable[[int], grpc.aio.Channel]
) -> None:
    ws = pool.wallet
    port = ws.server.port  # kept: the pool's channel dials it
    await ws.server.stop(0)
    server = await ws.start(port, health_address="127.0.0.1:0", drain_seconds=DRAIN_SECONDS)
    assert server.health_port is not None and server.health_port != server.port
    health = plain(server.health_port)
    assert await status(health) == SERVING
    assert await status(health, WALLET_SERVICE) == SERVING
    # Nothing else answers there, in plaintext or at all.
    unknown = wallet_pb2.GetWalletRequest(public_key=Keypair.random().public_key)
    service_rpc = wallet_pb2_grpc.WalletServiceStub(health).GetWallet(unknown, timeout=5)
    assert await refused(service_rpc) is grpc.StatusCode.UNIMPLEMENTED
    assert await reflection_on(health) is grpc.StatusCode.UNIMPLEMENTED
    # The mTLS port still refuses a plaintext caller: the health port opened nothing.
    mtls_in_plaintext = health_pb2_grpc.HealthStub(plain(server.port)).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert await refused(mtls_in_plaintext) is grpc.StatusCode.UNAVAILABLE

    async def served_over_mtls() -> None:
        # NOT_FOUND is the handler's answer: the service still serves while draining.
        assert await refused(ws.stub.GetWallet(unknown, timeout=5)) is grpc.StatusCode.NOT_FOUND

    await drains_then_closes(health, server.stop(1.0), served_over_mtls)
    await ws.start(port)  # the fixture's teardown stops a running one


async def test_the_pools_health_port_serves_health_alone_and_follows_shutdown(
    pool: PoolStage, plain: Callable[[int], grpc.aio.Channel]
) -> None:
    server = await pool.start(
        pool_health_listen="127.0.0.1:0", shutdown_drain_seconds=DRAIN_SECONDS
    )
    assert server.health_port is not None and server.health_port != server.port
    health = plain(server.health_port)
    for service in ("", POOL_SERVICE, POOLER_SERVICE):
        assert await status(health, service) == SERVING, service
    service_rpc = pool_pb2_grpc.PoolServiceStub(health).ListPoolers(
        pool_pb2.ListPoolersRequest(), timeout=5
    )
    assert await refused(service_rpc) is grpc.StatusCode.UNIMPLEMENTED
    assert await reflection_on(health) is grpc.StatusCode.UNIMPLEMENTED
    operator = pool.operator()

    async def served_over_mtls() -> None:
        await operator.ListPoolers(pool_pb2.ListPoolersRequest(), timeout=5)

    await drains_then_closes(health, server.stop(1.0), served_over_mtls)
    pool.server = None  # stopped here; the fixture's teardown has nothing to stop


async def test_without_the_setting_there_is_no_health_port(pool: PoolStage) -> None:
    """A development machine runs no plaintext port unless told to."""
    assert pool.server is not None and pool.server.health_port is None
    assert pool.wallet.server.health_port is None
