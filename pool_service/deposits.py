"""The chain follower: KALE that reaches a farmer's custodial account, from the chain.

It reads the KALE asset contract's token events (`kalepool.chain.read_token_events`)
from where it stopped (`chain_cursors`, row `kale-events`), page after page. For each
`transfer` or `mint` whose `to_address` is a pool farmer's custodial account:

- a `harvest` of the farm (its transaction read with `read_farm_call`) is a harvest,
  perhaps made by someone else (anyone may call harvest): the `harvests` row is made
  sure of, recorded from the chain with the reward the call returned, never twice (the
  pool's own harvest records the same transaction; `harvests_one_success` holds one);
- anything else is a **deposit**: a `deposits` row, unique by the event id, whose
  trigger credits the farmer's ledger once.

Transfers out of custodial accounts (payouts, closes) and burns (plants) are the pool's
own and recorded where they are made.

Nothing twice, nothing lost: a page is read and applied while this follower holds the
cursor row's lock (`FOR UPDATE SKIP LOCKED`: a second replica skips the pass instead of
reading the same page), the cursor moves in the same transaction as the page's deposits,
and every write is keyed (a deposit by its event id, a harvest by (farmer, block)), so a
page applied twice (a crash between the writes and the cursor, an operator rewinding
the cursor) changes nothing. A first start begins at the oldest ledger the RPC still
serves, so a deposit made before the pool started is not missed. A stored cursor that
fell out of the RPC's window has lost events: logged as an error, the follower resumes
at the oldest ledger served, and `kale-pool check` shows the difference (docs/pool.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from kalepool.chain import (
    ChainClient,
    ChainDataError,
    ChainError,
    EventPage,
    EventsOutOfRangeError,
    TokenEvent,
    read_farm_call,
    read_token_events,
)
from kalepool.chain.events import cursor_ledger
from kalepool.db.reads import Pool
from pool_service.store import FOLLOWER_CURSOR, HarvestStore, Pail

log = logging.getLogger("pool_service.deposits")

# Events read per page.
PAGE_SIZE = 1000
# A transaction the RPC cannot find although its event was just served (an RPC behind a
# load balancer, one node ahead of another) is asked about again for this many ledgers
# (about ten minutes); after that it is left to `kale-pool check`, loudly.
UNKNOWN_TX_GRACE_LEDGERS = 120


class Retry(Exception):
    """Stop this pass here; the next one reads the same page again."""


@dataclass
class Farmer:
    id: UUID
    pooler_id: UUID


class DepositStore:
    """SQL of the follower: its cursor, farmers by custodial account, deposits."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    @staticmethod
    async def lock_cursor(conn: AsyncConnection[Any]) -> tuple[str | None, int] | None:
        """The cursor (paging cursor, last ledger read), locked until the transaction
        ends; None when another follower holds it now."""
        await conn.execute(
            "INSERT INTO chain_cursors (name, cursor, ledger) VALUES (%s, NULL, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (FOLLOWER_CURSOR,),
        )
        cur = await conn.execute(
            "SELECT cursor, ledger FROM chain_cursors WHERE name = %s FOR UPDATE SKIP LOCKED",
            (FOLLOWER_CURSOR,),
        )
        row = await cur.fetchone()
        return None if row is None else (row[0], int(row[1]))

    @staticmethod
    async def move_cursor(conn: AsyncConnection[Any], cursor: str | None, ledger: int) -> None:
        await conn.execute(
            "UPDATE chain_cursors SET cursor = %s, ledger = greatest(ledger, %s) WHERE name = %s",
            (cursor, ledger, FOLLOWER_CURSOR),
        )

    @staticmethod
    async def farmers(conn: AsyncConnection[Any], addresses: list[str]) -> dict[str, Farmer]:
        """The pool's farmers among these custodial accounts."""
        cur = await conn.execute(
            "SELECT custodial_public_key, id, pooler_id FROM farmers"
            " WHERE custodial_public_key = ANY(%s)",
            (addresses,),
        )
        return {r[0]: Farmer(r[1], r[2]) for r in await cur.fetchall()}

    @staticmethod
    async def harvest_known(conn: AsyncConnection[Any], tx_hash: str) -> bool:
        """Whether a successful harvest with this transaction is recorded."""
        cur = await conn.execute(
            "SELECT 1 FROM harvests WHERE tx_hash = %s AND status = 'success'", (tx_hash,)
        )
        return await cur.fetchone() is not None

    @staticmethod
    async def planting(
        conn: AsyncConnection[Any], farmer_id: UUID, block_index: int
    ) -> UUID | None:
        """The pooler of the farmer's successful planting in the block, if recorded."""
        cur = await conn.execute(
            "SELECT pooler_id FROM plantings WHERE farmer_id = %s AND block_index = %s"
            " AND status = 'success'",
            (farmer_id, block_index),
        )
        row = await cur.fetchone()
        return None if row is None else row[0]

    @staticmethod
    async def deposit(conn: AsyncConnection[Any], farmer: Farmer, event: TokenEvent) -> bool:
        """Record the deposit (its ledger credit follows by trigger); False if it was."""
        cur = await conn.execute(
            "INSERT INTO deposits (event_id, farmer_id, amount, from_address, tx_hash, ledger)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
            (
                event.id,
                farmer.id,
                event.amount,
                event.from_address,
                event.tx_hash,
                event.ledger,
            ),
        )
        return cur.rowcount > 0


