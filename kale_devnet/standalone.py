"""`kale-pool devnet`: the devnet as a standalone process, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from kale_devnet.config import DevnetConfig
from kale_devnet.persist import StateFileError
from kale_devnet.server import DevnetServer


async def _serve(config: DevnetConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with DevnetServer(config) as server:
        info = server.info()
        lines = [
            f"kale-pool devnet: Stellar RPC at {server.url}",
            f"  network passphrase: {info['network_passphrase']}",
            f"  farm contract:      {info['farm_contract_id']}",
            f"  KALE asset:         {info['asset_code']}:{info['asset_issuer']}",
            f"  KALE contract:      {info['sac_contract_id']}",
            f"  friendbot:          {info['friendbot_url']}?addr=G...",
            f"  ledgers every {config.ledger_seconds}s, blocks every {config.block_seconds}s, "
            f"latest ledger {info['latest_ledger']}"
            + (f", state in {config.state_path}" if config.state_path else ""),
        ]
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            # The admin methods (close ledgers, faults) have no authentication.
            lines.append(
                f"  warning: listening on {config.host}: anyone who can reach it can close "
                "ledgers, move the clock and inject faults"
            )
        print("\n".join(lines), flush=True)
        await stop.wait()
    print("kale-pool devnet: stopped", flush=True)


def run_devnet(
    host: str, port: int, ledger_seconds: int, block_seconds: int, state: Path | None
) -> None:
    """Run a devnet in the foreground (ValueError for settings it cannot run with)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = DevnetConfig(
        host=host,
        port=port,
        ledger_seconds=ledger_seconds,
        block_seconds=block_seconds,
        state_path=state,
    )
    config.validate()
    try:
        asyncio.run(_serve(config))
    except StateFileError as error:
        raise ValueError(str(error)) from None
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
