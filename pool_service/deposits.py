"""The chain follower: KALE that reaches a farmer's custodial account, from the chain.

It reads the KALE asset contract's token events (`kalepool.chain.read_token_events`)
from where it stopped (`chain_cursors`, row `kale-events`), page after page. For each
`transfer` or `mint` of more than 0 whose `to_address` is a pool farmer's custodial
account:

- a `mint` whose transaction removed that farmer's `Pail(farmer, i)` from the farm's
  storage (`read_pail_changes`: the transaction's result meta, whoever called `harvest`
  and however deep inside another contract's call) is the **harvest** of (farmer, i):
  the `harvests` row is made sure of, with the pail's stake and the minted amount less
  it as the reward, never twice (the pool's own harvest records the same transaction;
  `harvests_one_success` holds one). A harvest the custodial account sent itself is
  the pool's own (only the wallet holds its key), read before the harvest loop
  recorded it: recorded as the pool's, so it is swept; any other is observed. The farm
  mints a harvest (it is the asset's admin), so only a mint can be one;
- a `transfer` from one of the pool's own accounts (the fee wallet, a pooler's share
  wallet) is a compensation the shares loop pays and records itself: passed over;
- anything else is a **deposit**: a `deposits` row, unique by the event id, whose
  trigger credits the farmer's ledger once. A movement of 0 (the asset contract accepts
  it) moves nothing and is passed over.

A mint whose transaction cannot be read now (the RPC unreachable, not knowing it yet,
an answer that does not decode) stops the page, which is read again next pass: it is
never taken for a deposit. Transfers out of custodial accounts (payouts, closes) and
burns (plants) are the pool's own and recorded where they are made.

Nothing twice, nothing lost: a page is read and applied while this follower holds the
cursor row's lock (`FOR UPDATE SKIP LOCKED`: a second replica skips the pass instead of
reading the same page), the cursor moves in the same transaction as the page's deposits,
and every write is keyed (a deposit by its event id, a harvest by (farmer, block)), so a
page applied twice (a crash between the writes and the cursor, an operator rewinding
the cursor) changes nothing. A first start on a fresh pool begins at the oldest ledger
the RPC still serves, so a deposit made before the pool started is not missed; a first
start on books that already hold ledger entries (a pool upgraded from before the
follower, whose deposits were credited by hand) begins at the latest ledger and says
so. A stored cursor that fell out of the RPC's window has lost events: logged as an
error, the follower resumes at the oldest ledger served, and `kale-pool check` shows the
difference (docs/pool.md).
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from kalepool import protocol
from kalepool.chain import (
    Block,
    ChainClient,
    ChainDataError,
    ChainError,
    ChainUnavailableError,
    EventPage,
    EventsOutOfRangeError,
    PailChanges,
    TokenEvent,
    read_block,
    read_pail_changes,
    read_token_events,
)
from kalepool.chain import Pail as FarmPail
from kalepool.chain.events import cursor_ledger
from kalepool.db.reads import Pool
from pool_service.books.deposits import Cursor, DepositStore
from pool_service.books.enums import EventStatus
from pool_service.books.farmers import FarmerRow, FarmerStore
from pool_service.books.harvests import HarvestStore, Pail
from pool_service.books.ledger import LedgerStore
from pool_service.books.plantings import PlantingStore
from pool_service.books.sweeps import SweepStore

log = logging.getLogger("pool_service.deposits")

# Events read per page.
PAGE_SIZE = 1000
# A transaction the RPC cannot find or read although its event was just served (an RPC
# behind a load balancer, one node ahead of another) is asked about again for this many
# ledgers (about ten minutes); after that it is left to `kale-pool check`, loudly.
UNKNOWN_TX_GRACE_LEDGERS = 120


class Retry(Exception):
    """Stop this pass here; the next one reads the same page again."""


def harvest_amount(pail: FarmPail, block: Block) -> int | None:
    """What harvesting the pail mints, computed from its block as the farm does: its stake
    and its reward. None for a pail never worked or a block that cannot normalise (#12)."""
    if pail.gap is None or pail.zeros is None:
        return None
    try:
        share = protocol.normalise(block.bounds(), pail.gap, pail.stake, pail.zeros).total
    except protocol.BlockInvalidError:
        return None
    return pail.stake + protocol.harvest_reward(
        share, pail.index, block.staked_total, block.normalized_total
    )


def pick_pail(
    amount: int, pails: list[FarmPail], expected: dict[int, int], recorded: set[int]
) -> FarmPail | None:
    """Which of a farmer's pails, all removed by one transaction, a mint of `amount` paid:
    the one whose harvest mints that much (`expected`, by block). Several alike (same
    amount) are taken in block order, the first not yet `recorded` for this transaction
    (each mint records one of them; a mint seen again finds them all recorded, and the
    record is keyed). None when no pail's harvest mints that amount."""
    matching = sorted((p for p in pails if expected.get(p.index) == amount), key=lambda p: p.index)
    if not matching:
        return None
    return next((p for p in matching if p.index not in recorded), matching[0])


class ChainFollower:
    """Follows the KALE asset's events; credits deposits and records harvests."""

    def __init__(self, pool: Pool, chain: ChainClient, harvests: HarvestStore) -> None:
        self.pool = pool
        self.chain = chain
        self.harvests = harvests
        self._said_upgrade = False

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
                held = await DepositStore.lock_cursor(conn)
                if held is None:
                    return 0, False  # another replica is reading this page
                upgraded = held.first and await LedgerStore.holds_entries(conn)
                page = await self._read(held, upgraded)
                farmers = await FarmerStore.by_addresses(
                    conn, sorted({e.to_address for e in page.events if e.to_address})
                )
                ours = await SweepStore.account_addresses(
                    conn, sorted({e.from_address for e in page.events if e.from_address})
                )
                applied = 0
                for event in page.events:
                    if event.kind not in ("transfer", "mint") or event.to_address not in farmers:
                        continue
                    if event.from_address in ours:
                        continue  # a compensation, recorded by the shares loop
                    if event.amount <= 0:
                        continue  # nothing moved (the asset contract accepts a transfer of 0)
                    await self._apply(conn, farmers[event.to_address], event, page)
                    applied += 1
                await DepositStore.move_cursor(conn, page.cursor, self._read_through(page))
                return applied, bool(page.events)
        except (Retry, ChainError) as stop:
            log.warning("chain follower: %s; the page is read again next pass", stop)
            return 0, False

    async def _read(self, held: Cursor, upgraded: bool) -> EventPage:
        """The next page: after the cursor; on a first start from the oldest ledger served,
        or from the latest on books kept before the follower existed; a cursor that fell
        out of the window is said loudly and skipped over."""
        cursor, ledger = held.cursor, held.ledger
        try:
            if cursor is not None:
                return await read_token_events(self.chain, cursor=cursor, limit=PAGE_SIZE)
            if upgraded:
                latest = (await self.chain.latest_ledger()).sequence
                self._say_upgrade(latest)
                return await read_token_events(self.chain, start_ledger=latest, limit=PAGE_SIZE)
            return await read_token_events(
                self.chain, start_ledger=max(ledger + 1, 1), limit=PAGE_SIZE
            )
        except EventsOutOfRangeError as exc:
            if upgraded:
                start = exc.latest_ledger
            elif cursor is not None or ledger > 0:
                start = exc.oldest_ledger
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
                start = exc.oldest_ledger
                log.info("chain follower: first start, reading from ledger %d", start)
            return await read_token_events(self.chain, start_ledger=start, limit=PAGE_SIZE)

    def _say_upgrade(self, ledger: int) -> None:
        if self._said_upgrade:
            return
        self._said_upgrade = True
        log.warning(
            "chain follower: first start on books that already hold ledger entries (a pool"
            " that credited deposits before the follower existed): reading from the latest"
            " ledger, %d, so that no deposit is credited twice. KALE that reached custodial"
            " accounts before is not credited by the follower: `kale-pool check` names any"
            " balance the books do not explain (docs/pool.md, Deposits).",
            ledger,
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
        self, conn: AsyncConnection[Any], farmer: FarmerRow, event: TokenEvent, page: EventPage
    ) -> None:
        if event.kind == "mint":
            if await HarvestStore.own_harvest(conn, farmer.id, event.tx_hash):
                return  # the pool's own harvest, recorded when it was made
            changes = await self._changes(farmer, event, page)
            if changes is None:
                return  # left to `kale-pool check` (logged)
            pails = changes.removed_for(event.to_address or "")
            if pails:
                pail = await self._which(conn, farmer, event, pails)
                if pail is not None:
                    own = changes.source == farmer.custodial_public_key
                    await self._harvest(conn, farmer, event, pail, own)
                return
        if await DepositStore.deposit(conn, farmer.id, event):
            log.info(
                "deposit of %d stroops to farmer %s (event %s, tx %s)",
                event.amount,
                farmer.id,
                event.id,
                event.tx_hash,
            )

    async def _changes(
        self, farmer: FarmerRow, event: TokenEvent, page: EventPage
    ) -> PailChanges | None:
        """What the event's transaction did to the farm's pails. A transaction that cannot
        be read now stops the page (Retry); one still unreadable after the grace is
        logged and left to the check (None): it is never taken for a deposit."""
        try:
            changes = await read_pail_changes(self.chain, event.tx_hash)
        except ChainDataError as exc:
            problem = f"its answer cannot be read ({exc})"
        except ChainUnavailableError as exc:
            raise Retry(f"event {event.id}: the chain cannot be read ({exc})") from None
        else:
            if changes is not None and changes.succeeded:
                return changes
            problem = "the RPC does not know it" if changes is None else "the RPC says it failed"
        if page.latest_ledger - event.ledger < UNKNOWN_TX_GRACE_LEDGERS:
            raise Retry(f"event {event.id}: transaction {event.tx_hash}: {problem}")
        log.error(
            "chain follower: transaction %s of event %s (%d stroops to farmer %s): %s;"
            " left to `kale-pool check`",
            event.tx_hash,
            event.id,
            event.amount,
            farmer.id,
            problem,
        )
        return None

    async def _which(
        self,
        conn: AsyncConnection[Any],
        farmer: FarmerRow,
        event: TokenEvent,
        pails: list[FarmPail],
    ) -> FarmPail | None:
        """The pail whose harvest this mint is. One removed pail is it. Several (a contract
        harvesting several blocks of one farmer in one transaction) are told apart by the
        amount each harvest mints, computed from its block as the farm does."""
        if len(pails) == 1:
            pail: FarmPail | None = pails[0]
        else:
            expected: dict[int, int] = {}
            for p in pails:
                try:
                    block = await read_block(self.chain, p.index)
                except ChainDataError:
                    block = None
                amount = None if block is None else harvest_amount(p, block)
                if amount is not None:
                    expected[p.index] = amount
            recorded = await HarvestStore.harvested_by(conn, farmer.id, event.tx_hash)
            pail = pick_pail(event.amount, pails, expected, recorded)
        if pail is None or pail.stake > event.amount:
            log.error(
                "chain follower: transaction %s removed pails %s of farmer %s, and the mint of"
                " %d stroops (event %s) cannot be told to be one's harvest: left to"
                " `kale-pool check`",
                event.tx_hash,
                sorted(p.index for p in pails),
                farmer.id,
                event.amount,
                event.id,
            )
            return None
        return pail

    async def _harvest(
        self,
        conn: AsyncConnection[Any],
        farmer: FarmerRow,
        event: TokenEvent,
        pail: FarmPail,
        own: bool,
    ) -> None:
        """A harvest of the farmer's pail seen on chain, made by anyone: recorded once,
        with the pail's stake and the rest of the minted amount as the reward. `own`: the
        custodial account sent it itself, so the wallet signed it (the pool's own harvest,
        seen here before the harvester recorded its answer): recorded as the pool's, not
        as observed, so its fee and share are swept like any other."""
        planted = await PlantingStore.success_of(conn, farmer.id, pail.index)
        if planted is not None and planted.stake_amount != pail.stake:
            log.warning(
                "chain follower: the pail of farmer %s in block %d staked %d stroops on chain,"
                " the planting recorded %d; the chain's is kept for the harvest",
                farmer.id,
                pail.index,
                pail.stake,
                planted.stake_amount,
            )
        reward = event.amount - pail.stake
        row = await self.harvests.record(
            Pail(
                farmer_id=farmer.id,
                pooler_id=farmer.pooler_id if planted is None else planted.pooler_id,
                block_index=pail.index,
                custodial_public_key=event.to_address or "",
                stake_amount=pail.stake,
            ),
            status=EventStatus.SUCCESS,
            reward=reward,
            tx_hash=event.tx_hash,
            ledger=event.ledger,
            observed_on_chain=not own,
        )
        if row is not None:
            log.info(
                "harvest of farmer %s block %d seen on chain (tx %s, %s): reward %d",
                farmer.id,
                pail.index,
                event.tx_hash,
                "sent by its wallet" if own else "sent by someone else",
                reward,
            )
