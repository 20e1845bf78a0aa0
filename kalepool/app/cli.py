"""The `kale-pool` command: one entry point for operators, poolers and developers.

Each command imports what it needs lazily so `kale-pool --help` stays instant.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from kalepool import __version__
from kalepool.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="kale-pool: pooled KALE farming on Stellar.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(
    help="Database: migrations and their status, backup and restore.", no_args_is_help=True
)
config_app = typer.Typer(help="Configuration: show the effective settings.", no_args_is_help=True)
pooler_app = typer.Typer(
    help="Pooler: `kale-pool pooler` runs the pooler agent on a mining machine (plant through"
    " the pool, mine, submit work, until Ctrl-C); `kale-pool pooler keygen` makes its key and"
    " CSR there; `kale-pool pooler add NAME` adds a pooler and `kale-pool pooler cert ...`"
    " manages its certificates (operator).",
    invoke_without_command=True,
)
farmer_app = typer.Typer(
    help="Farmers: add one, fund it on the devnet, pay out, leave the pool.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(pooler_app, name="pooler")
cert_app = typer.Typer(
    help="A pooler's client certificates (operator): add one (signed, or a CSR signed by the"
    " development CA), list them, revoke one. A pooler is admitted only with its API key and"
    " an active certificate of its own.",
    no_args_is_help=True,
)
pooler_app.add_typer(cert_app, name="cert")
app.add_typer(farmer_app, name="farmer")
wallet_app = typer.Typer(help="The wallet's custody: master key rotation.", no_args_is_help=True)
app.add_typer(wallet_app, name="wallet")
contract_app = typer.Typer(
    help="The contract watch (operator): plants are held while the farm contract runs code"
    " nobody acknowledged, or is paused; see what the pool sees, acknowledge reviewed code.",
    no_args_is_help=True,
)
app.add_typer(contract_app, name="contract")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one clear line to stderr and exit (no traceback for a user's mistake)."""
    from kalepool.masking import redact

    print(f"kale-pool: {redact(message)}", file=sys.stderr)
    raise typer.Exit(code)


def settings_from(ctx: typer.Context, **extra: Any) -> Settings:
    """The settings for this invocation: environment and .env, with global flags (and a
    command's own ``extra`` overrides) on top."""
    overrides: dict[str, Any] = {**(ctx.find_root().obj or {}), **extra}
    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        fail(f"configuration error: {error}")
    from kalepool.logs import configure_logging

    configure_logging(settings.log_level, settings)
    return settings


