"""Bringing up a kale-pool deployment on one machine, and looking at one.

`kale-pool up` and the inspection commands (`status`, `check`, `db ...`) share
this: how the database is found (``DATABASE_URL`` or the embedded server in the
data directory) and which parts run. The parts themselves live in their own
packages; this module only wires them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from kalepool.db import resolve_conninfo
from kalepool.db.consistency import check_consistency
from kalepool.db.migrate import apply_migrations, migration_status
from kalepool.serving import StartupError, serve_metrics, wait_for_shutdown
from kalepool.settings import ENV_PREFIX, Network, Settings
from kalepool.tls import OPERATOR, POOL_CLIENT, DevPki, ensure_dev_identities

log = logging.getLogger("kalepool")
console = Console(stderr=True)


def _describe_database(settings: Settings) -> str:
    if settings.database_url is not None:
        return "DATABASE_URL"
    return f"embedded PostgreSQL in {settings.layout().postgres}"


def migrate(settings: Settings) -> None:
    """Apply pending migrations and say what was applied."""
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    applied = apply_migrations(conninfo)
    if applied:
        for migration in applied:
            console.print(f"applied {migration.version:04d} {migration.name}")
    else:
        console.print("schema is current: nothing to apply")


def show_migrations(settings: Settings) -> None:
    """Print applied and pending migrations."""
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    table = Table("version", "name", "state")
    for entry in migration_status(conninfo):
        table.add_row(f"{entry.version:04d}", entry.name, "applied" if entry.applied else "pending")
    Console().print(table)


def run_check(settings: Settings) -> bool:
    """Check that derived state agrees with the events; True when it does."""
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    import psycopg

    with psycopg.connect(conninfo) as conn:
        problems = check_consistency(conn)
    for problem in problems:
        console.print(f"[red]inconsistent:[/red] {problem}")
    if not problems:
        console.print("balances, counters and block totals agree with the event tables")
    return not problems


def show_status(settings: Settings) -> None:
    """Print the data directory, the database state and the chain profile."""
    layout = settings.layout()
    table = Table("what", "state", show_header=False)
    table.add_row("network", settings.network.value)
    table.add_row("data directory", str(layout.root))
    conninfo = resolve_conninfo(settings, start=False)
    if conninfo is None:
        table.add_row("database", f"{_describe_database(settings)}: not running")
    else:
        try:
            pending = [m for m in migration_status(conninfo) if not m.applied]
            state = "schema current" if not pending else f"{len(pending)} migrations pending"
        except Exception as error:  # status must report, not crash, on an unreachable DB
            state = f"unreachable ({type(error).__name__})"
        table.add_row("database", f"{_describe_database(settings)}: {state}")
    table.add_row("rpc", settings.rpc_url or "—")
    Console().print(table)


@dataclass
class Part:
    """One part of a deployment as `up` reports it."""

    name: str
    state: str
    detail: str = ""


def _print_parts(parts: list[Part]) -> None:
    table = Table("part", "state", "detail", title="kale-pool up")
    colours = {"running": "green", "ready": "green", "separate": "cyan", "not built yet": "yellow"}
    for part in parts:
        colour = colours.get(part.state, "red")
        table.add_row(part.name, f"[{colour}]{part.state}[/{colour}]", part.detail)
    console.print(table)


@contextlib.asynccontextmanager
async def _devnet(settings: Settings) -> AsyncIterator[tuple[Part, str | None]]:
    """Run the local chain in-process when the profile is devnet; yields its RPC URL."""
    if settings.network is not Network.DEVNET:
        yield Part("chain", "ready", f"{settings.network.value} at {settings.rpc_url}"), None
        return
    from kalepool.devnet.config import DevnetConfig
    from kalepool.devnet.server import DevnetServer

    config = DevnetConfig(
        host="127.0.0.1",
        port=settings.devnet_port,
        ledger_seconds=settings.devnet_ledger_seconds,
        block_seconds=settings.devnet_block_seconds,
        state_path=settings.layout().devnet_state,
    )
    server = DevnetServer(config)
    try:
        await server.start()
    except OSError as error:
        raise StartupError(
            f"cannot start the devnet on 127.0.0.1:{settings.devnet_port}: "
            f"{error.strerror or error} (another kale-pool up or devnet running? "
            "set KALE_POOL_DEVNET_PORT)"
        ) from None
    try:
        yield Part("devnet", "running", f"Stellar RPC at {server.url}"), f"{server.url}/"
    finally:
        await server.stop()


async def _up(settings: Settings) -> None:
    parts: list[Part] = []
    conninfo = await asyncio.to_thread(resolve_conninfo, settings)
    assert conninfo is not None
    parts.append(Part("database", "running", _describe_database(settings)))
    applied = await asyncio.to_thread(apply_migrations, conninfo)
    parts.append(Part("migrations", "ready", f"{len(applied)} applied now, schema current"))
    certs = settings.layout().certs
    names = await asyncio.to_thread(ensure_dev_identities, DevPki(certs))
    parts.append(Part("certificates", "ready", f"development CA and {', '.join(names)} in {certs}"))
    async with contextlib.AsyncExitStack() as stack:
        chain_part, devnet_url = await stack.enter_async_context(_devnet(settings))
        parts.append(chain_part)
        if devnet_url is not None:
            settings = settings.model_copy(update={"rpc_url": devnet_url})
        wallet_part, wallet_port = await _wallet(settings, conninfo, stack)
        parts.append(wallet_part)
        parts.append(await _pool(settings, conninfo, stack, wallet_port))
        parts.append(_metrics(settings, stack))
        parts.append(Part("pooler_agent", "separate", "runs on mining machines: kale-pool pooler"))
        _print_parts(parts)
        console.print("Ctrl-C stops everything.")
        await wait_for_shutdown()
    console.print("stopped")


def _metrics(settings: Settings, stack: contextlib.AsyncExitStack) -> Part:
    """Serve Prometheus metrics (every gRPC call's count and latency) over HTTP."""
    return Part("metrics", "running", serve_metrics(settings, stack))


async def _wallet(
    settings: Settings, conninfo: str, stack: contextlib.AsyncExitStack
) -> tuple[Part, int]:
    """Start the wallet service in-process; on the devnet with a generated master key."""
    from wallet_service.keystore import MasterKeyError, ensure_devnet_master_key
    from wallet_service.server import start_wallet_for

    if (
        settings.network is Network.DEVNET
        and settings.master_key is None
        and settings.master_key_file is None
    ):
        key_file = ensure_devnet_master_key(settings)
        settings = settings.model_copy(update={"master_key_file": key_file})
    try:
        server = await start_wallet_for(settings, conninfo, stack)
    except MasterKeyError as error:
        raise StartupError(str(error)) from None
    except RuntimeError as error:  # grpc cannot bind the address
        raise StartupError(
            f"cannot start the wallet service on {settings.wallet_listen}: {error} "
            "(set KALE_POOL_WALLET_LISTEN)"
        ) from None
    host = settings.wallet_listen.rsplit(":", 1)[0]
    detail = f"{host}:{server.port}, mTLS, serves {POOL_CLIENT}"
    return Part("wallet_service", "running", detail), server.port


async def _pool(
    settings: Settings, conninfo: str, stack: contextlib.AsyncExitStack, wallet_port: int
) -> Part:
    """Start the pool service in-process, calling the wallet service just started."""
    from pool_service.server import start_pool_for

    try:
        server = await start_pool_for(
            settings, conninfo, stack, wallet_address=f"127.0.0.1:{wallet_port}"
        )
    except RuntimeError as error:  # grpc cannot bind the address
        raise StartupError(
            f"cannot start the pool service on {settings.pool_listen}: {error} "
            "(set KALE_POOL_POOL_LISTEN)"
        ) from None
    host = settings.pool_listen.rsplit(":", 1)[0]
    return Part("pool_service", "running", f"{host}:{server.port}, mTLS: {OPERATOR} and poolers")


def run_up(settings: Settings) -> None:
    """`kale-pool up`: start what exists, say honestly what does not, run until stopped."""
    settings.layout().ensure()
    asyncio.run(_up(settings))


def show_config(settings: Settings) -> None:
    """Print every setting as ``NAME=value`` lines (the .env format); secrets are masked."""
    for name, value in settings.model_dump().items():
        env_name = "DATABASE_URL" if name == "database_url" else f"{ENV_PREFIX}{name.upper()}"
        shown = "" if value is None else getattr(value, "value", value)
        print(f"{env_name}={shown}")
