"""`python -m wallet_service`: run the wallet service from the environment's settings."""

from __future__ import annotations

import sys

from kalepool.db.roles import WALLET
from kalepool.serving import run_service
from wallet_service.keystore import MasterKeyError, load_keyring
from wallet_service.server import start_wallet_for


def main() -> int:
    # The master key is checked first: without it nothing else should start.
    return run_service(
        "wallet service",
        start_wallet_for,
        role=WALLET,
        preflight=load_keyring,
        operator_errors=(MasterKeyError,),
    )


if __name__ == "__main__":
    sys.exit(main())
