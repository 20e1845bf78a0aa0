"""Reading the books of a pool stage in plant tests: requests, plantings, the ledger, the
wallet's transactions and the consistency check."""

from __future__ import annotations

from typing import Any

import psycopg

from kalepool.chain import current_block
from kalepool.db.consistency import check_consistency

from .conftest import PoolStage, until


async def rows(pool: PoolStage, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return list(await cur.fetchall())


async def requests(pool: PoolStage) -> list[tuple[str, int, int, bool, int | None, int]]:
    """(key, block asked, stake, settled, planting id, attempts) of every plant request."""
    found = await rows(
        pool,
        "SELECT idempotency_key, block_index, stake_amount, settled_at IS NOT NULL,"
        " planting_id, attempts FROM plant_requests ORDER BY id",
    )
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in found]


async def plantings(pool: PoolStage) -> list[tuple[int, str, int, str, int, int | None, str]]:
    """(id, farmer, block, status, stake, ledger, fault) of every planting."""
    found = await rows(
        pool,
        "SELECT id, farmer_id::text, block_index, status::text, stake_amount, ledger,"
        " fault::text FROM plantings ORDER BY id",
    )
    return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in found]


async def stakes(pool: PoolStage) -> list[tuple[str, int, int]]:
    """(farmer, amount, planting id) of every stake entry of the balance ledger."""
    found = await rows(
        pool,
        "SELECT farmer_id::text, amount, planting_id FROM balance_ledger WHERE kind = 'stake'"
        " ORDER BY id",
    )
    return [(r[0], r[1], r[2]) for r in found]


async def wallet_status(pool: PoolStage, key: str) -> str | None:
    """The status of the wallet's live transaction for an idempotency key."""
    found = await rows(
        pool,
        "SELECT status::text FROM transactions WHERE idempotency_key = %s AND NOT rejected",
        key,
    )
    return None if not found else str(found[0][0])


async def wait_sent(pool: PoolStage, key: str) -> None:
    """Until the wallet has stored the key's envelope and the network queued it."""

    async def sent() -> bool:
        return await wallet_status(pool, key) == "pending"

    await until(sent)


async def consistency(pool: PoolStage) -> list[str]:
    with psycopg.connect(pool.conninfo, autocommit=True) as conn:
        return check_consistency(conn)


async def make_due(pool: PoolStage) -> None:
    """Move the chain's clock so that the next ledger closes exactly when the current
    block is due: until it closes, the latest ledger says the block is not due, while a
    plant simulated now (for the next ledger) and applied in it opens the next block."""
    now = await current_block(pool.chain)
    latest = await pool.chain.latest_ledger()
    step = pool.stage.server.config.ledger_seconds
    await pool.stage.advance(max(0, now.next_block_at - latest.close_time - step))


async def wait_due(pool: PoolStage) -> None:
    """Until the latest ledger says the current block is due."""

    async def due() -> bool:
        current = await current_block(pool.chain)
        return current.can_open_next((await pool.chain.latest_ledger()).close_time)

    await until(due)
