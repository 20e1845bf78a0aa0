"""The wallet service's metrics beyond the shared ones (gRPC calls in
`kalepool.grpc_server`, chain calls in `kalepool.chain.metrics`, payout refusals in
`wallet_service.policy`): database health, checked on a loop of its own since the wallet
runs no monitor pass (the pool's alert engine judges what the wallet exports through
Prometheus; see deploy/base/alerts.yaml)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kalepool.db.health import check_database

log = logging.getLogger("wallet_service")


async def watch_database(conninfo: str, interval: float, deadline_seconds: float) -> None:
    """Set the database gauges every `interval` seconds until cancelled."""
    was_up = True
    while True:
        health = await check_database(conninfo, deadline_seconds)
        if health.up != was_up:
            log.warning(
                "database %s", "reachable again" if health.up else f"unreachable: {health.error}"
            )
            was_up = health.up
        await asyncio.sleep(interval)


def start_database_watch(
    conninfo: str, interval: float, timeout: float, stack: contextlib.AsyncExitStack
) -> None:
    """Run :func:`watch_database` until `stack` closes."""
    task = asyncio.create_task(watch_database(conninfo, interval, timeout), name="wallet-db-health")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