@contextlib.contextmanager
def operator_errors() -> Iterator[None]:
    """Turn the failures an operator can fix (database unreachable, migration refused)
    into one clear line instead of a traceback."""
    import psycopg

    from kalepool.db.migrate import MigrationError
    from kalepool.serving import StartupError

    try:
        yield
    except StartupError as error:
        fail(str(error), code=1)
    except MigrationError as error:
        fail(f"migration refused: {error}", code=1)
    except psycopg.OperationalError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        fail(f"cannot reach the database: {first_line}", code=1)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="State directory (embedded database, devnet, certificates, logs). "
            "Default: KALE_POOL_DATA_DIR or the user's data directory.",
        ),
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(
            "--network",
            help="Chain profile: devnet, testnet or mainnet (default: KALE_POOL_NETWORK, devnet).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Global options shared by every command."""
    ctx.obj = {"data_dir": data_dir, "network": network}


@app.command()
def up(
    ctx: typer.Context,
    poolers: Annotated[
        int, typer.Option("--poolers", help="Local pooler agents to provision and run.")
    ] = 1,
    farmers: Annotated[
        int, typer.Option("--farmers", help="Demo farmers to register and fund (devnet).")
    ] = 6,
    blocks: Annotated[
        int | None,
        typer.Option("--blocks", help="Stop after this many complete cycles; print a summary."),
    ] = None,
    block_seconds: Annotated[
        int | None,
        typer.Option(
            "--block-seconds",
            help="Devnet block interval (default: KALE_POOL_DEVNET_BLOCK_SECONDS, 60).",
        ),
    ] = None,
    no_demo: Annotated[
        bool,
        typer.Option("--no-demo", help="The bare pool: services only, no poolers or farmers."),
    ] = False,
    no_web: Annotated[
        bool,
        typer.Option(
            "--no-web",
            help="Leave out the farmers' web page (served on KALE_POOL_WEB_LISTEN,"
            " default 127.0.0.1:8443).",
        ),
    ] = False,
) -> None:
    """Run the pool on this machine, farming: database, devnet, services, the farmers' web
    page, poolers, demo farmers, each part its own process; until Ctrl-C (or --blocks)."""
    settings = settings_from(ctx, devnet_block_seconds=block_seconds)
    from kalepool.app.runstate import StackLockedError
    from kalepool.app.stack import UpError, UpOptions, run_up

    options = UpOptions(
        poolers=poolers, farmers=farmers, blocks=blocks, demo=not no_demo, web=not no_web
    )
    try:
        with operator_errors():
            code = run_up(settings, options)
    except (UpError, StackLockedError) as error:
        fail(str(error), code=1)
    raise typer.Exit(code)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show what runs (processes, addresses), the poolers, the current block and the pool's
    totals; without a running stack, what the data directory holds."""
    settings = settings_from(ctx)
    from kalepool.app.status import show_status

    with operator_errors():
        raise typer.Exit(show_status(settings))


@app.command()
def check(
    ctx: typer.Context,
    blocks: Annotated[
        int,
        typer.Option("--blocks", min=1, help="Recent blocks whose pails are compared."),
    ] = 12,
    offline: Annotated[
        bool, typer.Option("--offline", help="Only the books against themselves (no chain).")
    ] = False,
) -> None:
    """Prove the books: derived state against the events, and the events against the chain
    (balances, pails, works, harvests, every wallet transaction and KALE movement)."""
    settings = settings_from(ctx)
    from kalepool.app.status import nothing_has_run

    if nothing_has_run(settings):
        fail(
            f"nothing has run here yet: {settings.layout().root} holds no database"
            " (kale-pool up creates it)",
            code=1,
        )
    import asyncio

    from rich.console import Console

    from kalepool.app.books import ChainUnreachableError, check_books, print_report
    from kalepool.db import resolve_conninfo
    from kalepool.db.roles import AUDITOR

    with operator_errors():
        # The auditor on the embedded server: reads both services' rows, writes nothing.
        conninfo = resolve_conninfo(settings, role=AUDITOR)
        assert conninfo is not None
        try:
            report = asyncio.run(check_books(settings, conninfo, blocks=blocks, offline=offline))
        except ChainUnreachableError as error:
            fail(str(error), code=1)
    print_report(report, Console(stderr=True, highlight=False, soft_wrap=True), offline=offline)
    if not report.ok:
        raise typer.Exit(1)


@db_app.command("migrate")
def db_migrate(ctx: typer.Context) -> None:
    """Apply pending migrations (a no-op when the schema is current)."""
    settings = settings_from(ctx)
    from kalepool.app.maintenance import migrate

    with operator_errors():
        migrate(settings)


@wallet_app.command("rotate-key")
def wallet_rotate_key(
    ctx: typer.Context,
    retire: Annotated[
        bool,
        typer.Option(
            "--retire",
            help="Then remove from the keyring the versions no wallet uses any more (right"
            " after a finished rotation: only that).",
        ),
    ] = False,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            "--new-key-file",
            help="A file holding the new master key (base64 of 32 bytes); default: generated.",
        ),
    ] = None,
) -> None:
    """Rewrap every custodial key under a new master key (interrupted: run it again)."""
    settings = settings_from(ctx)
    from kalepool.app.maintenance import rotate_key

    with operator_errors():
        code = rotate_key(settings, retire=retire, new_key_file=new_key_file)
    if code:
        raise typer.Exit(code)


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """List applied and pending migrations."""
    settings = settings_from(ctx)
    from kalepool.app.maintenance import show_migrations

    with operator_errors():
        show_migrations(settings)


@db_app.command("backup")
def db_backup(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="The backup file to write (replaced atomically if it exists). Default:"
            " <data dir>/backups/kale-pool-<UTC time>.dump."
        ),
    ] = None,
) -> None:
    """Back up the pool's database: one consistent snapshot (pg_dump, custom format), 0600;
    prints its size and what it holds. The master key is not in it: back that up apart."""
    settings = settings_from(ctx)
    from rich.console import Console

    from kalepool.app.backup import BackupError, backup_command

    try:
        with operator_errors():
            backup_command(settings, path, Console(stderr=True, highlight=False, soft_wrap=True))
    except BackupError as error:
        fail(str(error), code=1)


@db_app.command("restore")
def db_restore(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A file `kale-pool db backup` wrote.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore into a database that is not empty, replacing what the backup holds.",
        ),
    ] = False,
) -> None:
    """Restore a backup into an empty database in one transaction, grant the services'
    roles, then check the books against themselves (not while kale-pool up runs)."""
    settings = settings_from(ctx)
    from rich.console import Console

    from kalepool.app.backup import BackupError, restore_command

    try:
        with operator_errors():
            consistent = restore_command(
                settings,
                path,
                force=force,
                console=Console(stderr=True, highlight=False, soft_wrap=True),
            )
    except BackupError as error:
        fail(str(error), code=1)
    if not consistent:
        raise typer.Exit(1)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print every effective setting (secrets masked)."""
    settings = settings_from(ctx)
    from kalepool.app.maintenance import show_config

    show_config(settings)


@app.command()
def mine(
    index: Annotated[int, typer.Option("--index", help="Block index.")],
    entropy: Annotated[
        str, typer.Option("--entropy", help="The block's entropy: 64 hex digits (or base64).")
    ],
    farmer: Annotated[str, typer.Option("--farmer", help="Farmer address, G... or C....")],
    seconds: Annotated[float, typer.Option("--seconds", help="How long to mine.")],
    threads: Annotated[
        int | None, typer.Option("--threads", help="Hashing threads (default: one per core).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="Force a kernel: scalar, avx2 or avx512.")
    ] = None,
    target_zeros: Annotated[
        int | None, typer.Option("--target-zeros", help="Stop early at this many zeros.")
    ] = None,
) -> None:
    """Mine one farmer's nonce: live hash rate, then the best hash (to size a machine)."""
    from kalepool.app.mining import run_mine

    try:
        code = run_mine(index, entropy, farmer, seconds, threads, backend, target_zeros)
    except ValueError as error:
        fail(str(error))
    raise typer.Exit(code)


@pooler_app.callback()
def pooler(ctx: typer.Context) -> None:
    """Run the pooler agent: plant through the pool, mine, submit work, until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_from(ctx)
    from kalepool.chain import ChainError
    from pooler_agent.agent import AgentError, run_pooler

    try:
        run_pooler(settings)
    except (ValueError, AgentError) as error:
        fail(str(error), code=1)
    except ChainError as error:
        fail(f"cannot reach the chain: {error}", code=1)


@pooler_app.command("add")
def pooler_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The pooler's name (letters, digits, dashes).")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The mining machine's own account (G...); default: made here, with fee"
            " accounts (friendbot-funded where the network has one).",
        ),
    ] = None,
    max_farmers: Annotated[
        int | None, typer.Option("--max-farmers", help="The most farmers it may serve.")
    ] = None,
) -> None:
    """Register a pooler, issue its client certificate and API key, and print the settings
    its mining machine needs (operator)."""
    settings = settings_from(ctx)
    from kalepool.app.admin import add_pooler

    with pool_command(), operator_errors():
        add_pooler(settings, name, public_key=public_key, max_farmers=max_farmers)


@pooler_app.command("keygen")
def pooler_keygen(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="The pooler's certificate name (default: KALE_POOL_POOLER_CERT_NAME)."),
    ] = None,
    new_key: Annotated[
        bool, typer.Option("--new-key", help="Replace the key (rotation): a new CSR to sign.")
    ] = False,
) -> None:
    """Make the pooler's private key here (certs/NAME-key.pem, 0600) and a certificate
    signing request (certs/NAME.csr) for the pool's operator to sign (mining machine)."""
    settings = settings_from(ctx)
    from kalepool.app.admin import keygen

    with pool_command():
        keygen(settings, name or settings.pooler_cert_name, new_key=new_key)


PoolerIdArgument = Annotated[str, typer.Argument(help="The pooler's id.")]


@cert_app.command("add")
def pooler_cert_add(
    ctx: typer.Context,
    pooler_id: PoolerIdArgument,
    cert: Annotated[
        Path | None, typer.Option("--cert", help="A certificate (PEM) signed by the pool's CA.")
    ] = None,
    csr: Annotated[
        Path | None,
        typer.Option("--csr", help="A CSR (kale-pool pooler keygen) to sign with the dev CA."),
    ] = None,
) -> None:
    """Register a client certificate for a pooler (its old ones keep working until revoked)."""
    settings = settings_from(ctx)
    from kalepool.app.admin import add_certificate

    with pool_command():
        add_certificate(settings, pooler_id, cert_file=cert, csr_file=csr)


@cert_app.command("list")
def pooler_cert_list(ctx: typer.Context, pooler_id: PoolerIdArgument) -> None:
    """A pooler's certificates: fingerprint, active or revoked, expiry, subject."""
    settings = settings_from(ctx)
    from kalepool.app.admin import list_certificates

    with pool_command():
        list_certificates(settings, pooler_id)


@cert_app.command("revoke")
def pooler_cert_revoke(
    ctx: typer.Context,
    pooler_id: PoolerIdArgument,
    fingerprint: Annotated[str, typer.Argument(help="The certificate's SHA-256 fingerprint.")],
) -> None:
    """Revoke a pooler's certificate: refused at once, open streams ended within seconds."""
    settings = settings_from(ctx)
    from kalepool.app.admin import revoke_certificate

    with pool_command():
        revoke_certificate(settings, pooler_id, fingerprint)


@contract_app.command("status")
def contract_status(ctx: typer.Context) -> None:
    """The farm contract's code hash, the acknowledged one, paused, and whether plants go out."""
    settings = settings_from(ctx)
    from kalepool.app.contract import show_status

    with pool_command():
        show_status(settings)


@contract_app.command("ack")
def contract_ack(
    ctx: typer.Context,
    wasm_hash: Annotated[
        str, typer.Argument(help="The code hash you reviewed: the one `contract status` shows.")
    ],
) -> None:
    """Acknowledge the farm contract's current code after review: plants resume."""
    settings = settings_from(ctx)
    from kalepool.app.contract import acknowledge

    with pool_command():
        acknowledge(settings, wasm_hash)


@farmer_app.command("add")
def farmer_add(
    ctx: typer.Context,
    pooler_id: Annotated[str, typer.Option("--pooler", help="The pooler's id.")],
    payout: Annotated[
        str, typer.Option("--payout", help="The farmer's own account (G...) for payouts.")
    ],
    stake_bps: Annotated[
        int,
        typer.Option("--stake-bps", help="Share of the balance staked per block, 0 to 10000."),
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeat safely: the same key, the same farmer."),
    ] = None,
) -> None:
    """Register a farmer: prints its custodial address and exactly what to send there."""
    settings = settings_from(ctx)
    from kalepool.app.admin import add_farmer

    with pool_command(), operator_errors():
        add_farmer(
            settings,
            pooler_id=pooler_id,
            payout=payout,
            stake_bps=stake_bps,
            idempotency_key=idempotency_key,
        )


@farmer_app.command("fund")
def farmer_fund(
    ctx: typer.Context,
    farmer_id: Annotated[str, typer.Argument(help="The farmer's id.")],
    kale: Annotated[
        float, typer.Option("--kale", help="KALE to pay the custodial account (devnet).")
    ] = 100.0,
) -> None:
    """Fund a farmer on the devnet: friendbot XLM, ConfirmFunding (the trustline), KALE."""
    settings = settings_from(ctx)
    from kalepool.app.admin import fund_farmer_command

    with pool_command(), operator_errors():
        fund_farmer_command(settings, farmer_id, kale=kale)


@app.command()
def devnet(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = 8000,
    ledger_seconds: Annotated[
        int, typer.Option("--ledger-seconds", help="Seconds between ledger closes.")
    ] = 5,
    block_seconds: Annotated[
        int, typer.Option("--block-seconds", help="The farm's block interval in seconds.")
    ] = 300,
    state: Annotated[
        Path | None, typer.Option("--state", help="Keep the chain in this file across restarts.")
    ] = None,
) -> None:
    """Run the local Stellar RPC devnet with the KALE farm contract, until Ctrl-C."""
    from kalepool.app.devnet import DevnetMissingError, require_devnet

    try:
        require_devnet()
    except DevnetMissingError as error:
        fail(str(error), code=1)
    from kale_devnet.standalone import run_devnet

    try:
        run_devnet(host, port, ledger_seconds, block_seconds, state)
    except ValueError as error:
        fail(str(error))


# --- looking at the pool and handling money, through its API (as grpcurl would) ---------


@contextlib.contextmanager
def pool_command() -> Iterator[None]:
    """A pool that cannot be reached, or a refusal, as one line and a non-zero exit."""
    from kalepool.app.commands import CommandError

    try:
        yield
    except CommandError as error:
        fail(str(error), code=error.code)


CsvOption = Annotated[
    bool, typer.Option("--csv", help="Plain CSV on stdout: full ids, amounts in stroops.")
]


@app.command()
def blocks(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", help="How many recent blocks.")] = 10,
    csv: CsvOption = False,
) -> None:
    """The pool's recent blocks: planted, worked, harvested, best zeros, rewards, failures."""
    settings = settings_from(ctx)
    from kalepool.app.commands import show_blocks

    with pool_command():
        show_blocks(settings, last, csv)


class FarmerStatusChoice(StrEnum):
    """The farmer statuses `farmers --status` takes."""

    pending_funding = "pending-funding"
    active = "active"
    leaving = "leaving"
    departed = "departed"


@app.command()
def farmers(
    ctx: typer.Context,
    pooler: Annotated[str, typer.Option("--pooler", help="Only this pooler's farmers (id).")] = "",
    status: Annotated[
        FarmerStatusChoice | None, typer.Option("--status", help="Only farmers with this status.")
    ] = None,
    csv: CsvOption = False,
) -> None:
    """The pool's farmers: status, stake, balance in KALE, addresses."""
    settings = settings_from(ctx)
    from kalepool.app.commands import show_farmers

    with pool_command():
        show_farmers(settings, pooler, status.value if status else None, csv)


@app.command()
def poolers(ctx: typer.Context, csv: CsvOption = False) -> None:
    """The pool's poolers: farmers, last seen, stream, hash rate and capacity, rewards."""
    settings = settings_from(ctx)
    from kalepool.app.commands import show_poolers

    with pool_command():
        show_poolers(settings, csv)


@farmer_app.command("payout")
def farmer_payout(
    ctx: typer.Context,
    farmer_id: Annotated[str, typer.Argument(help="The farmer's id.")],
    amount: Annotated[
        str | None,
        typer.Option("--amount", help="KALE to pay out (default: the whole available balance)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Idempotency key: asking again with it never pays twice."),
    ] = None,
) -> None:
    """Send a farmer's KALE to its registered payout address."""
    settings = settings_from(ctx)
    from kalepool.amounts import parse_kale
    from kalepool.app.commands import payout

    stroops = 0
    if amount is not None:
        try:
            stroops = parse_kale(amount)
        except ValueError as error:
            fail(f"--amount: {error}")
        if stroops == 0:
            fail("--amount must be more than 0 (leave it out to pay out the whole balance)")
    with pool_command():
        settled = payout(settings, farmer_id, stroops, key)
    if not settled:
        raise typer.Exit(1)


@farmer_app.command("payout-address")
def farmer_payout_address(
    ctx: typer.Context,
    farmer_id: Annotated[str, typer.Argument(help="The farmer's id.")],
    new_address: Annotated[str, typer.Argument(help="The new payout address (G...).")],
    challenge: Annotated[
        str | None,
        typer.Option("--challenge", help="The challenge id printed by the first step."),
    ] = None,
    signature: Annotated[
        str | None,
        typer.Option(
            "--signature",
            help="The current payout key's SEP-53 signature of the challenge (base64 or hex).",
        ),
    ] = None,
    secret_stdin: Annotated[
        bool,
        typer.Option(
            "--secret-stdin",
            help="Devnet demos: read the current payout address's secret key (S...) from"
            " stdin, never echoed, and sign here.",
        ),
    ] = False,
    secret_env: Annotated[
        str | None,
        typer.Option(
            "--secret-env",
            help="Devnet demos: like --secret-stdin, from this environment variable.",
        ),
    ] = None,
) -> None:
    """Move a farmer's payouts to another address: only the farmer's CURRENT payout key can.

    Without --signature: prints a challenge (id, the exact text, its expiry) for the current
    payout key to sign. With --challenge and --signature: the wallet checks the signature
    and changes the address. With --secret-stdin or --secret-env: both steps at once.
    """
    settings = settings_from(ctx)
    from kalepool.app.commands import parse_signature
    from kalepool.app.commands import payout_address as change

    if (challenge is None) != (signature is None):
        fail("--challenge and --signature go together")
    if secret_stdin and secret_env:
        fail("give --secret-stdin or --secret-env, not both")
    if (secret_stdin or secret_env) and signature is not None:
        fail("--signature and a secret to sign with exclude each other")
    signed = None
    if signature is not None:
        try:
            signed = parse_signature(signature)
        except ValueError as error:
            fail(f"--signature: {error}")
    secret = None
    if secret_stdin:
        import getpass

        # A terminal does not echo what getpass reads; a pipe is read as it is.
        secret = getpass.getpass("secret key: ") if sys.stdin.isatty() else sys.stdin.readline()
        secret = secret.strip()
    elif secret_env:
        secret = os.environ.get(secret_env, "").strip()
        if not secret:
            fail(f"--secret-env: the environment variable {secret_env} is empty or not set")
    with pool_command():
        change(
            settings,
            farmer_id,
            new_address,
            challenge_id=challenge,
            signature=signed,
            secret=secret,
        )


@farmer_app.command("leave")
def farmer_leave(
    ctx: typer.Context,
    farmer_id: Annotated[str, typer.Argument(help="The farmer's id.")],
) -> None:
    """Leave the pool: planted no more; once harvested, everything goes to the payout address."""
    settings = settings_from(ctx)
    from kalepool.app.commands import leave

    with pool_command():
        leave(settings, farmer_id)


@app.command()
def report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Directory to write the report into.")],
    last: Annotated[
        int, typer.Option("--last", help="Only the last N blocks (default: all).", min=0)
    ] = 0,
) -> None:
    """The pool's history as CSV (blocks, farmers, ledger; stroops) and PNG charts."""
    settings = settings_from(ctx)
    from kalepool.app.commands import report as write

    with pool_command():
        write(settings, out, last)


def main() -> None:
    """Console-script entry point."""
    # gRPC's C core writes its own log lines (absl start-up notices, fork warnings) to the
    # terminal; they must be silenced before grpc is first imported. Inherited by every
    # process `up` starts. Set GRPC_VERBOSITY=ERROR (or DEBUG) to see them.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    app()


if __name__ == "__main__":
    main()
