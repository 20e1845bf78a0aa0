"""The certificates every gRPC hop uses for mTLS: read them, and (in development) issue them.

Every process reads its certificates from one directory (``<data dir>/certs``):
``ca.pem``, the CA every party trusts, and ``<name>.pem`` / ``<name>-key.pem`` for each
identity it presents. :class:`CertificateFiles` reads them and nothing else; that is
all a service or a pooler agent does, wherever the files came from (cert-manager in
Kubernetes, a CSR signed for a mining machine, the development CA).

:class:`DevPki` is the development CA: on a developer machine `kale-pool up` creates it
in the same directory on first start and issues the server certificates (pool and
wallet services) and client certificates (the pool calling the wallet service, the
operator). A pooler's certificate is signed from a request (`DevPki.sign_csr`): its key
is made where the pooler runs (`make_key_and_csr`) and never reaches the CA. Nothing in
a deployment runs it. `check_client_certificate` is what the pool checks of a pooler's
certificate before recording its fingerprint.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "kale-pool development CA"
_LEAF_DAYS = 365
_CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate chain and its private key, PEM-encoded, as grpc wants them."""

    cert_pem: bytes
    key_pem: bytes


class MissingCertificateError(FileNotFoundError):
    """Certificates (or their keys, or the CA) are not in the directory: `missing` and
    the message name the files."""

    def __init__(self, missing: list[Path]) -> None:
        self.missing = missing
        super().__init__(f"certificate files missing: {', '.join(map(str, missing))}")


