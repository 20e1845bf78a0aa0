"""The operator's commands: `pooler add`, `pooler keygen`, `pooler cert add|list|revoke`,
`farmer add`, `farmer fund`.

Each talks to the pool through PoolService as the `operator` (the running stack's pool,
else `KALE_POOL_POOL_LISTEN`), exactly as grpcurl would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
from rich.console import Console
from rich.markup import escape
from stellar_sdk import StrKey

from kalepool.amounts import format_kale
from kalepool.app.commands import CommandError, rpc_error
from kalepool.app.funding import KALE, Friendbot, FundingError
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import (
    PoolerSetupError,
    csr_instructions,
    pooler_keygen,
    provision_pooler,
)
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, ChainConfigError, ChainError, resolve_chain_config
from kalepool.settings import ENV_PREFIX, Network, Settings
from kalepool.tls import DevPki
from kalepool.v1 import pool_pb2


def _one_line(address: str) -> contextlib.AbstractContextManager[None]:
    """The pool's refusals and the chain's failures as a CommandError (one line)."""

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except grpc.aio.AioRpcError as error:
            raise rpc_error(error, address) from None
        except (FundingError, PoolerSetupError, ChainError, ChainConfigError) as error:
            raise CommandError(str(error)) from None

    return guard()


def running_stack(settings: Settings) -> RunState | None:
    """The state of a `kale-pool up` running on this data directory (None if none runs)."""
    state = RunState.load(settings)
    if state is None or not state.alive()["supervisor"]:
        return None
    return state


def chain_settings(settings: Settings) -> Settings:
    """The settings with the running stack's chain (its devnet may be on another port)."""
    state = running_stack(settings)
    if state is not None and state.rpc_url:
        return settings.model_copy(update={"rpc_url": state.rpc_url})
    return settings


def operator(settings: Settings) -> OperatorClient:
    """The operator's client of the running stack's pool, else of `pool_listen`."""
    return OperatorClient(settings, address=operator_address(settings))


def _console() -> Console:
    # No wrapping: keys, addresses and commands are copied from this output.
    return Console(highlight=False, soft_wrap=True)


def operator_address(settings: Settings) -> str:
    """Where the operator reaches the pool: the running stack's, else `pool_listen`."""
    state = running_stack(settings)
    return state.pool_address if state else settings.pool_listen


def grpcurl(settings: Settings, method: str, body: str) -> str:
    """The grpcurl command that calls PoolService ``method`` as the operator."""
    certs = settings.layout().certs
    return (
        f"grpcurl -cacert {certs}/ca.pem -cert {certs}/operator.pem"
        f" -key {certs}/operator-key.pem -d '{body}' {operator_address(settings)}"
        f" kalepool.v1.PoolService/{method}"
    )


def _print_env(console: Console, env: dict[str, str], *, key_issued: bool) -> None:
    """The mining machine's settings; secrets only as where they are, except an API key
    issued in this very call (shown this once: the pool keeps only its hash)."""
    for key, value in env.items():
        if key == f"{ENV_PREFIX}POOLER_CHANNEL_SECRETS":
            value = "… (the fee accounts' secret keys: see the file)"
        elif key == f"{ENV_PREFIX}POOLER_API_KEY" and not key_issued:
            value = "… (issued before: see the file)"
        console.print(escape(f"{key}={value}"), highlight=False, soft_wrap=True)


async def _add_pooler(
    settings: Settings,
    name: str,
    public_key: str | None,
    max_farmers: int | None,
    console: Console,
) -> None:
    settings = chain_settings(settings)
    address = operator_address(settings)
    async with operator(settings) as op:
        chain: ChainClient | None = None
        friendbot: Friendbot | None = None
        try:
            if public_key is None:
                chain = ChainClient(await resolve_chain_config(settings), poll_interval=0.5)
                friendbot = await Friendbot.for_network(settings, settings.rpc_url or "")
            made = await provision_pooler(
                op,
                settings,
                name,
                pool_address=address,
                rpc_url=settings.rpc_url if settings.network is Network.DEVNET else None,
                chain=chain,
                friendbot=friendbot,
                public_key=public_key,
                max_farmers=max_farmers,
            )
        finally:
            if friendbot is not None:
                await friendbot.close()
            if chain is not None:
                await chain.aclose()
    p = made.pooler
    how = "registered" if made.registered else "already registered"
    console.print(f"pooler {p.name} {how}: id {p.pooler_id}, account {p.public_key}")
    if made.api_key_issued:
        console.print(
            f"its API key was issued now: shown below this once (also in"
            f" {made.bundle.env_file}, 0600; the pool keeps only its hash)",
            highlight=False,
        )
    else:
        console.print(
            f"its API key is in {made.bundle.env_file} (0600), not shown again"
            " (RotatePoolerApiKey issues a new one)",
            highlight=False,
        )
    if made.certificate:
        console.print(f"client certificate: {made.bundle.cert} (key {made.bundle.key}, 0600)")
    else:
        for line in csr_instructions(name, p.pooler_id):
            console.print(escape(line), highlight=False, soft_wrap=True)
    if made.funded:
        console.print(f"{made.funded} fee accounts funded by the friendbot")
    if public_key is None and not made.funded and friendbot is None:
        console.print(
            f"fund {p.public_key} and the other fee accounts with XLM: they pay the work fees"
        )
    console.print(f"\nThe mining machine's settings ({made.bundle.env_file}, 0600):")
    _print_env(console, made.env, key_issued=made.api_key_issued)
    console.print(
        f"\nOn the mining machine: copy {made.bundle.directory} there, then"
        f"\n  set -a; . ./pooler.env; set +a; KALE_POOL_DATA_DIR=$PWD kale-pool pooler"
        f"\n(its certs/ holds the certificate; {ENV_PREFIX}POOL_ADDRESS must reach the pool"
        " from that machine)",
        highlight=False,
    )


