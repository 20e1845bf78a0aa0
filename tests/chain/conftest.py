"""Fixtures for the chain client suite: a fresh manual devnet per test and a ChainClient
resolved from settings exactly as a service resolves it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .stage import Stage, open_stage


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """A fresh devnet (ledgers close only when a test asks) and a chain client on it."""
    async with open_stage() as opened:
        yield opened
