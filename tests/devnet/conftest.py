"""Fixtures for the devnet suite: a fresh manual devnet per test, driven over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from kale_devnet import DevnetServer

from .kit import Kit, devnet_config


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    """A fresh devnet (manual ledger close) and an SDK client for it."""
    async with DevnetServer(devnet_config()) as server, aiohttp.ClientSession() as http:
        k = Kit(server, http)
        try:
            yield k
        finally:
            await k.aclose()
