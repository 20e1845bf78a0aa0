"""The end-to-end stage is the pool suite's: real PostgreSQL, the in-process devnet with
ledgers closed by a background task, the real wallet and pool servers over mutual TLS."""

from tests.pool.conftest import pki, pool

__all__ = ["pki", "pool"]
