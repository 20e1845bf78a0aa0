"""The app suite's stage, where a test needs the real pool: the pool suite's (real
PostgreSQL, the in-process devnet, the wallet and pool servers over mutual TLS)."""

from tests.pool.conftest import pki, pool

__all__ = ["pki", "pool"]
