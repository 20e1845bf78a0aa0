"""`python -m pool_service`: run the pool service from the environment's settings."""

from __future__ import annotations

import sys

from kalepool.db.roles import POOL
from kalepool.serving import run_service
from pool_service.server import start_pool_for


def main() -> int:
    return run_service("pool service", start_pool_for, role=POOL)


if __name__ == "__main__":
    sys.exit(main())
