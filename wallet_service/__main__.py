"""`python -m wallet_service`: run the wallet service from the environment's settings."""

from __future__ import annotations

import asyncio
import logging
import sys

from kalepool.settings import SettingsError, load_settings
from wallet_service.keystore import MasterKeyError
from wallet_service.server import serve_wallet


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"wallet service: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        asyncio.run(serve_wallet(settings))
    except MasterKeyError as exc:
        print(f"wallet service: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
