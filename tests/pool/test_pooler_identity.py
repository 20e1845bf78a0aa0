"""A pooler is its certificate and its API key together: the real pool server over mTLS
admits a PoolerService call only when the certificate presented is an active certificate
of the pooler whose key is sent, and stops admitting it (open streams included) once the
pooler is disabled or the certificate revoked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import UUID

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kalepool.tls import (
    POOL_SERVER,
    DevPki,
    Identity,
    channel_credentials,
    check_client_certificate,
    make_key_and_csr,
    pem_fingerprint,
)
from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2, pooler_pb2_grpc
from tests.waits import until

from .conftest import PoolStage
from .test_pooler_auth import bearer, code_of

BEAT = pooler_pb2.HeartbeatRequest(capacity=1)


def stub_of(pool: PoolStage, identity: Identity) -> pooler_pb2_grpc.PoolerServiceStub:
    """A PoolerService stub presenting `identity` (a key and certificate made outside the
    stage's files, as a mining machine's are)."""
    assert pool.server is not None
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{pool.server.port}",
        channel_credentials(identity, pool.pki.ca_pem),
        options=[("grpc.ssl_target_name_override", POOL_SERVER)],
    )
    pool.channels.append(channel)
    return pooler_pb2_grpc.PoolerServiceStub(channel)


def csr_identity(pki: DevPki, name: str) -> Identity:
    """A key made 'on the mining machine' and its CSR signed by the CA."""
    key_pem, csr_pem = make_key_and_csr(name)
    return Identity(pki.sign_csr(csr_pem), key_pem)


async def stream_ends(call: object) -> tuple[grpc.StatusCode, str]:
    """Read the stream until it ends; its status and message."""
    try:
        async for _ in call:  # type: ignore[attr-defined]
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_one_poolers_certificate_with_another_poolers_key_is_refused(
    pool: PoolStage,
) -> None:
    a, a_key = await pool.register_pooler("rig-a")
    b, b_key = await pool.register_pooler("rig-b")
    a_stub, b_stub = pool.pooler("rig-a"), pool.pooler("rig-b")
    assert (await a_stub.Heartbeat(BEAT, metadata=bearer(a_key))).interval_seconds > 0
    assert (await b_stub.Heartbeat(BEAT, metadata=bearer(b_key))).interval_seconds > 0

    # A's certificate with B's key does not act as B, nor B's as A.
    for stub, key in [(a_stub, b_key), (b_stub, a_key)]:
        code, message = await code_of(stub.Heartbeat(BEAT, metadata=bearer(key)))
        assert code is grpc.StatusCode.PERMISSION_DENIED, message
        assert "certificate" in message and key not in message
        # Whose the foreign certificate is, is never said.
        assert a.pooler_id not in message and b.pooler_id not in message
    # A certificate of the CA that no pooler registered does not either.
    code, message = await code_of(pool.pooler("stranger").Heartbeat(BEAT, metadata=bearer(a_key)))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "certificate" in message
    # A wrong key is still UNAUTHENTICATED, whatever the certificate.
    code, _ = await code_of(a_stub.Heartbeat(BEAT, metadata=bearer("kp_wrong")))
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_a_pooler_without_a_certificate_is_refused_until_one_is_added(
    pool: PoolStage, tmp_path: Path
) -> None:
    pooler, key = await pool.register_pooler("rig-old", certificate=None)
    stub = pool.pooler("rig-old")
    code, message = await code_of(stub.Heartbeat(BEAT, metadata=bearer(key)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "no active client certificate" in message and "cert add" in message

    op = pool.operator()
    pem = pool.pki.client("rig-old").cert_pem.decode()
    foreign = DevPki(tmp_path / "other-ca").client("rig-old").cert_pem.decode()
    server = pool.pki.server("rig-server").cert_pem.decode()
    operator_pem = pool.pki.client("operator").cert_pem.decode()
    bad = [
        (pooler.pooler_id, "not a certificate", grpc.StatusCode.INVALID_ARGUMENT, "PEM"),
        (pooler.pooler_id, "", grpc.StatusCode.INVALID_ARGUMENT, "required"),
        (pooler.pooler_id, foreign, grpc.StatusCode.INVALID_ARGUMENT, "pool's CA"),
        (pooler.pooler_id, server, grpc.StatusCode.INVALID_ARGUMENT, "client authentication"),
        (pooler.pooler_id, pem + pem, grpc.StatusCode.INVALID_ARGUMENT, "one certificate"),
        (pooler.pooler_id, pool.pki.ca_pem.decode(), grpc.StatusCode.INVALID_ARGUMENT, "CA"),
        (pooler.pooler_id, operator_pem, grpc.StatusCode.INVALID_ARGUMENT, "service"),
        ("not-a-uuid", pem, grpc.StatusCode.INVALID_ARGUMENT, "pooler_id"),
        ("00000000-0000-4000-8000-000000000000", pem, grpc.StatusCode.NOT_FOUND, "no pooler"),
    ]
    for pooler_id, cert, want, words in bad:
        code, message = await code_of(
            op.AddPoolerCertificate(
                pool_pb2.AddPoolerCertificateRequest(pooler_id=pooler_id, certificate_pem=cert)
            )
        )
        assert (code, words in message) == (want, True), (words, code, message)
    assert await pool.count("pooler_certificates") == 0

    added = await op.AddPoolerCertificate(
        pool_pb2.AddPoolerCertificateRequest(pooler_id=pooler.pooler_id, certificate_pem=pem)
    )
    assert added.certificate.fingerprint == pem_fingerprint(pem.encode())
    assert "CN=rig-old" in added.certificate.subject
    assert not added.certificate.HasField("revoked_at")
    assert (await stub.Heartbeat(BEAT, metadata=bearer(key))).interval_seconds > 0

    # The same certificate is nobody else's: not a second time, not another pooler's.
    other, _ = await pool.register_pooler("rig-other", certificate=None)
    for pooler_id in (pooler.pooler_id, other.pooler_id):
        code, message = await code_of(
            op.AddPoolerCertificate(
                pool_pb2.AddPoolerCertificateRequest(pooler_id=pooler_id, certificate_pem=pem)
            )
        )
        assert code is grpc.StatusCode.ALREADY_EXISTS, message
    code, _ = await code_of(
        op.RegisterPooler(
            pool_pb2.RegisterPoolerRequest(
                name="rig-dup",
                public_key="GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7",
                max_farmers=1,
                certificate_pem=pem,
            )
        )
    )
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert await pool.count("pooler_certificates") == 1
    assert await pool.count("poolers") == 2


async def test_revoking_and_rotating_a_certificate_take_effect_at_once(pool: PoolStage) -> None:
    await pool.start(pooler_auth_recheck_seconds=0.2)
    pooler, key = await pool.register_pooler("rig-rot", certificate=None)
    op = pool.operator()
    old = csr_identity(pool.pki, "rig-rot")
    await op.AddPoolerCertificate(
        pool_pb2.AddPoolerCertificateRequest(
            pooler_id=pooler.pooler_id, certificate_pem=old.cert_pem.decode()
        )
    )
    old_stub = stub_of(pool, old)
    assert (await old_stub.Heartbeat(BEAT, metadata=bearer(key))).interval_seconds > 0

    # Rotation: a new key and certificate made the same way; both work until the old
    # one is revoked.
    new = csr_identity(pool.pki, "rig-rot")
    await op.AddPoolerCertificate(
        pool_pb2.AddPoolerCertificateRequest(
            pooler_id=pooler.pooler_id, certificate_pem=new.cert_pem.decode()
        )
    )
    new_stub = stub_of(pool, new)
    assert (await new_stub.Heartbeat(BEAT, metadata=bearer(key))).interval_seconds > 0

    stream = old_stub.StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=bearer(key)
    )
    ending = asyncio.ensure_future(stream_ends(stream))
    await until(
        lambda: pool.server is not None and pool.server.feeds.connected(UUID(pooler.pooler_id)),
        what="the stream to open",
    )
    assert not ending.done()

    old_print = pem_fingerprint(old.cert_pem)
    # Colons and capitals, as other tools print fingerprints, are understood.
    shown = ":".join(old_print[i : i + 2] for i in range(0, 64, 2)).upper()
    revoked = await op.RevokePoolerCertificate(
        pool_pb2.RevokePoolerCertificateRequest(pooler_id=pooler.pooler_id, fingerprint=shown)
    )
    assert revoked.certificate.fingerprint == old_print
    assert revoked.certificate.HasField("revoked_at")

    code, message = await asyncio.wait_for(ending, 10)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "no longer admitted" in message
    code, _ = await code_of(old_stub.Heartbeat(BEAT, metadata=bearer(key)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert (await new_stub.Heartbeat(BEAT, metadata=bearer(key))).interval_seconds > 0

    # Revocation is final and safe to repeat; a revoked certificate never comes back.
    again = await op.RevokePoolerCertificate(
        pool_pb2.RevokePoolerCertificateRequest(pooler_id=pooler.pooler_id, fingerprint=old_print)
    )
    assert again.certificate.revoked_at == revoked.certificate.revoked_at
    code, message = await code_of(
        op.AddPoolerCertificate(
            pool_pb2.AddPoolerCertificateRequest(
                pooler_id=pooler.pooler_id, certificate_pem=old.cert_pem.decode()
            )
        )
    )
    assert code is grpc.StatusCode.ALREADY_EXISTS and "revoked" in message
    listed = await op.ListPoolerCertificates(
        pool_pb2.ListPoolerCertificatesRequest(pooler_id=pooler.pooler_id)
    )
    assert [(c.fingerprint, c.HasField("revoked_at")) for c in listed.certificates] == [
        (old_print, True),
        (pem_fingerprint(new.cert_pem), False),
    ]
    for fingerprint, want in [
        ("abc", grpc.StatusCode.INVALID_ARGUMENT),
        ("0" * 64, grpc.StatusCode.NOT_FOUND),
    ]:
        code, _ = await code_of(
            op.RevokePoolerCertificate(
                pool_pb2.RevokePoolerCertificateRequest(
                    pooler_id=pooler.pooler_id, fingerprint=fingerprint
                )
            )
        )
        assert code is want


async def test_disabling_a_pooler_ends_its_open_stream(pool: PoolStage) -> None:
    await pool.start(pooler_auth_recheck_seconds=0.2)
    pooler, key = await pool.register_pooler("rig-off")
    stream = pool.pooler().StreamAssignments(
        pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=bearer(key)
    )
    ending = asyncio.ensure_future(stream_ends(stream))
    assert pool.server is not None
    feeds = pool.server.feeds
    await until(lambda: feeds.connected(UUID(pooler.pooler_id)), what="the stream to open")

    await pool.operator().UpdatePooler(
        pool_pb2.UpdatePoolerRequest(
            pooler_id=pooler.pooler_id, status=common_pb2.POOLER_STATUS_DISABLED
        )
    )
    code, message = await asyncio.wait_for(ending, 10)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "no longer admitted" in message
    await until(lambda: not feeds.connected(UUID(pooler.pooler_id)), what="the stream to close")


def test_a_csr_made_with_its_key_is_signed_into_a_client_certificate(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "certs")
    key_pem, csr_pem = make_key_and_csr("rig-csr")
    cert_pem = pki.sign_csr(csr_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "rig-csr"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    checked = check_client_certificate(cert_pem, pki.ca_pem)
    assert checked.common_name == "rig-csr" and checked.fingerprint == pem_fingerprint(cert_pem)
    # The private key never reached the CA's directory.
    assert not any("rig-csr" in p.name for p in (tmp_path / "certs").iterdir())

    with pytest.raises(ValueError, match="signing request"):
        pki.sign_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    with pytest.raises(ValueError, match="pool's CA"):
        check_client_certificate(cert_pem, DevPki(tmp_path / "other").ca_pem)


async def test_a_stream_the_pooler_cancels_is_closed_on_the_server(pool: PoolStage) -> None:
    """The re-check around the feed leaves nothing running when the caller goes away: the
    feed itself is closed (the pooler's subscription detached)."""
    await pool.start(pooler_auth_recheck_seconds=0.2)
    pooler, key = await pool.register_pooler("rig-gone")
    assert pool.server is not None
    feeds = pool.server.feeds
    for _ in range(2):  # and the pooler can open it again
        stream = pool.pooler().StreamAssignments(
            pooler_pb2.StreamAssignmentsRequest(after_cursor=0), metadata=bearer(key)
        )
        await until(lambda: feeds.connected(UUID(pooler.pooler_id)), what="the stream to open")
        stream.cancel()
        await until(lambda: not feeds.connected(UUID(pooler.pooler_id)), what="the feed to close")
