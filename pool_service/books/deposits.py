"""Deposits: the chain follower's position and the KALE it credits (`chain_cursors`,
`deposits`; a deposit's ledger credit follows by trigger)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.chain import TokenEvent
from kalepool.db.reads import fetch_one

# The chain follower's row in chain_cursors: how far the KALE asset's events have been
# read, so also how far harvests made by anyone are recorded.
FOLLOWER_CURSOR = "kale-events"


@dataclass(frozen=True)
class Cursor:
    """Where the follower stopped; `first` when no follower ever stopped anywhere."""

    cursor: str | None
    ledger: int
    first: bool = False


class DepositStore:
    """Queries of the follower, each inside the transaction that reads one page."""

    @staticmethod
    async def lock_cursor(conn: AsyncConnection[Any]) -> Cursor | None:
        """The cursor, locked until the transaction ends; None when another follower
        holds it now."""
        made = await conn.execute(
            "INSERT INTO chain_cursors (name, cursor, ledger) VALUES (%s, NULL, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (FOLLOWER_CURSOR,),
        )
        held = await fetch_one(
            conn,
            Cursor,
            "SELECT cursor, ledger FROM chain_cursors WHERE name = %s FOR UPDATE SKIP LOCKED",
            (FOLLOWER_CURSOR,),
        )
        return None if held is None else dataclasses.replace(held, first=made.rowcount == 1)

    @staticmethod
    async def move_cursor(conn: AsyncConnection[Any], cursor: str | None, ledger: int) -> None:
        await conn.execute(
            "UPDATE chain_cursors SET cursor = %s, ledger = greatest(ledger, %s) WHERE name = %s",
            (cursor, ledger, FOLLOWER_CURSOR),
        )

    @staticmethod
    async def deposit(conn: AsyncConnection[Any], farmer_id: UUID, event: TokenEvent) -> bool:
        """Record the deposit (its ledger credit follows by trigger); False if it was."""
        cur = await conn.execute(
            "INSERT INTO deposits (event_id, farmer_id, amount, from_address, tx_hash, ledger)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (
                event.id,
                farmer_id,
                event.amount,
                event.from_address,
                event.tx_hash,
                event.ledger,
            ),
        )
        return cur.rowcount > 0
