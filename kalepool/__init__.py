"""Shared home of kale-pool: settings, data directory, database, protocol math, chain client, generated stubs."""

__version__ = "0.1.0"
