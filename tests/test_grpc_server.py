"""The shared gRPC server base, over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kalepool.bounds import INT32_MAX, MESSAGE_MAX, TEXT_MAX, show
from kalepool.grpc_server import (
    RPC_COUNT,
    BuiltServer,
    InvalidArgument,
    ServerSpec,
    build_server,
)
from kalepool.tls import DevPki, channel_credentials
from kalepool.v1 import wallet_pb2, wallet_pb2_grpc

WALLET = "kalepool.v1.WalletService"
SECRET = "SBSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET"


class TinyWallet(wallet_pb2_grpc.WalletServiceServicer):
    """Just enough of a servicer to drive each interceptor path."""

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: object
    ) -> wallet_pb2.CreateWalletResponse:
        if request.owner_id == "bad":
            raise InvalidArgument("owner_id 'bad' is not a UUID")
        if request.owner_id == "bug":
            raise RuntimeError(f"boom with {SECRET}")
        if request.owner_id.startswith("echo:"):
            raise InvalidArgument(f"owner_id must be a UUID, got {show(request.owner_id)}; " * 20)
        return wallet_pb2.CreateWalletResponse(
            wallet=wallet_pb2.Wallet(owner_id=request.owner_id), created=True
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return DevPki(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture
async def server(pki: DevPki) -> AsyncIterator[BuiltServer]:
    def register(srv: grpc.aio.Server) -> Iterable[str]:
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(TinyWallet(), srv)
        return [WALLET]

    spec = ServerSpec(
        address="127.0.0.1:0",
        identity=pki.server("wallet-service"),
        ca_pem=pki.ca_pem,
        allowed_callers={WALLET: ["pool-client"]},
        max_message_bytes=64 * 1024,
    )
    built = build_server(spec, register)
    await built.start([WALLET])
    try:
        yield built
    finally:
        await built.stop(0)


def channel(pki: DevPki, server: BuiltServer, client: str | None) -> grpc.aio.Channel:
    if client is None:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    else:
        creds = channel_credentials(pki.client(client), pki.ca_pem)
    return grpc.aio.secure_channel(
        f"127.0.0.1:{server.port}",
        creds,
        options=[("grpc.ssl_target_name_override", "wallet-service")],
    )


async def test_allowed_caller_is_served_and_counted(pki: DevPki, server: BuiltServer) -> None:
    before = RPC_COUNT.labels(WALLET, "CreateWallet", "OK")._value.get()
    async with channel(pki, server, "pool-client") as ch:
        got = await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
            wallet_pb2.CreateWalletRequest(owner_id="x")
        )
    assert got.created and got.wallet.owner_id == "x"
    assert RPC_COUNT.labels(WALLET, "CreateWallet", "OK")._value.get() == before + 1


async def test_other_caller_is_permission_denied(pki: DevPki, server: BuiltServer) -> None:
    async with channel(pki, server, "operator") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id="x")
            )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "operator" in (caught.value.details() or "")


async def test_no_client_certificate_is_refused(pki: DevPki, server: BuiltServer) -> None:
    async with channel(pki, server, None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id="x"), timeout=5
            )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_domain_error_keeps_its_status_and_message(pki: DevPki, server: BuiltServer) -> None:
    async with channel(pki, server, "pool-client") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id="bad")
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "owner_id 'bad' is not a UUID"


async def test_unexpected_error_is_internal_without_detail(
    pki: DevPki, server: BuiltServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kalepool.grpc")
    async with channel(pki, server, "pool-client") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id="bug")
            )
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "boom" not in details and SECRET not in details and "Traceback" not in details
    assert "incident" in details
    assert any("code=INTERNAL" in r.getMessage() for r in caplog.records)


async def test_oversized_request_is_resource_exhausted(pki: DevPki, server: BuiltServer) -> None:
    async with channel(pki, server, "pool-client") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id="x" * 100_000)
            )
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_and_reflection_are_on(pki: DevPki, server: BuiltServer) -> None:
    async with channel(pki, server, "operator") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        got = await health.Check(health_pb2.HealthCheckRequest(service=WALLET))
        assert got.status == health_pb2.HealthCheckResponse.SERVING
        # Watch streams by context.write(), not by yielding: through the interceptors too.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=WALLET))
        first = await anext(aiter(watch))
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for answer in stream:
            names = {s.name for s in answer.list_services_response.service}
    assert WALLET in names and "grpc.health.v1.Health" in names


async def test_health_and_reflection_refuse_other_callers(pki: DevPki, server: BuiltServer) -> None:
    # The service's own caller may call the service, but not ask what runs where.
    async with channel(pki, server, "pool-client") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_fields_out_of_bounds_are_refused_before_the_handler(
    pki: DevPki, server: BuiltServer
) -> None:
    stub_calls = [
        # Plant has no handler here: only the bounds check answers it so.
        (
            "Plant",
            wallet_pb2.PlantRequest(idempotency_key="k", block_index=INT32_MAX + 1),
            f"block_index must be at most {INT32_MAX}, got {INT32_MAX + 1}",
        ),
        (
            "CreateWallet",
            wallet_pb2.CreateWalletRequest(owner_id="a\x00b"),
            "owner_id must not contain NUL characters",
        ),
        (
            "CreateWallet",
            wallet_pb2.CreateWalletRequest(owner_id="é" * (TEXT_MAX + 1)),
            f"owner_id is {TEXT_MAX + 1} characters long, at most {TEXT_MAX}",
        ),
    ]
    async with channel(pki, server, "pool-client") as ch:
        stub = wallet_pb2_grpc.WalletServiceStub(ch)
        for method, request, message in stub_calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await getattr(stub, method)(request)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
            assert caught.value.details() == message
        # At the bounds, the handler answers.
        got = await stub.CreateWallet(wallet_pb2.CreateWalletRequest(owner_id="é" * TEXT_MAX))
        assert got.wallet.owner_id == "é" * TEXT_MAX


async def test_messages_are_cut_and_echo_only_a_prefix(pki: DevPki, server: BuiltServer) -> None:
    sent = "echo:" + "z" * 900
    async with channel(pki, server, "pool-client") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wallet_pb2_grpc.WalletServiceStub(ch).CreateWallet(
                wallet_pb2.CreateWalletRequest(owner_id=sent)
            )
    details = caught.value.details() or ""
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) == MESSAGE_MAX and details.endswith("…")
    assert details.startswith("owner_id must be a UUID, got 'echo:zzz") and "z" * 41 not in details


def test_show_keeps_a_short_prefix() -> None:
    assert show("abc") == "'abc'"
    assert show("x" * 100) == repr("x" * 40) + "…"
    assert show(b"\x00" * 50) == repr(b"\x00" * 40) + "…"
    assert show(2**64) == repr(2**64)
    assert len(show(list(range(100)))) == 41
