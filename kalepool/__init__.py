"""Shared home of kale-pool: settings, data dir, database, protocol math, chain client, stubs."""

__version__ = "0.1.0"