def add_pooler(
    settings: Settings,
    name: str,
    *,
    public_key: str | None = None,
    max_farmers: int | None = None,
    console: Console | None = None,
) -> None:
    """`kale-pool pooler add NAME`."""
    if public_key is not None and not StrKey.is_valid_ed25519_public_key(public_key):
        raise CommandError(f"--public-key: not a Stellar account id (G…): {public_key!r}")
    with _one_line(operator_address(settings)):
        asyncio.run(_add_pooler(settings, name, public_key, max_farmers, console or _console()))


def keygen(settings: Settings, name: str, *, new_key: bool, console: Console | None = None) -> None:
    """`kale-pool pooler keygen [NAME]`, on the mining machine."""
    console = console or _console()
    try:
        key, csr, made = pooler_keygen(settings.layout().certs, name, new_key=new_key)
    except PoolerSetupError as error:
        raise CommandError(str(error)) from None
    how = "made now" if made else "kept (made before; --new-key replaces it)"
    console.print(f"private key: {key} (0600, {how}); it never leaves this machine")
    console.print(f"certificate signing request: {csr}")
    console.print(
        "Send the request to the pool's operator, who signs it and registers the certificate:"
        f"\n  kale-pool pooler cert add <pooler id> --csr {csr.name}"
        f"\nthen put the certificate in {key.parent}/{name}.pem (and the pool's ca.pem beside it)."
    )


def _certificate_line(cert: pool_pb2.PoolerCertificate) -> str:
    state = (
        f"revoked {cert.revoked_at.ToDatetime():%Y-%m-%d %H:%M}"
        if cert.HasField("revoked_at")
        else "active"
    )
    return (
        f"{cert.fingerprint}  {state}  expires {cert.not_after.ToDatetime():%Y-%m-%d}"
        f"  {cert.subject}"
    )


def _signed(settings: Settings, csr_file: Path, console: Console) -> Path:
    """Sign the CSR with the development CA; the certificate's path (beside the CSR)."""
    pki = DevPki(settings.layout().certs)
    if not (pki.directory / "ca-key.pem").is_file():
        raise CommandError(
            f"--csr needs the CA's key in {pki.directory} (the development CA); sign the"
            " request where the CA lives and pass --cert"
        )
    try:
        cert_pem = pki.sign_csr(csr_file.read_bytes())
    except ValueError as error:
        raise CommandError(f"{csr_file}: {error}") from None
    cert_file = csr_file.with_suffix(".pem")
    cert_file.write_bytes(cert_pem)
    console.print(f"signed by the development CA: {cert_file}")
    return cert_file


async def _cert_add(settings: Settings, pooler_id: str, cert_pem: str, console: Console) -> None:
    async with operator(settings) as op:
        added = await op.pool.AddPoolerCertificate(
            pool_pb2.AddPoolerCertificateRequest(pooler_id=pooler_id, certificate_pem=cert_pem),
            timeout=op.timeout,
        )
    console.print(f"certificate added to pooler {pooler_id}:")
    console.print(escape(_certificate_line(added.certificate)))


def add_certificate(
    settings: Settings,
    pooler_id: str,
    *,
    cert_file: Path | None,
    csr_file: Path | None,
    console: Console | None = None,
) -> None:
    """`kale-pool pooler cert add POOLER_ID --cert FILE | --csr FILE`."""
    console = console or _console()
    if (cert_file is None) == (csr_file is None):
        raise CommandError("give exactly one of --cert (a signed certificate) or --csr")
    for path in (cert_file, csr_file):
        if path is not None and not path.is_file():
            raise CommandError(f"{path}: no such file")
    if csr_file is not None:
        cert_file = _signed(settings, csr_file, console)
    assert cert_file is not None
    with _one_line(operator_address(settings)):
        asyncio.run(_cert_add(settings, pooler_id, cert_file.read_text(), console))
    console.print(
        f"Install {cert_file.name} on the mining machine as certs/<name>.pem; once it runs"
        " with it, revoke the old certificate (kale-pool pooler cert revoke)."
    )