class CertificateFiles:
    """The certificates in one directory: the CA (``ca.pem``) and each identity's
    certificate and key (``<name>.pem``, ``<name>-key.pem``). Only reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def paths(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of the identity `name`."""
        return self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"

    def has(self, name: str) -> bool:
        """Whether the identity's certificate and key are both there."""
        return all(path.is_file() for path in self.paths(name))

    def check(self, *names: str) -> None:
        """Refuse at once, naming every missing file, unless the CA and these identities
        are all there."""
        wanted = [self.ca_path, *(path for name in names for path in self.paths(name))]
        missing = [path for path in wanted if not path.is_file()]
        if missing:
            raise MissingCertificateError(missing)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate every party trusts."""
        self.check()
        return self.ca_path.read_bytes()

    def identity(self, name: str) -> Identity:
        """The certificate and key the identity `name` presents."""
        cert, key = self.paths(name)
        missing = [path for path in (cert, key) if not path.is_file()]
        if missing:
            raise MissingCertificateError(missing)
        return Identity(cert.read_bytes(), key.read_bytes())


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by the owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kale-pool"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class DevPki:
    """The development certificate authority, kept in the certificates' directory: it
    issues what is missing there, once, and reads what is there (`files`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = CertificateFiles(directory)
        self._ca_cert_path = self.files.ca_path
        self._ca_key_path = directory / "ca-key.pem"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate every party trusts (created on first use).

        A ``ca.pem`` without its key (certificates provided from elsewhere) is trusted
        as it is: nothing is generated over it.
        """
        if not self._ca_cert_path.exists():
            self._ensure_ca()
        return self.files.ca_pem

    def _ensure_ca(self) -> None:
        if self._ca_cert_path.exists() and self._ca_key_path.exists():
            return
        if self._ca_cert_path.exists():
            # Issuing needs the CA's key; generating a new CA would silently split trust.
            raise FileNotFoundError(
                f"{self._ca_key_path} is missing: certificates issued by the CA in "
                f"{self._ca_cert_path} must be provided (e.g. by cert-manager), not issued here"
            )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(CA_NAME))
            .issuer_name(_name(CA_NAME))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(self._ca_key_path, _key_pem(key))
        self._ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _sign(
        self,
        name: str,
        public_key: CertificatePublicKeyTypes,
        *,
        server: bool,
        hosts: Iterable[str],
    ) -> bytes:
        """A certificate for ``name`` over ``public_key``, signed by the CA (PEM)."""
        self._ensure_ca()
        ca_cert = x509.load_pem_x509_certificate(self._ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(self._ca_key_path.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        now = dt.datetime.now(dt.UTC)
        alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, name: str, *, server: bool, hosts: Iterable[str]) -> Identity:
        if self.files.has(name):
            return self.files.identity(name)
        cert_path, key_path = self.files.paths(name)
        key = ec.generate_private_key(ec.SECP256R1())
        cert_pem = self._sign(name, key.public_key(), server=server, hosts=hosts)
        key_pem = _key_pem(key)
        _write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
        return Identity(cert_path.read_bytes(), key_pem)

    def sign_csr(self, csr_pem: bytes) -> bytes:
        """A client certificate for a certificate signing request (PEM in, PEM out).

        The key stays wherever the CSR was made; only its public half is signed. The
        certificate's name is the CSR's common name; nothing else of the request is
        taken (no extension, no other subject field). ValueError for a request that is
        not well formed, not self-signed by its key, or has no usable common name.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise ValueError("not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise ValueError("the request's signature does not match its public key")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else ""
        if not name or not name.isprintable() or len(name) > 64:
            raise ValueError("the request needs a printable common name of 1 to 64 characters")
        return self._sign(name, csr.public_key(), server=False, hosts=())

    def server(self, name: str, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> Identity:
        """A server certificate for ``name``, valid for the given hosts (issued once)."""
        return self._issue(name, server=True, hosts=hosts)

    def client(self, name: str) -> Identity:
        """A client certificate whose common name identifies the caller (issued once)."""
        return self._issue(name, server=False, hosts=())


def server_credentials(identity: Identity, ca_pem: bytes) -> grpc.ServerCredentials:
    """Server side of mTLS: present ``identity``, require a client certificate from the CA."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=True,
    )


def channel_credentials(identity: Identity, ca_pem: bytes) -> grpc.ChannelCredentials:
    """Client side of mTLS: trust the CA, present ``identity``."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.cert_pem,
    )


# Names of the development identities. The services check a caller's common name:
# the wallet service serves only POOL_CLIENT, PoolService OPERATOR (every RPC) and
# FARMER_WEB (the RPCs the farmers' web page needs, its farmer actions only with the
# farmer's signature: pool_service.server.FARMER_WEB_RPCS).
POOL_SERVER = "pool-service"
WALLET_SERVER = "wallet-service"
POOL_CLIENT = "pool-client"
OPERATOR = "operator"
FARMER_WEB = "farmer-web"
"""The farmers' web page calling PoolService (a client certificate)."""
WEB_SERVER = "web-server"
"""The farmers' web page's HTTPS server certificate."""
# The deployment's own identities: never a pooler's, whatever key a caller sends.
SERVICE_NAMES = frozenset(
    {POOL_SERVER, WALLET_SERVER, POOL_CLIENT, OPERATOR, FARMER_WEB, WEB_SERVER}
)


def ensure_dev_identities(pki: DevPki) -> list[str]:
    """Issue (once) the certificates one machine's deployment needs; their names."""
    pki.server(POOL_SERVER)
    pki.server(WALLET_SERVER)
    pki.client(POOL_CLIENT)
    pki.client(OPERATOR)
    pki.client(FARMER_WEB)
    pki.server(WEB_SERVER)
    return [POOL_SERVER, WALLET_SERVER, POOL_CLIENT, OPERATOR, FARMER_WEB, WEB_SERVER]


# --- a pooler's own key and its certificate -------------------------------------------


def new_private_key() -> bytes:
    """A new private key (EC P-256, PKCS#8 PEM) for a client identity."""
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


def make_csr(key_pem: bytes, name: str) -> bytes:
    """A certificate signing request (PEM) of the client identity ``name`` for this key.
    Made where the key lives (a mining machine): only the request leaves it, to be
    signed by the pool's CA."""
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(_name(name)).sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def make_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """A new private key and a CSR for it (see `make_csr`), both PEM."""
    key_pem = new_private_key()
    return key_pem, make_csr(key_pem, name)


def write_private_key(path: Path, key_pem: bytes) -> None:
    """Write a private key readable by its owner only (0600), atomically."""
    _write_private(path, key_pem)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_spki(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return _spki(key.public_key())


def csr_matches_key(csr_pem: bytes, key_pem: bytes) -> bool:
    """Whether the request was made for this private key."""
    return _spki(x509.load_pem_x509_csr(csr_pem).public_key()) == _key_spki(key_pem)


def cert_matches_key(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the certificate is for this private key."""
    return _spki(x509.load_pem_x509_certificate(cert_pem).public_key()) == _key_spki(key_pem)


def fingerprint(cert: x509.Certificate) -> str:
    """The certificate's identity: SHA-256 of its DER bytes, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def pem_fingerprint(cert_pem: bytes) -> str:
    """:func:`fingerprint` of a PEM certificate (the first one in the text)."""
    return fingerprint(x509.load_pem_x509_certificate(cert_pem))


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What the pool records of a pooler's certificate."""

    fingerprint: str
    subject: str
    common_name: str
    not_after: dt.datetime


def check_client_certificate(cert_pem: bytes, ca_pem: bytes) -> ClientCertificate:
    """A pooler's certificate, checked: one PEM certificate, issued by the pool's CA (one
    of the certificates in ``ca_pem``), not a CA itself, for client authentication, valid
    now. ValueError with a sentence saying what is wrong."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError("certificate_pem is not a PEM certificate") from None
    if len(certs) != 1:
        raise ValueError(f"certificate_pem must hold one certificate, not {len(certs)}")
    cert = certs[0]
    issuers = x509.load_pem_x509_certificates(ca_pem)
    if not any(_issued_by(cert, ca) for ca in issuers):
        raise ValueError("the certificate was not issued by the pool's CA")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise ValueError("the certificate is a CA certificate, not a client certificate")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no extended key usage; it needs clientAuth") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise ValueError("the certificate is not for client authentication (clientAuth)")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise ValueError(
            f"the certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to"
            f" {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
        )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    if not common_name:
        raise ValueError("the certificate has no common name")
    return ClientCertificate(
        fingerprint=fingerprint(cert),
        subject=cert.subject.rfc4514_string(),
        common_name=common_name,
        not_after=cert.not_valid_after_utc,
    )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
