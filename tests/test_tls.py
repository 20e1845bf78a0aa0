"""mTLS with the development PKI, over a real grpc.aio server on loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kalepool.tls import (
    CertificateFiles,
    DevPki,
    MissingCertificateError,
    channel_credentials,
    server_credentials,
)


async def _serve(pki: DevPki) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(pki.server("pool-service"), pki.ca_pem)
    )
    await server.start()
    return server, port


async def _check(port: int, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


async def test_client_with_a_certificate_from_the_ca_is_served(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "certs")
    server, port = await _serve(pki)
    try:
        creds = channel_credentials(pki.client("pooler-1"), pki.ca_pem)
        assert await _check(port, creds) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


async def test_client_without_certificate_or_from_another_ca_is_refused(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "certs")
    server, port = await _serve(pki)
    stranger = DevPki(tmp_path / "other")
    try:
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
        foreign = channel_credentials(stranger.client("pooler-1"), pki.ca_pem)
        for creds in (no_cert, foreign):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _check(port, creds)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


def test_certificates_are_issued_once_and_keys_are_private(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "certs")
    first = pki.server("wallet-service")
    assert pki.server("wallet-service") == first
    assert DevPki(tmp_path / "certs").ca_pem == pki.ca_pem
    for key in (tmp_path / "certs").glob("*-key.pem"):
        assert key.stat().st_mode & 0o077 == 0


def test_a_mounted_ca_without_its_key_never_issues_or_regenerates(tmp_path: Path) -> None:
    issuer = DevPki(tmp_path / "issuer")
    mounted = tmp_path / "certs"
    mounted.mkdir()
    (mounted / "ca.pem").write_bytes(issuer.ca_pem)
    pki = DevPki(mounted)
    with pytest.raises(FileNotFoundError, match=r"ca-key\.pem is missing"):
        pki.client("pooler-1")
    assert (mounted / "ca.pem").read_bytes() == issuer.ca_pem
    assert not (mounted / "ca-key.pem").exists()


def test_certificate_files_only_read_and_name_what_is_missing(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    files = CertificateFiles(certs)
    with pytest.raises(MissingCertificateError) as missing:
        files.check("wallet-service")
    assert [p.name for p in missing.value.missing] == [
        "ca.pem",
        "wallet-service.pem",
        "wallet-service-key.pem",
    ]
    with pytest.raises(MissingCertificateError):
        files.identity("wallet-service")
    assert not certs.exists()  # nothing issued, no CA made
    issued = DevPki(certs).server("wallet-service")
    ca_pem = DevPki(certs).ca_pem
    (certs / "ca-key.pem").unlink()  # as in a pod: the CA's key stays with cert-manager
    files.check("wallet-service")
    assert files.identity("wallet-service") == issued
    assert files.ca_pem == ca_pem