class ChainFollower:
    """Follows the KALE asset's events; credits deposits and records harvests."""

    def __init__(self, pool: Pool, chain: ChainClient, harvests: HarvestStore) -> None:
        self.pool = pool
        self.chain = chain
        self.store = DepositStore(pool)
        self.harvests = harvests

    async def run_once(self) -> int:
        """Read pages until the follower is caught up (or another replica holds the
        cursor); how many events were applied."""
        applied = 0
        while True:
            done, more = await self._page()
            applied += done
            if not more:
                return applied

    async def _page(self) -> tuple[int, bool]:
        """Read and apply one page under the cursor's lock: (events applied, whether
        more may follow at once: the page had events). A page that cannot be finished
        now is rolled back whole (the cursor stays) and read again next pass."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                held = await self.store.lock_cursor(conn)
                if held is None:
                    return 0, False  # another replica is reading this page
                cursor, ledger = held
                page = await self._read(cursor, ledger)
                farmers = await self.store.farmers(
                    conn, sorted({e.to_address for e in page.events if e.to_address})
                )
                applied = 0
                for event in page.events:
                    if event.kind in ("transfer", "mint") and event.to_address in farmers:
                        await self._apply(conn, farmers[event.to_address], event, page)
                        applied += 1
                await self.store.move_cursor(conn, page.cursor, self._read_through(page))
                return applied, bool(page.events)
        except (Retry, ChainError) as stop:
            log.warning("chain follower: %s; the page is read again next pass", stop)
            return 0, False

    async def _read(self, cursor: str | None, ledger: int) -> EventPage:
        """The next page: after the cursor, or from the oldest ledger served on a first
        start; a cursor that fell out of the window is said loudly and skipped over."""
        try:
            if cursor is not None:
                return await read_token_events(self.chain, cursor=cursor, limit=PAGE_SIZE)
            return await read_token_events(
                self.chain, start_ledger=max(ledger + 1, 1), limit=PAGE_SIZE
            )
        except EventsOutOfRangeError as exc:
            if cursor is not None or ledger > 0:
                log.error(
                    "chain follower: its position (ledger %d) fell out of the RPC's window"
                    " (ledgers %d to %d): events of the ledgers in between were never read;"
                    " resuming at ledger %d. Run `kale-pool check` and credit any deposit"
                    " it shows missing (docs/pool.md, Deposits).",
                    ledger,
                    exc.oldest_ledger,
                    exc.latest_ledger,
                    exc.oldest_ledger,
                )
            else:
                log.info("chain follower: first start, reading from ledger %d", exc.oldest_ledger)
            return await read_token_events(
                self.chain, start_ledger=exc.oldest_ledger, limit=PAGE_SIZE
            )

    @staticmethod
    def _read_through(page: EventPage) -> int:
        """The last ledger whose events this page completes."""
        if page.cursor is None:
            return 0
        through = cursor_ledger(page.cursor)
        # A full page may stop inside a ledger: only the ledgers before it are complete.
        return through - 1 if len(page.events) >= PAGE_SIZE else through

    async def _apply(
        self, conn: AsyncConnection[Any], farmer: Farmer, event: TokenEvent, page: EventPage
    ) -> None:
        if await self.store.harvest_known(conn, event.tx_hash):
            return  # the pool's own harvest, recorded when it was made
        try:
            call = await read_farm_call(self.chain, event.tx_hash)
        except ChainDataError:
            call = None  # not a call of the farm: a payment, a transfer, a mint
            known = True
        except ChainError as exc:
            raise Retry(f"event {event.id}: the chain cannot be read ({exc})") from None
        else:
            known = call is not None
        if not known:
            if page.latest_ledger - event.ledger < UNKNOWN_TX_GRACE_LEDGERS:
                raise Retry(f"event {event.id}: the RPC does not know {event.tx_hash} yet")
            log.error(
                "chain follower: the RPC does not know transaction %s of event %s"
                " (%d stroops to farmer %s): left to `kale-pool check`",
                event.tx_hash,
                event.id,
                event.amount,
                farmer.id,
            )
            return
        if call is not None and call.function == "harvest" and call.succeeded:
            await self._harvest(conn, farmer, event, call.index, call.returned)
            return
        if await self.store.deposit(conn, farmer, event):
            log.info(
                "deposit of %d stroops to farmer %s (event %s, tx %s)",
                event.amount,
                farmer.id,
                event.id,
                event.tx_hash,
            )

    async def _harvest(
        self,
        conn: AsyncConnection[Any],
        farmer: Farmer,
        event: TokenEvent,
        block_index: int | None,
        reward: int | None,
    ) -> None:
        """A harvest of the farmer's pail seen on chain, made by anyone: recorded once,
        with the reward the contract returned (the minted amount less it is the stake)."""
        if block_index is None or reward is None:
            raise ChainDataError(f"harvest {event.tx_hash} names no block or no reward")
        pooler = await self.store.planting(conn, farmer.id, block_index)
        pail = Pail(
            farmer_id=farmer.id,
            pooler_id=pooler or farmer.pooler_id,
            block_index=block_index,
            custodial_public_key=event.to_address or "",
            stake_amount=event.amount - reward,
        )
        row = await self.harvests.record(
            pail, "success", reward, event.tx_hash, event.ledger, "none", None, None
        )
        if row is not None:
            log.info(
                "harvest of farmer %s block %d seen on chain (tx %s): reward %d",
                farmer.id,
                block_index,
                event.tx_hash,
                reward,
            )
