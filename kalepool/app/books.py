"""`kale-pool check`: the pool's books proved against themselves and against the chain.

The database already proves its derived state against its events
(`kalepool.db.consistency`). That cannot see a record that is missing altogether: a
plant the wallet sent and the pool never recorded leaves books that agree with
themselves and not with the chain. This module compares the books with the chain:

- **balances**: each farmer's ledger balance equals its custodial account's KALE on
  chain, and so does each pool account's (the fee account, the poolers' share
  accounts), allowing for what is in flight (a pending payout or sweep, a plant or
  harvest whose
  outcome is not recorded yet, KALE that reached the account in a ledger the chain
  follower has not read yet: a deposit, or a harvest by someone else), each named. The
  chain's balances are read before its token events, so every movement a balance
  includes is among the events read (a later one is an effect that has not landed);
- **pails**: for the farm's recent blocks, every pool farmer's pail on chain has its
  successful planting in the same block and every planting without a harvest has its
  pail; every worked pail a successful work record; no harvest recorded for a pail
  that is still there;
- **transactions**: every transaction the wallet settled (plant, harvest, payout, sweep,
  close) is an event of the pool's books (by its hash, its payout or its sweep), and every
  unsettled one is named as in flight;
- **token events**: every movement of KALE into or out of a custodial account in the
  chain's recent events (the ledgers of the blocks compared, or as many as the server
  still serves) is explained by the books: a harvest, a deposit, a planting's
  stake, a payout, a sweep (out of a farmer's account into a pool account), an account
  payout (a pooler's share paid to its key), a compensation payment (from a pool account
  into a farmer's) or a close.

A difference is a line naming what disagrees; anything that will settle by itself
(the reconciler, the harvest loop and the deposit follower drive it) is "in flight"
and named as such, but is not a difference. The check reads the database as the
operator (both services' schemas: the auditor role, or the owner) and the chain through
the RPC; it writes nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.markup import escape

from kalepool.amounts import format_kale
from kalepool.app.runstate import RunState
from kalepool.chain import (
    ChainClient,
    ChainConfigError,
    ChainError,
    ChainUnavailableError,
    EventsOutOfRangeError,
    TokenEvent,
    TxKind,
    current_block,
    read_pails,
    read_token_events,
    resolve_chain_config,
)
from kalepool.chain.farm_state import get_entries, trustline_key
from kalepool.db.consistency import check_consistency
from kalepool.db.roles import AUDITOR, with_schemas
from kalepool.masking import mask_url
from kalepool.settings import Network, Settings
from wallet_service.store import kind_label, kind_of_label

# Above this many in-flight amounts for one farmer, their combinations are not tried:
# the difference is reported as in flight when any is pending.
_SUBSET_LIMIT = 12

# The wallet transactions the books are compared with (kinds, kept as `TxKind`).
_CHECKED_KINDS = (TxKind.PLANT, TxKind.HARVEST, TxKind.TRANSFER, TxKind.CLOSE)


def kale(stroops: int) -> str:
    """Stroops as KALE for a message, exact to the stroop."""
    return f"{format_kale(stroops)} KALE"


@dataclass
class BooksReport:
    """What the check found."""

    differences: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why a part was not compared

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass(frozen=True, slots=True)
class Effect:
    """Something in flight and what it does to (chain - ledger) once it lands."""

    what: str
    amount: int | None  # exact change; None: some positive amount (a harvest's reward)


@dataclass
class _Books:
    """The rows the check compares, read once."""

    farmers: list[dict[str, Any]]
    plantings: list[dict[str, Any]]
    works: list[dict[str, Any]]
    harvests: list[dict[str, Any]]
    plant_requests: list[dict[str, Any]]
    payouts: list[dict[str, Any]]
    transactions: list[dict[str, Any]]
    deposits: list[dict[str, Any]]
    accounts: list[dict[str, Any]]  # the pool's fee and share accounts
    sweeps: list[dict[str, Any]]
    account_payouts: list[dict[str, Any]]  # a pooler's share paid to its key
    compensation_payments: list[dict[str, Any]]  # from an account into a farmer's
    followed_to: int  # the ledger the pool's chain followers have read up to
    first_plant_ledger: int | None  # the earliest plant ledger of the blocks compared

    @property
    def farmer_by_address(self) -> dict[str, dict[str, Any]]:
        return {f["custodial_public_key"]: f for f in self.farmers}

    @property
    def account_by_address(self) -> dict[str, dict[str, Any]]:
        return {a["custodial_public_key"]: a for a in self.accounts}


async def _rows(
    conn: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return list(await cur.fetchall())


async def _read_books(conn: psycopg.AsyncConnection[Any], since_block: int) -> _Books:
    return _Books(
        farmers=await _rows(
            conn,
            "SELECT id, custodial_public_key, status::text AS status, is_funded,"
            " current_balance FROM farmers ORDER BY created_at, id",
        ),
        plantings=await _rows(
            conn,
            "SELECT id, farmer_id, block_index, status::text AS status, tx_hash, stake_amount"
            " FROM plantings WHERE block_index >= %s OR status = 'success'",
            (since_block,),
        ),
        works=await _rows(
            conn,
            "SELECT farmer_id, block_index, status::text AS status, zeros, gap,"
            " observed_on_chain FROM works WHERE block_index >= %s",
            (since_block,),
        ),
        harvests=await _rows(
            conn,
            "SELECT farmer_id, block_index, status::text AS status, tx_hash,"
            " reward_amount, error_code FROM harvests",
        ),
        plant_requests=await _rows(
            conn,
            "SELECT idempotency_key, farmer_id, block_index, stake_amount FROM plant_requests"
            " WHERE settled_at IS NULL",
        ),
        payouts=await _rows(
            conn,
            "SELECT id, farmer_id, amount, status::text AS status, tx_hash, wallet_key"
            " FROM payouts",
        ),
        transactions=[
            {**t, "kind": kind_of_label(t["kind"])}
            for t in await _rows(
                conn,
                "SELECT t.idempotency_key, t.kind::text AS kind, t.status::text AS status,"
                " t.tx_hash, t.source_account, t.block_index, t.rejected"
                " FROM transactions t JOIN custodial_wallets w ON w.public_key = t.source_account"
                " WHERE t.kind::text = ANY(%s)"
                " AND (t.block_index IS NULL OR t.block_index >= %s"
                "      OR t.status IN ('prepared', 'submitted', 'pending'))",
                ([kind_label(k) for k in _CHECKED_KINDS], since_block),
            )
        ],
        deposits=await _rows(conn, "SELECT event_id, farmer_id, amount, tx_hash FROM deposits"),
        accounts=await _rows(
            conn,
            "SELECT id, kind::text AS kind, custodial_public_key, current_balance FROM accounts"
            " ORDER BY created_at, id",
        ),
        sweeps=await _rows(
            conn,
            "SELECT id, farmer_id, account_id, amount, status::text AS status, tx_hash,"
            " wallet_key FROM sweeps",
        ),
        account_payouts=await _rows(
            conn,
            "SELECT id, account_id, amount, status::text AS status, tx_hash, wallet_key"
            " FROM account_payouts",
        ),
        compensation_payments=await _rows(
            conn,
            "SELECT id, account_id, farmer_id, amount, status::text AS status, tx_hash,"
            " wallet_key FROM compensation_payments",
        ),
        followed_to=int(
            (await _rows(conn, "SELECT coalesce(min(ledger), 0) AS l FROM chain_cursors"))[0]["l"]
        ),
        first_plant_ledger=(
            await _rows(
                conn,
                "SELECT min(ledger) AS l FROM plantings WHERE block_index >= %s",
                (since_block,),
            )
        )[0]["l"],
    )


# --- balances ------------------------------------------------------------------------


def explained(difference: int, effects: Sequence[Effect]) -> bool:
    """Whether some of the in-flight effects landing would account for `difference`.

    Each exact effect either landed or not; an effect of unknown positive size (a
    harvest's reward) can take up any positive remainder.
    """
    if difference == 0:
        return True
    exact = [e.amount for e in effects if e.amount is not None]
    open_ended = any(e.amount is None for e in effects)
    if len(exact) > _SUBSET_LIMIT:
        return bool(effects)
    for size in range(len(exact) + 1):
        for subset in itertools.combinations(exact, size):
            rest = difference - sum(subset)
            if rest == 0 or (open_ended and rest > 0):
                return True
    return False


def _effects(books: _Books, events: Sequence[TokenEvent]) -> dict[UUID, list[Effect]]:
    """What is in flight per farmer, as its share of (chain - ledger) until it lands."""
    out: dict[UUID, list[Effect]] = defaultdict(list)
    by_address = books.farmer_by_address
    for r in books.plant_requests:
        out[r["farmer_id"]].append(
            Effect(
                f"plant {r['idempotency_key']} not recorded yet ({kale(r['stake_amount'])})",
                -int(r["stake_amount"]),
            )
        )
    for p in books.payouts:
        if p["status"] == "pending":
            # Debited in the ledger when requested; leaves the chain account once applied.
            out[p["farmer_id"]].append(
                Effect(f"payout {p['id']} pending ({kale(p['amount'])})", int(p["amount"]))
            )
    for w in books.sweeps:
        if w["status"] == "pending":
            # The farmer is debited when the sweep is recorded; the account credited when
            # it settles: until then each differs from the chain once it applied.
            what = f"sweep {w['wallet_key'][:18]} pending ({kale(w['amount'])})"
            out[w["farmer_id"]].append(Effect(what, int(w["amount"])))
            out[w["account_id"]].append(Effect(what, int(w["amount"])))
    for c in books.compensation_payments:
        if c["status"] == "pending":
            # The paying account is debited when the payment is recorded, the farmer
            # credited when it settles: each differs from the chain once it applied.
            what = f"compensation payment {c['id']} pending ({kale(c['amount'])})"
            out[c["account_id"]].append(Effect(what, int(c["amount"])))
            out[c["farmer_id"]].append(Effect(what, int(c["amount"])))
    for p in books.account_payouts:
        if p["status"] == "pending":  # as a farmer's payout: debited when requested
            out[p["account_id"]].append(
                Effect(f"account payout {p['id']} pending ({kale(p['amount'])})", int(p["amount"]))
            )
    recorded_harvests = {h["tx_hash"] for h in books.harvests if h["status"] == "success"}
    for t in books.transactions:
        farmer = by_address.get(t["source_account"])
        if farmer is None or t["kind"] != "harvest":
            continue
        unsettled = t["status"] in ("prepared", "submitted", "pending")
        unrecorded = t["status"] == "success" and t["tx_hash"] not in recorded_harvests
        if unsettled or unrecorded:
            out[farmer["id"]].append(
                Effect(f"harvest {t['tx_hash'][:12]} of block {t['block_index']} in flight", None)
            )
    # KALE that reached a custodial account after the follower's cursor: on chain already,
    # in the ledger once the follower reads it (a deposit, or a harvest made by someone
    # else), exactly its amount. The pool's own harvests are counted above.
    credited = {d["event_id"] for d in books.deposits}
    harvests = recorded_harvests | {
        t["tx_hash"] for t in books.transactions if t["kind"] == "harvest"
    }
    from_accounts = books.account_by_address
    for e in events:
        farmer = by_address.get(e.to_address or "")
        if (
            farmer is None
            or (e.from_address or "") in from_accounts  # a compensation, counted above
            or e.kind not in ("transfer", "mint")
            or e.ledger <= books.followed_to
            or e.id in credited
            or e.tx_hash in harvests
        ):
            continue
        out[farmer["id"]].append(
            Effect(
                f"{e.kind} of {kale(e.amount)} in tx {e.tx_hash[:12]} (ledger {e.ledger}) not"
                " read by the chain follower yet",
                int(e.amount),
            )
        )
    return out


async def _read_balances(books: _Books, chain: ChainClient) -> list[tuple[dict[str, Any], int]]:
    """Each funded, not departed farmer and each pool account with its custodial
    account's KALE on chain now."""
    farmers = [f for f in books.farmers if f["status"] != "departed" and f["is_funded"]]
    owners = [*farmers, *books.accounts]
    keys = [trustline_key(chain, o["custodial_public_key"]) for o in owners]
    entries, _ = await get_entries(chain, keys)
    balances = []
    for owner, entry in zip(owners, entries, strict=True):
        line = None if entry is None else entry.data.trust_line
        balances.append((owner, 0 if line is None else int(line.balance.int64)))
    return balances


def _check_balances(
    books: _Books,
    balances: list[tuple[dict[str, Any], int]],
    events: Sequence[TokenEvent],
    report: BooksReport,
) -> None:
    effects = _effects(books, events)
    for farmer, on_chain in balances:
        ledger = int(farmer["current_balance"])
        difference = on_chain - ledger
        if difference == 0:
            continue
        pending = effects.get(farmer["id"], [])
        who = f"{farmer['kind']} account" if "kind" in farmer else "farmer"
        where = f"{who} {farmer['id']} ({farmer['custodial_public_key']})"
        summary = (
            f"{where}: ledger balance {kale(ledger)}, chain {kale(on_chain)}"
            f" (chain - ledger = {kale(difference)})"
        )
        if pending and explained(difference, pending):
            report.in_flight.append(f"{summary}; in flight: {'; '.join(e.what for e in pending)}")
        else:
            report.differences.append(summary)
    report.checked["balances"] = len(balances)


# --- pails ---------------------------------------------------------------------------


async def _check_pails(
    books: _Books, chain: ChainClient, current: int, since_block: int, report: BooksReport
) -> None:
    blocks = range(since_block, current + 1)
    planted: dict[tuple[UUID, int], dict[str, Any]] = {
        (p["farmer_id"], p["block_index"]): p
        for p in books.plantings
        if p["status"] == "success" and p["block_index"] >= since_block
    }
    worked = {(w["farmer_id"], w["block_index"]) for w in books.works if w["status"] == "success"}
    harvested = {
        (h["farmer_id"], h["block_index"]) for h in books.harvests if h["status"] == "success"
    }
    recorded_harvests = {h["tx_hash"] for h in books.harvests if h["status"] == "success"}
    harvesting = {
        (t["source_account"], t["block_index"])
        for t in books.transactions
        if t["kind"] == "harvest"
        and (
            t["status"] in ("prepared", "submitted", "pending")
            or (t["status"] == "success" and t["tx_hash"] not in recorded_harvests)
        )
    }
    requested: dict[UUID, set[int]] = defaultdict(set)
    for r in books.plant_requests:
        requested[r["farmer_id"]].update({r["block_index"], r["block_index"] + 1})
    in_scope = [
        f
        for f in books.farmers
        if f["status"] != "departed" or any(k[0] == f["id"] for k in planted)
    ]
    pairs = [(f["custodial_public_key"], b) for f in in_scope for b in blocks]
    pails = await read_pails(chain, pairs) if pairs else {}
    for farmer in in_scope:
        fid, address = farmer["id"], farmer["custodial_public_key"]
        for block in blocks:
            pail = pails[(address, block)]
            key = (fid, block)
            where = f"farmer {fid}, block {block}"
            if pail is not None and key not in planted:
                note = f"{where}: a pail is on chain (planted in ledger {pail.sequence})"
                if block in requested[fid]:
                    report.in_flight.append(f"{note}; its plant is not recorded yet")
                else:
                    report.differences.append(f"{note} but no planting is recorded")
            if pail is None and key in planted and key not in harvested and block < current:
                if (address, block) in harvesting:
                    report.in_flight.append(f"{where}: harvested on chain, not recorded yet")
                    continue
                # Harvested by someone else or expired: either way the books miss it.
                report.differences.append(
                    f"{where}: planting {planted[key]['id']} is recorded, the pail is gone from"
                    " the chain, and no harvest is recorded"
                )
            if pail is not None and pail.worked and key not in worked:
                note = (
                    f"{where}: the pail on chain is worked ({pail.zeros} zeros, gap {pail.gap})"
                    " but no successful work is recorded"
                )
                if block == current:
                    # The pooler reports during the block; the harvest loop records it from
                    # the chain once the block is over if the report never comes.
                    report.in_flight.append(f"{note} yet")
                else:
                    report.differences.append(note)
            if pail is not None and not pail.worked and key in worked:
                report.differences.append(
                    f"{where}: a successful work is recorded but the pail on chain has no work"
                )
            if pail is not None and key in harvested:
                report.differences.append(
                    f"{where}: a harvest is recorded but the pail is still on chain"
                )
    report.checked["pails"] = len(pairs)


# --- wallet transactions ---------------------------------------------------------------


def _check_transactions(books: _Books, report: BooksReport) -> None:
    plant_hashes = {p["tx_hash"]: p["status"] for p in books.plantings if p["tx_hash"]}
    harvest_hashes = {h["tx_hash"]: h["status"] for h in books.harvests if h["tx_hash"]}
    payouts = {p["wallet_key"]: p for p in books.payouts}
    sweeps = (
        {w["wallet_key"]: w for w in books.sweeps}
        | {p["wallet_key"]: p for p in books.account_payouts}
        | {c["wallet_key"]: c for c in books.compensation_payments}
    )
    departed = {f["custodial_public_key"] for f in books.farmers if f["status"] == "departed"}
    unsettled_plants = {r["idempotency_key"] for r in books.plant_requests}
    for t in books.transactions:
        what = f"{t['kind']} {t['tx_hash']} ({t['idempotency_key']})"
        if t["status"] in ("prepared", "submitted", "pending"):
            report.in_flight.append(f"{what}: sent, outcome not known yet")
            continue
        if t["rejected"] or t["status"] == "expired":
            continue  # never applied: nothing on chain to record
        status = "success" if t["status"] == "success" else "failed"
        if t["kind"] == "plant":
            if plant_hashes.get(t["tx_hash"]) == status:
                continue
            if t["idempotency_key"] in unsettled_plants:
                report.in_flight.append(f"{what}: {status} on chain, not recorded yet")
            else:
                report.differences.append(f"{what}: {status} on chain but no such planting record")
        elif t["kind"] == "harvest":
            if harvest_hashes.get(t["tx_hash"]) == status:
                continue
            if status == "success":
                report.in_flight.append(f"{what}: applied, the harvest loop records it")
            else:
                report.differences.append(f"{what}: failed on chain but no such harvest record")
        elif t["kind"] is TxKind.TRANSFER:
            payout = payouts.get(t["idempotency_key"]) or sweeps.get(t["idempotency_key"])
            if payout is None:
                report.differences.append(
                    f"{what}: {status} on chain but no payout or sweep holds it"
                )
            elif payout["status"] == "pending":
                report.in_flight.append(f"{what}: {status} on chain, payout not settled yet")
            elif (payout["status"] == "success") != (status == "success"):
                report.differences.append(
                    f"{what}: {status} on chain but its record {payout['id']} is {payout['status']}"
                )
        elif (
            t["kind"] is TxKind.CLOSE
            and status == "success"
            and t["source_account"] not in departed
        ):
            report.in_flight.append(f"{what}: the account was closed; the farmer departs next")
    report.checked["transactions"] = len(books.transactions)


# --- token events ----------------------------------------------------------------------


async def _token_events(chain: ChainClient, start: int) -> list[TokenEvent]:
    """Every KALE movement from `start` (or the oldest ledger the server keeps) to now."""
    try:
        page = await read_token_events(chain, start_ledger=start)
    except EventsOutOfRangeError as exc:
        if start > exc.latest_ledger:
            return []
        page = await read_token_events(chain, start_ledger=exc.oldest_ledger)
    events = list(page.events)
    while page.events and page.cursor is not None:
        page = await read_token_events(chain, cursor=page.cursor)
        events.extend(page.events)
    return events


def _check_events(books: _Books, events: list[TokenEvent], report: BooksReport) -> None:
    by_address = books.farmer_by_address
    harvest_txs = {h["tx_hash"] for h in books.harvests if h["status"] == "success"}
    plant_txs = {p["tx_hash"] for p in books.plantings if p["status"] == "success"}
    deposit_events = {d["event_id"] for d in books.deposits}
    swept = {w["tx_hash"] for w in books.sweeps if w["status"] == "success"}
    settled_out = (
        {p["tx_hash"] for p in books.payouts if p["status"] == "success"}
        | {
            t["tx_hash"]
            for t in books.transactions
            if t["kind"] is TxKind.CLOSE and t["status"] == "success"
        }
        | swept
    )
    accounts = books.account_by_address
    sweeping = {w["account_id"] for w in books.sweeps if w["status"] == "pending"}
    compensated = {c["tx_hash"] for c in books.compensation_payments if c["status"] == "success"}
    compensating = {c["farmer_id"] for c in books.compensation_payments if c["status"] == "pending"}
    paid_out = {
        p["tx_hash"] for p in books.account_payouts if p["status"] == "success"
    } | compensated
    paying = {p["account_id"] for p in books.account_payouts if p["status"] == "pending"} | {
        c["account_id"] for c in books.compensation_payments if c["status"] == "pending"
    }
    wallet_harvests = {t["tx_hash"] for t in books.transactions if t["kind"] == "harvest"}
    pending_plants = {r["farmer_id"] for r in books.plant_requests}
    pending_payouts = {p["farmer_id"] for p in books.payouts if p["status"] == "pending"} | {
        w["farmer_id"] for w in books.sweeps if w["status"] == "pending"
    }
    checked = 0

    def explain(
        e: TokenEvent, farmer: dict[str, Any], recorded: bool, pending: bool, flight: str, gap: str
    ) -> None:
        """Recorded: nothing to say; else in flight (`flight`) or a difference (`gap`)."""
        if recorded:
            return
        who = f"{farmer['kind']} account" if "kind" in farmer else "farmer"
        where = f"{who} {farmer['id']}: {e.kind} of {kale(e.amount)} in tx {e.tx_hash[:12]}"
        where += f" (ledger {e.ledger})"
        if pending:
            report.in_flight.append(f"{where}: {flight}")
        else:
            report.differences.append(f"{where} {gap}")

    for e in events:
        into = by_address.get(e.to_address or "")
        out_of = by_address.get(e.from_address or "")
        if into is not None and e.kind in ("transfer", "mint"):
            checked += 1
            ours = e.tx_hash in wallet_harvests
            explain(
                e,
                into,
                e.tx_hash in harvest_txs or e.id in deposit_events or e.tx_hash in compensated,
                ours or e.ledger > books.followed_to or into["id"] in compensating,
                "the pool's harvest, not recorded yet"
                if ours
                else "not read by the deposit follower yet",
                "reached the custodial account; the books hold neither a harvest nor a"
                " deposit for it",
            )
        if out_of is not None and e.kind == "burn":
            checked += 1
            explain(
                e,
                out_of,
                e.tx_hash in plant_txs,
                out_of["id"] in pending_plants,
                "a plant not recorded yet",
                "burned KALE; no planting records it",
            )
        if out_of is not None and e.kind in ("transfer", "clawback"):
            checked += 1
            explain(
                e,
                out_of,
                e.tx_hash in settled_out,
                out_of["id"] in pending_payouts,
                "a payout or sweep not settled yet",
                "left the custodial account; no payout, sweep or close records it",
            )
        into_account = accounts.get(e.to_address or "")
        if into_account is not None and e.kind in ("transfer", "mint"):
            checked += 1
            explain(
                e,
                into_account,
                e.tx_hash in swept,
                into_account["id"] in sweeping,
                "a sweep not settled yet",
                "reached the account; no sweep records it",
            )
        out_of_account = accounts.get(e.from_address or "")
        if out_of_account is not None and e.kind in ("transfer", "burn", "clawback"):
            checked += 1
            explain(
                e,
                out_of_account,
                e.tx_hash in paid_out,
                out_of_account["id"] in paying,
                "an account payout or compensation not settled yet",
                "left the account; no account payout or compensation records it",
            )
    report.checked["token events"] = checked


# --- the whole check -------------------------------------------------------------------


async def audit_books(conninfo: str, chain: ChainClient | None, *, blocks: int = 12) -> BooksReport:
    """Check the books against themselves and, when `chain` is given, against the chain.

    `blocks`: how many of the farm's most recent blocks have their pails compared (every
    farmer's pail in each is read).
    """
    report = BooksReport()
    conninfo = with_schemas(conninfo, AUDITOR.schemas)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        # The database's own proof of derived state, from a plain connection.
        with psycopg.connect(conninfo, autocommit=True) as sync_conn:
            report.differences.extend(check_consistency(sync_conn))
        if chain is None:
            return report
        current = (await current_block(chain)).index
        since_block = max(0, current - blocks + 1)
        books = await _read_books(conn, since_block)
    # The ledgers of the blocks compared, at least: a ledger closes at most once a second
    # on any Stellar network, so a block spans at most `block_seconds` ledgers.
    latest = (await chain.latest_ledger()).sequence
    start = max(1, latest - blocks * chain.config.block_seconds)
    if books.first_plant_ledger is not None:
        start = min(start, int(books.first_plant_ledger))
    # The balances first, then the events up to now: every movement a balance includes
    # is among them (a deposit between the two reads is an effect not landed yet).
    balances = await _read_balances(books, chain)
    events = await _token_events(chain, start)
    _check_balances(books, balances, events, report)
    await _check_pails(books, chain, current, since_block, report)
    _check_transactions(books, report)
    _check_events(books, events, report)
    return report


def lines(items: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated report lines."""
    return sorted(set(items))


# --- `kale-pool check` -----------------------------------------------------------------


class ChainUnreachableError(Exception):
    """The chain could not be read; the message says where and what to do."""


@contextlib.asynccontextmanager
async def _chain_for(settings: Settings) -> AsyncIterator[ChainClient]:
    """The chain the books are kept against.

    A running stack's RPC, else the configured one. On the devnet with no stack running,
    the chain is the devnet's saved state: a copy is served read-only (ledgers closed on
    request only, none requested) for the length of the check.
    """
    state = RunState.load(settings)
    running = state is not None and state.alive().get("supervisor", False)
    if running and state is not None:
        settings = settings.model_copy(update={"rpc_url": state.rpc_url})
    saved = settings.layout().devnet_state
    offline_devnet = settings.network is Network.DEVNET and not running and saved.exists()
    async with contextlib.AsyncExitStack() as stack:
        if offline_devnet:
            from kalepool.app.devnet import DevnetMissingError, require_devnet

            try:
                require_devnet()
            except DevnetMissingError as error:
                raise ChainUnreachableError(
                    f"the stack is stopped and its devnet chain cannot be served: {error}"
                    " (--offline checks the books against themselves only)"
                ) from None
            from kale_devnet import DevnetConfig, DevnetServer, copy_state

            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            copy = scratch / "state.json"
            copy_state(saved, copy)
            devnet = DevnetServer(
                DevnetConfig(
                    port=0,
                    manual=True,
                    state_path=copy,
                    block_seconds=settings.devnet_block_seconds,
                    ledger_seconds=settings.ledger_seconds(),
                )
            )
            await stack.enter_async_context(devnet)
            settings = settings.model_copy(update={"rpc_url": f"{devnet.url}/"})
        try:
            config = await resolve_chain_config(settings)
        except (ChainError, ChainConfigError, aiohttp.ClientError, OSError) as exc:
            raise ChainUnreachableError(
                f"cannot read the chain at {mask_url(settings.rpc_url or '')}: {exc}"
                " (is kale-pool up running? --offline checks the books against themselves only)"
            ) from None
        chain = ChainClient(config)
        stack.push_async_callback(chain.aclose)
        yield chain


async def check_books(
    settings: Settings, conninfo: str, *, blocks: int = 12, offline: bool = False
) -> BooksReport:
    """`kale-pool check`: the books against themselves, then (unless `offline`) the chain."""
    if offline:
        return await audit_books(conninfo, None)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT NOT EXISTS (SELECT 1 FROM wallet.custodial_wallets)")
        row = await cur.fetchone()
    if row is not None and row[0]:
        report = await audit_books(conninfo, None)
        report.notes.append("no custodial wallet yet: nothing on chain to compare the books with")
        return report
    async with _chain_for(settings) as chain:
        try:
            return await audit_books(conninfo, chain, blocks=blocks)
        except ChainUnavailableError as exc:
            raise ChainUnreachableError(
                f"the chain stopped answering during the check: {exc}"
            ) from None


def print_report(report: BooksReport, console: Console, *, offline: bool) -> None:
    """One line per difference and per thing in flight, then what was compared."""
    for line in lines(report.differences):
        console.print(f"[red]difference:[/red] {escape(line)}")
    for line in lines(report.in_flight):
        console.print(f"[yellow]in flight:[/yellow] {escape(line)}")
    for line in report.notes:
        console.print(escape(line))
    compared = ", ".join(f"{n} {what}" for what, n in report.checked.items())
    against = "themselves" if offline else "the chain"
    if report.ok:
        console.print(
            "balances, counters and block totals agree with the event tables"
            + ("" if offline or not compared else f"; the books agree with the chain ({compared})")
        )
    else:
        console.print(
            f"[red]{len(report.differences)} difference(s)[/red] between the books and {against}"
            + (f" ({compared} compared)" if compared else "")
        )
