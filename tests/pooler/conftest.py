"""Fixtures for the pooler agent's mining core: the chain suite's manual devnet stage, and
farmers planted in the current block through the chain client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from stellar_sdk import Keypair

from kalepool.chain import CurrentBlock, build_plant, current_block, read_pails, sign
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock
from tests.chain.stage import Stage, open_stage


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    """A fresh devnet (ledgers close only when a test asks) and a chain client on it."""
    async with open_stage() as opened:
        yield opened


@dataclass
class Planted:
    """Farmers planted (stake 0) in one block, and their assignments."""

    farmers: list[Keypair]
    block: CurrentBlock
    assignments: list[Assignment]


async def plant(stage: Stage, count: int) -> Planted:
    """Fund `count` farmers and plant each in the current block, all in one ledger."""
    client = stage.client
    farmers = await stage.accounts(count)
    for farmer in farmers:
        tx = sign(await build_plant(client, farmer.public_key, 0), farmer)
        sent = await client.rpc.send_transaction(tx.envelope_xdr)
        assert sent.hash == tx.hash
    await stage.close()
    block = await current_block(client)
    assert block.entropy is not None
    pails = await read_pails(client, [(f.public_key, block.index) for f in farmers])
    assignments = []
    for farmer in farmers:
        pail = pails[(farmer.public_key, block.index)]
        assert pail is not None, "the plant did not land"
        assignments.append(
            Assignment(
                farmer_address=farmer.public_key,
                block_index=block.index,
                entropy=block.entropy,
                stake_stroops=pail.stake,
                plant_ledger=pail.sequence,
                block_opened_at=block.timestamp,
            )
        )
    return Planted(farmers, block, assignments)


async def synced_clock(stage: Stage) -> ChainClock:
    """A chain clock that has seen the latest ledger."""
    clock = ChainClock()
    latest = await stage.client.latest_ledger()
    clock.observe(latest.sequence, latest.close_time)
    return clock


# The pool suite's stage (PostgreSQL, devnet, wallet and pool servers over mTLS), for the
# tests of the agent's pool-facing part.
from tests.pool.conftest import pki, pool  # noqa: E402

__all__ = ["Planted", "pki", "plant", "pool", "synced_clock"]
