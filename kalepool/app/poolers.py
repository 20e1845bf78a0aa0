"""A pooler's bundle: what a mining machine needs to run `kale-pool pooler`, in one place.

`kale-pool pooler add` (an operator adding a remote mining machine) and `kale-pool up`
(provisioning its local poolers) both go through `provision_pooler`: the pooler is
registered through PoolService (or found again) with its client certificate (its key made
in the pooler's own directory, its certificate signing request signed by the development
CA: the CSR flow a remote mining machine follows too, `kale-pool pooler keygen`), its API
key is issued (or rotated when lost), its own Stellar account and
channel accounts are created (friendbot-funded where the network has one), and its
settings are written to `<data dir>/poolers/<name>/`:

    pooler.env       KALE_POOL_* settings, API key and channel secrets (0600)
    pooler.json      id, name and public key (no secret): how a rerun finds it again
    certs/           ca.pem, <name>.pem, <name>-key.pem (0600), <name>.csr

The directory is a mining machine's data directory: copy it there and run
`kale-pool pooler` with `KALE_POOL_DATA_DIR` pointing at it and pooler.env loaded.
Nothing secret is printed but the API key, once, by `pooler add`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import grpc
from stellar_sdk import Keypair

from kalepool.app.files import read_env_file, write_atomic, write_env_file
from kalepool.app.funding import Friendbot, ensure_account
from kalepool.app.observer import StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.chain import ChainClient
from kalepool.settings import ENV_PREFIX, Network, Settings, make_private
from kalepool.tls import (
    SERVICE_NAMES,
    DevPki,
    cert_matches_key,
    csr_matches_key,
    make_csr,
    new_private_key,
    pem_fingerprint,
    write_private_key,
)
from kalepool.v1 import common_pb2, pool_pb2

ENV_FILE = "pooler.env"
RECORD_FILE = "pooler.json"
# Accounts a local pooler pays work fees from (its own account first): one transaction
# in flight per account, so this many works go out in the same ledger.
DEFAULT_CHANNELS = 4
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# A pooler's certificate must not be mistaken for a service's or the operator's.
_RESERVED = SERVICE_NAMES | {"ca"}


class PoolerSetupError(Exception):
    """The pooler cannot be set up as asked; the message says what to do."""


def check_pooler_name(name: str) -> str:
    """A pooler name usable as a file and certificate name (lowercase letters, digits,
    dashes; up to 40), and not one of the services' certificate names."""
    if not _NAME.match(name):
        raise PoolerSetupError(
            f"pooler name {name!r}: use 1 to 40 lowercase letters, digits and dashes"
        )
    if name in _RESERVED:
        raise PoolerSetupError(f"pooler name {name!r} is reserved for a service certificate")
    return name


@dataclass(frozen=True)
class PoolerBundle:
    """`<data dir>/poolers/<name>/`: one pooler's settings, certificate and keys."""

    name: str
    directory: Path

    @classmethod
    def of(cls, settings: Settings, name: str) -> PoolerBundle:
        return cls(name, settings.layout().root / "poolers" / check_pooler_name(name))

    @property
    def env_file(self) -> Path:
        return self.directory / ENV_FILE

    @property
    def record_file(self) -> Path:
        return self.directory / RECORD_FILE

    @property
    def certs(self) -> Path:
        return self.directory / "certs"

    @property
    def cert(self) -> Path:
        return self.certs / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.certs / f"{self.name}-key.pem"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.pem"

    def has_certificate(self) -> bool:
        return self.cert.is_file() and self.key.is_file() and self.ca.is_file()

    def read_env(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    def read_record(self) -> dict[str, str] | None:
        try:
            raw = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("pooler_id"), str):
            return None
        return {str(k): str(v) for k, v in raw.items()}

    def write_record(self, pooler: pool_pb2.Pooler) -> None:
        make_private(self.directory)
        record = {
            "pooler_id": pooler.pooler_id,
            "name": pooler.name,
            "public_key": pooler.public_key,
        }
        write_atomic(self.record_file, json.dumps(record, indent=2) + "\n", 0o600)