async def _cert_list(settings: Settings, pooler_id: str, console: Console) -> None:
    async with operator(settings) as op:
        listed = await op.pool.ListPoolerCertificates(
            pool_pb2.ListPoolerCertificatesRequest(pooler_id=pooler_id), timeout=op.timeout
        )
    if not listed.certificates:
        console.print(
            f"pooler {pooler_id} has no certificate: PoolerService refuses it until one is"
            " added (kale-pool pooler cert add)"
        )
    for cert in listed.certificates:
        console.print(escape(_certificate_line(cert)))


def list_certificates(settings: Settings, pooler_id: str, console: Console | None = None) -> None:
    """`kale-pool pooler cert list POOLER_ID`."""
    with _one_line(operator_address(settings)):
        asyncio.run(_cert_list(settings, pooler_id, console or _console()))


async def _cert_revoke(
    settings: Settings, pooler_id: str, fingerprint: str, console: Console
) -> None:
    async with operator(settings) as op:
        revoked = await op.pool.RevokePoolerCertificate(
            pool_pb2.RevokePoolerCertificateRequest(pooler_id=pooler_id, fingerprint=fingerprint),
            timeout=op.timeout,
        )
    console.print("certificate revoked; calls with it are refused from now on:")
    console.print(escape(_certificate_line(revoked.certificate)))


def revoke_certificate(
    settings: Settings, pooler_id: str, fingerprint: str, console: Console | None = None
) -> None:
    """`kale-pool pooler cert revoke POOLER_ID FINGERPRINT`."""
    with _one_line(operator_address(settings)):
        asyncio.run(_cert_revoke(settings, pooler_id, fingerprint, console or _console()))


async def _add_farmer(
    settings: Settings,
    pooler_id: str,
    payout: str,
    stake_bps: int,
    idempotency_key: str,
    console: Console,
) -> None:
    async with operator(settings) as op:
        made = await op.pool.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler_id,
                payout_address=payout,
                stake_bps=stake_bps,
                idempotency_key=idempotency_key,
            ),
            timeout=op.timeout,
        )
    f = made.farmer
    xlm = made.min_funding_xlm_stroops / KALE
    console.print(f"farmer {f.farmer_id} registered with pooler {f.pooler_id}", highlight=False)
    console.print(f"custodial address: {made.custodial_address}", highlight=False)
    if not made.needs_funding:
        console.print("it is funded already")
        return
    console.print(
        f"1. send at least {xlm:g} XLM to {made.custodial_address} (account reserve, KALE"
        " trustline reserve, fees);",
        highlight=False,
    )
    if settings.network is Network.DEVNET:
        console.print(
            f"   on the devnet: kale-pool farmer fund {f.farmer_id} (friendbot XLM and KALE,"
            " then the trustline)",
            highlight=False,
        )
    console.print(
        "2. confirm the funding (the pool then adds the KALE trustline):\n   "
        + grpcurl(settings, "ConfirmFunding", f'{{"farmer_id": "{f.farmer_id}"}}'),
        highlight=False,
    )
    console.print(
        f"3. send KALE to {made.custodial_address}: {stake_bps / 100:g} % of the balance is"
        " staked in each block; the payout address must trust KALE to receive payouts.",
        highlight=False,
    )


def add_farmer(
    settings: Settings,
    *,
    pooler_id: str,
    payout: str,
    stake_bps: int,
    idempotency_key: str | None,
    console: Console | None = None,
) -> None:
    """`kale-pool farmer add`."""
    import secrets

    key = idempotency_key or f"cli:{secrets.token_hex(16)}"
    with _one_line(operator_address(settings)):
        asyncio.run(_add_farmer(settings, pooler_id, payout, stake_bps, key, console or _console()))


async def _fund_farmer(settings: Settings, farmer_id: str, kale: float, console: Console) -> None:
    from kalepool.app.demo import fund_farmer

    settings = chain_settings(settings)
    friendbot = await Friendbot.for_network(settings, settings.rpc_url or "")
    assert friendbot is not None
    try:
        async with (
            operator(settings) as op,
            ChainClient(await resolve_chain_config(settings), poll_interval=0.5) as chain,
        ):
            got = await op.pool.GetFarmer(
                pool_pb2.GetFarmerRequest(farmer_id=farmer_id), timeout=op.timeout
            )
            farmer, paid = await fund_farmer(
                op,
                chain,
                friendbot,
                got.farmer,
                kale_stroops=round(kale * KALE),
                pause=float(settings.ledger_seconds()),
                always=True,
            )
    finally:
        await friendbot.close()
    console.print(f"farmer {farmer.farmer_id} is funded and active", highlight=False)
    if paid:
        console.print(
            f"{format_kale(paid)} KALE paid to {farmer.custodial_address}", highlight=False
        )


def fund_farmer_command(
    settings: Settings, farmer_id: str, *, kale: float, console: Console | None = None
) -> None:
    """`kale-pool farmer fund` (devnet only)."""
    if settings.network is not Network.DEVNET:
        raise CommandError(
            f"farmer fund uses the devnet's friendbot; on {settings.network.value} send XLM"
            " and KALE to the custodial address yourself"
        )
    if kale < 0:
        raise CommandError("--kale cannot be negative")
    with _one_line(operator_address(settings)):
        asyncio.run(_fund_farmer(settings, farmer_id, kale, console or _console()))
