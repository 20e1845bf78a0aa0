"""The operator's commands: `pooler add`, `farmer add`, `farmer fund`.

Each talks to the pool through PoolService as the `operator` (the running stack's pool,
else `KALE_POOL_POOL_LISTEN`), exactly as grpcurl would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import grpc
from rich.console import Console
from rich.markup import escape
from stellar_sdk import StrKey

from kalepool.amounts import format_kale
from kalepool.app.commands import CommandError, rpc_error
from kalepool.app.funding import KALE, Friendbot, FundingError
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import PoolerSetupError, csr_instructions, provision_pooler
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, ChainConfigError, ChainError, resolve_chain_config
from kalepool.settings import ENV_PREFIX, Network, Settings
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
        for line in csr_instructions(name, settings.layout().certs):
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