def mining_settings(
    settings: Settings,
    *,
    name: str,
    pool_address: str,
    api_key: str,
    rpc_url: str | None,
    channel_secrets: list[str] | None,
) -> dict[str, str]:
    """The settings `kale-pool pooler` needs on a mining machine, as environment variables.

    The one home of that list: `pooler add` prints it, provisioning writes it to
    pooler.env, and `up` starts its local poolers with it.
    """
    env = {f"{ENV_PREFIX}NETWORK": settings.network.value}
    if rpc_url:
        env[f"{ENV_PREFIX}RPC_URL"] = rpc_url
    if settings.network is not Network.DEVNET and settings.farm_contract_id:
        env[f"{ENV_PREFIX}FARM_CONTRACT_ID"] = settings.farm_contract_id
    env[f"{ENV_PREFIX}POOL_ADDRESS"] = pool_address
    env[f"{ENV_PREFIX}POOLER_CERT_NAME"] = name
    env[f"{ENV_PREFIX}POOLER_API_KEY"] = api_key
    if channel_secrets:
        env[f"{ENV_PREFIX}POOLER_CHANNEL_SECRETS"] = ",".join(channel_secrets)
    return env


def channel_secrets_of(env: dict[str, str]) -> list[str]:
    raw = env.get(f"{ENV_PREFIX}POOLER_CHANNEL_SECRETS", "")
    return [part.strip() for part in raw.split(",") if part.strip()]


def pooler_keygen(certs: Path, name: str, *, new_key: bool = False) -> tuple[Path, Path, bool]:
    """`kale-pool pooler keygen`: the pooler's private key, made here and kept here
    (``certs/<name>-key.pem``, 0600), and a certificate signing request for it
    (``certs/<name>.csr``), the only thing that leaves the machine. The key is made once;
    ``new_key`` replaces it (rotation: the old certificate no longer matches and is
    removed). (key, request, whether a key was made now)."""
    check_pooler_name(name)
    make_private(certs)
    key_path, csr_path = certs / f"{name}-key.pem", certs / f"{name}.csr"
    made = new_key or not key_path.is_file()
    if made:
        write_private_key(key_path, new_private_key())
        (certs / f"{name}.pem").unlink(missing_ok=True)
    key_pem = key_path.read_bytes()
    if made or not csr_path.is_file() or not csr_matches_key(csr_path.read_bytes(), key_pem):
        write_atomic(csr_path, make_csr(key_pem, name).decode(), 0o644)
    return key_path, csr_path, made


def issue_certificate(settings: Settings, bundle: PoolerBundle, *, new_key: bool = False) -> bool:
    """Give the pooler a client certificate by the CSR flow (once); True if issued now.

    The key is made in the pooler's own directory (`pooler_keygen`) and never leaves it;
    the development CA signs the request. PoolerSetupError when the CA's key is not here
    (a deployment whose CA lives elsewhere): the request is then left in the bundle for
    the CA to sign (see `csr_instructions`)."""
    ca_dir = settings.layout().certs
    DevPki(ca_dir).ca_pem  # noqa: B018 - the CA, made on first use on a developer machine
    make_private(bundle.certs)
    shutil.copyfile(ca_dir / "ca.pem", bundle.ca)
    if (
        not new_key
        and bundle.has_certificate()
        and cert_matches_key(bundle.cert.read_bytes(), bundle.key.read_bytes())
    ):
        return False
    _, csr_path, _ = pooler_keygen(bundle.certs, bundle.name, new_key=new_key)
    if not (ca_dir / "ca-key.pem").is_file():
        raise PoolerSetupError(
            f"the CA's key is not in {ca_dir}: the pooler's certificate request {csr_path}"
            " must be signed where the CA lives"
        )
    write_atomic(bundle.cert, DevPki(ca_dir).sign_csr(csr_path.read_bytes()).decode(), 0o644)
    return True


