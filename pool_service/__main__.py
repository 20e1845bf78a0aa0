"""`python -m pool_service`: run the pool service from the environment's settings."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack, suppress

from kalepool.db import resolve_conninfo
from kalepool.db.migrate import apply_migrations
from kalepool.settings import Settings, SettingsError, load_settings
from pool_service.server import start_pool_for


async def serve_pool(settings: Settings) -> None:
    """Serve the pool (and its metrics endpoint) until SIGINT or SIGTERM."""
    from prometheus_client import start_http_server

    settings.layout().ensure()
    async with AsyncExitStack() as stack:
        conninfo = await asyncio.to_thread(resolve_conninfo, settings)
        assert conninfo is not None
        # Replicas starting together are safe: migrations take an advisory lock.
        await asyncio.to_thread(apply_migrations, conninfo)
        await start_pool_for(settings, conninfo, stack)
        metrics, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
        stack.callback(metrics.shutdown)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"pool service: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with suppress(KeyboardInterrupt):
        asyncio.run(serve_pool(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
