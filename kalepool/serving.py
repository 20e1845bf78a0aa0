"""Running a service process: what `python -m wallet_service` and `python -m pool_service`
share (in a pod, or as processes of `kale-pool up`) — the database and its migrations,
the metrics endpoint, waiting for SIGINT/SIGTERM, and one clear line for a start-up
failure (a bad setting, a taken port, an unreachable chain), which `up` shows as the
reason the part stopped."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from kalepool.db import resolve_conninfo
from kalepool.db.migrate import MigrationError, apply_migrations
from kalepool.db.roles import DbRole
from kalepool.logs import configure_logging
from kalepool.processes import wait_for_shutdown
from kalepool.settings import ENV_PREFIX, Settings, SettingsError, load_settings

ServiceStarter = Callable[[Settings, str, contextlib.AsyncExitStack], Awaitable[object]]
"""Starts one service on the database ``conninfo`` (its role's), stopping it when the
stack closes."""


class StartupError(Exception):
    """A part could not start for a reason the operator can fix; the message says how."""


def serve_metrics(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    """Serve Prometheus metrics over HTTP until ``stack`` closes; the endpoint's URL."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{error.strerror or error} (set KALE_POOL_METRICS_PORT)"
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    stack.callback(stop)
    return f"http://{settings.metrics_host}:{server.server_port}/metrics"


async def open_database(settings: Settings, role: DbRole) -> str:
    """The deployment's database, migrated; the conninfo the service runs on.

    Pending migrations are applied with this process's credentials (replicas starting
    together are safe: migrations take an advisory lock): the embedded server's
    migrator, or whoever ``DATABASE_URL`` names. A service role may apply none, so with
    its own credentials a service starts only on a current schema (migrated first by
    `kale-pool db migrate` or the deployment's migration job). The service then runs as
    ``role`` on the embedded server, as ``DATABASE_URL`` names otherwise.
    """
    migrator = await asyncio.to_thread(resolve_conninfo, settings)
    assert migrator is not None
    try:
        await asyncio.to_thread(apply_migrations, migrator)
    except MigrationError as error:
        raise StartupError(str(error)) from None
    conninfo = await asyncio.to_thread(resolve_conninfo, settings, role=role)
    assert conninfo is not None
    return conninfo


async def serve(settings: Settings, start: ServiceStarter, role: DbRole) -> None:
    """Run one service (as its database ``role``) with its metrics endpoint until SIGINT
    or SIGTERM."""
    settings.layout().ensure()
    conninfo = await open_database(settings, role)
    async with contextlib.AsyncExitStack() as stack:
        try:
            await start(settings, conninfo, stack)
        except RuntimeError as error:
            # kalepool.grpc_server's "cannot listen on ADDRESS: ..." when the port is taken.
            if not str(error).startswith("cannot listen on"):
                raise
            raise StartupError(
                f"{error} (another process on that port? set {ENV_PREFIX}POOL_LISTEN,"
                f" {ENV_PREFIX}WALLET_LISTEN or their _HEALTH_LISTEN)"
            ) from None
        serve_metrics(settings, stack)
        await wait_for_shutdown()


def run_service(
    name: str,
    start: ServiceStarter,
    *,
    role: DbRole,
    preflight: Callable[[Settings], object] | None = None,
    operator_errors: tuple[type[Exception], ...] = (),
) -> int:
    """`python -m <service>`: settings from the environment, one line and exit 2 on a
    bad setting or any of ``operator_errors``, 0 after a clean stop. ``role``: the
    database role the service runs as on the embedded server. ``preflight``
    checks what can be checked before anything starts (a master key, say)."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings)
    from kalepool.chain import ChainConfigError, ChainError
    from kalepool.tls import MissingCertificateError

    # The chain unreachable or misconfigured at start-up is the operator's to fix too.
    known: tuple[type[Exception], ...] = (
        StartupError,
        ChainConfigError,
        ChainError,
        MissingCertificateError,
        *operator_errors,
    )
    try:
        if preflight is not None:
            preflight(settings)
        asyncio.run(serve(settings, start, role))
    except known as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