def csr_instructions(name: str, pooler_id: str) -> list[str]:
    """How a mining machine gets its certificate when the CA's key lives elsewhere."""
    return [
        "On the mining machine (its key never leaves it):",
        f"  kale-pool pooler keygen {name}      # certs/{name}-key.pem (0600) and certs/{name}.csr",
        f"Have the pool's CA sign {name}.csr as a client certificate (docs/deploy.md: a",
        "cert-manager CertificateRequest), then register it with the pool:",
        f"  kale-pool pooler cert add {pooler_id} --cert {name}.pem",
        f"and put {name}.pem and the pool's ca.pem in the machine's certs/ directory.",
    ]


async def register_certificate(
    op: OperatorClient, pooler_id: str, cert_pem: bytes
) -> pool_pb2.PoolerCertificate | None:
    """Register the certificate as the pooler's (AddPoolerCertificate); None when it is
    an active certificate of this pooler already. PoolerSetupError when it was revoked
    or is another pooler's."""
    fingerprint = pem_fingerprint(cert_pem)
    listed = await op.pool.ListPoolerCertificates(
        pool_pb2.ListPoolerCertificatesRequest(pooler_id=pooler_id), timeout=op.timeout
    )
    for known in listed.certificates:
        if known.fingerprint == fingerprint:
            if known.HasField("revoked_at"):
                raise PoolerSetupError(
                    f"certificate {fingerprint} of pooler {pooler_id} is revoked"
                )
            return None
    added = await op.pool.AddPoolerCertificate(
        pool_pb2.AddPoolerCertificateRequest(
            pooler_id=pooler_id, certificate_pem=cert_pem.decode()
        ),
        timeout=op.timeout,
    )
    return added.certificate


@dataclass
class ProvisionedPooler:
    """A pooler ready to run: its record in the pool and its bundle."""

    pooler: pool_pb2.Pooler
    bundle: PoolerBundle
    env: dict[str, str]  # its settings (pooler.env), secrets included
    api_key_issued: bool  # a new API key was issued in this call (show it once)
    registered: bool  # registered in this call
    certificate: bool  # it has a certificate (False: the CSR flow is needed)
    funded: int  # accounts created with friendbot money in this call

    @property
    def api_key(self) -> str:
        return self.env[f"{ENV_PREFIX}POOLER_API_KEY"]


async def _find_by_public_key(op: OperatorClient, public_key: str) -> pool_pb2.Pooler | None:
    token = ""
    while True:
        page = await op.pool.ListPoolers(
            pool_pb2.ListPoolersRequest(
                pagination=common_pb2.Pagination(page_size=100, page_token=token)
            ),
            timeout=op.timeout,
        )
        for pooler in page.poolers:
            if pooler.public_key == public_key:
                return pooler
        if not page.next_page_token:
            return None
        token = page.next_page_token


async def _known(op: OperatorClient, bundle: PoolerBundle) -> pool_pb2.Pooler | None:
    record = bundle.read_record()
    if record is None:
        return None
    try:
        got = await op.pool.GetPooler(
            pool_pb2.GetPoolerRequest(pooler_id=record["pooler_id"]), timeout=op.timeout
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return None  # the pool's database is not the one this bundle was made for
        raise
    return got.pooler


async def provision_pooler(
    op: OperatorClient,
    settings: Settings,
    name: str,
    *,
    pool_address: str,
    rpc_url: str | None,
    chain: ChainClient | None,
    friendbot: Friendbot | None,
    public_key: str | None = None,
    channels: int = DEFAULT_CHANNELS,
    max_farmers: int | None = None,
    observer: StackObserver | None = None,
) -> ProvisionedPooler:
    """Register (or find again) pooler ``name`` and write its bundle; see the module doc.

    Without ``public_key`` the pooler's own account is made here (the first channel
    account) and, with a friendbot, funded; with it, the mining machine brings its own
    account and channel keys. Reruns reuse everything; a lost API key is rotated.
    """
    bundle = PoolerBundle.of(settings, name)
    make_private(bundle.directory.parent)
    make_private(bundle.directory)
    env = bundle.read_env()
    secrets = channel_secrets_of(env)
    if public_key is None:
        if not secrets:
            secrets = [Keypair.random().secret for _ in range(max(1, channels))]
            # Written before anything else happens: a key whose account gets money is
            # never lost, even if this run dies right after.
            write_env_file(
                bundle.env_file, {f"{ENV_PREFIX}POOLER_CHANNEL_SECRETS": ",".join(secrets)}
            )
        public_key = Keypair.from_secret(secrets[0]).public_key
    capacity = max_farmers or min(settings.max_farmers_per_pooler, settings.max_farmers_capacity)

    try:
        has_certificate = True
        if issue_certificate(settings, bundle) and observer is not None:
            observer.event(f"{name}: key made in its directory, CSR signed by the development CA")
    except PoolerSetupError:
        has_certificate = False
    cert_pem = bundle.cert.read_bytes() if has_certificate else b""

    registered = False
    api_key = env.get(f"{ENV_PREFIX}POOLER_API_KEY", "")
    pooler = await _known(op, bundle)
    if pooler is None:
        try:
            made = await op.pool.RegisterPooler(
                pool_pb2.RegisterPoolerRequest(
                    name=name,
                    public_key=public_key,
                    max_farmers=capacity,
                    certificate_pem=cert_pem.decode(),
                ),
                timeout=op.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
            found = await _find_by_public_key(op, public_key)
            if found is None:
                raise
            pooler = found  # registered by an earlier run whose record was lost
        else:
            pooler, api_key, registered = made.pooler, made.api_key, True
        bundle.write_record(pooler)
    issued = registered
    if not api_key:
        rotated = await op.pool.RotatePoolerApiKey(
            pool_pb2.RotatePoolerApiKeyRequest(pooler_id=pooler.pooler_id), timeout=op.timeout
        )
        api_key, issued = rotated.api_key, True
        if observer is not None:
            observer.event(f"{name}: its API key was not on file; a new one was issued")

    if has_certificate and not registered:
        # Found again, or registered before certificates were recorded (migration 0016):
        # its certificate must be the pool's record of it too.
        try:
            await register_certificate(op, pooler.pooler_id, cert_pem)
        except PoolerSetupError:
            # Revoked: a new key and certificate replace it.
            issue_certificate(settings, bundle, new_key=True)
            cert_pem = bundle.cert.read_bytes()
            await register_certificate(op, pooler.pooler_id, cert_pem)
            if observer is not None:
                observer.event(f"{name}: its certificate was revoked; a new key and one made")

    env = mining_settings(
        settings,
        name=name,
        pool_address=pool_address,
        api_key=api_key,
        rpc_url=rpc_url,
        channel_secrets=secrets or None,
    )
    write_env_file(
        bundle.env_file,
        env,
        header=[
            f"kale-pool pooler settings of {name} (pooler {pooler.pooler_id}).",
            "Secret: the API key and the channel accounts' keys. Keep this file 0600.",
        ],
    )
    funded = 0
    if secrets and chain is not None and friendbot is not None:
        made_now = await asyncio.gather(
            *(ensure_account(chain, friendbot, Keypair.from_secret(s).public_key) for s in secrets)
        )
        funded = sum(made_now)
        if funded and observer is not None:
            observer.event(f"{name}: {funded} fee accounts funded by the friendbot")
    return ProvisionedPooler(
        pooler=pooler,
        bundle=bundle,
        env=env,
        api_key_issued=issued,
        registered=registered,
        certificate=has_certificate,
        funded=funded,
    )
