"""The KALE asset's token events, read through getEvents: what a follower keeps books by.

Since protocol 23 (CAP-67) every movement of a Stellar asset emits the asset contract's
event from the asset's contract id, whether a contract call or a classic operation (a
payment, an account merge) moved it: `transfer` `[transfer, from, to, asset]`, `mint`
`[mint, to, asset]` (the issuer paid), `burn` `[burn, from, asset]` (the issuer was
paid, or the farm burned a stake), `clawback` `[clawback, from, asset]`. The data is the
amount (i128), or `{amount, to_muxed_id}` when the destination named a sub-account.

A follower stores the page's cursor with what it recorded from the page (in one database
transaction) and asks again from it; see docs/chain.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stellar_sdk import Address, StrKey, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.exceptions import SorobanRpcErrorResponse
from stellar_sdk.soroban_rpc import EventFilter, EventFilterType, EventInfo, GetEventsResponse

from kalepool.chain.client import ChainClient
from kalepool.chain.errors import ChainDataError, EventsOutOfRangeError

KINDS = ("transfer", "mint", "burn", "clawback")
# How many topics each kind has: its name, one or two addresses, the asset's name.
_TOPIC_COUNT = {"transfer": 4, "mint": 3, "burn": 3, "clawback": 3}
MAX_LIMIT = 10_000  # Stellar RPC's default ceiling for a page
# JSON-RPC "invalid request": how Stellar RPC refuses a start outside its window.
_RPC_INVALID_REQUEST = -32600
_SV = stellar_xdr.SCValType
_SA = stellar_xdr.SCAddressType


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One movement of the asset, as the chain reported it."""

    id: str  # the RPC's event id, e.g. "0000000012884905984-0000000001": unique, ordered
    ledger: int
    tx_hash: str  # lower-case hex
    contract_id: str  # the asset contract that emitted it
    kind: str  # "transfer" | "mint" | "burn" | "clawback"
    from_address: str | None  # None for mint
    to_address: str | None  # None for burn and clawback
    amount: int  # stroops


@dataclass(frozen=True, slots=True)
class EventPage:
    """What one read returned, and where to continue.

    An empty page means the server had nothing more up to its latest ledger: wait for the
    next ledger before asking again. A page with events may be followed at once by more.
    """

    events: list[TokenEvent]
    cursor: str | None  # pass back as `cursor` to continue after this page
    latest_ledger: int
    oldest_ledger: int  # the oldest ledger the server still serves


async def read_token_events(
    client: ChainClient,
    *,
    start_ledger: int | None = None,
    cursor: str | None = None,
    contract_id: str | None = None,
    limit: int = 1000,
) -> EventPage:
    """The asset's token events from `start_ledger` (inclusive) or after `cursor`.

    `contract_id` defaults to the KALE asset contract (`client.config.sac_contract_id`);
    `limit` bounds the events of each request. Events are in chain order, each once:
    passing the returned cursor back continues right after the last event the server
    scanned, even when the page is empty. The read goes on past the server's scan windows
    until it has events or has reached the latest ledger, so an empty page means "caught
    up". Events of other kinds are skipped.

    Raises :class:`EventsOutOfRangeError` when the start (or the cursor's ledger) lies
    outside the server's window, :class:`ChainUnavailableError` when the server cannot be
    reached, :class:`ChainDataError` for an answer of the wrong shape, and ValueError for
    bad arguments (before any request).
    """
    if (start_ledger is None) == (cursor is None):
        raise ValueError("give exactly one of start_ledger or cursor")
    if start_ledger is not None and start_ledger < 1:
        raise ValueError(f"start_ledger must be at least 1, not {start_ledger}")
    if cursor is not None:
        cursor_ledger(cursor)  # a malformed cursor is refused here, not by the server
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    contract = contract_id or client.config.sac_contract_id
    if not StrKey.is_valid_contract(contract):
        raise ValueError(f"not a contract id: {contract!r}")
    filters = _filters(contract)
    found: list[TokenEvent] = []
    while True:
        got = await _get_events(client, filters, start_ledger, cursor, limit)
        start_ledger = None
        found.extend(e for e in map(decode_event, got.events) if e is not None)
        previous, cursor = cursor, got.cursor
        full = len(got.events) >= limit
        try:
            caught_up = not full and cursor_ledger(cursor) >= got.latest_ledger
        except ValueError:
            raise ChainDataError(f"getEvents returned a malformed cursor {cursor!r}") from None
        # Stellar RPC scans a bounded number of ledgers per request: a short page need not
        # have reached the latest ledger. Go on until there is something to return or
        # nothing left (or the server stops moving the cursor).
        if found or caught_up or cursor == previous:
            return EventPage(found, cursor, got.latest_ledger, got.oldest_ledger)


def cursor_ledger(cursor: str) -> int:
    """The ledger of an event id or cursor (`TOID-INDEX`, TOID = ledger << 32 | …)."""
    parts = cursor.split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"not an event cursor: {cursor!r}")
    return int(parts[0]) >> 32


def _filters(contract_id: str) -> list[EventFilter]:
    """The asset contract's four kinds of movement, each with its exact number of topics
    (exact-length filters work with every Stellar RPC version; `**` needs 23 or later)."""
    topics = [
        [scval.to_symbol(kind).to_xdr(), *["*"] * (count - 1)]
        for kind, count in _TOPIC_COUNT.items()
    ]
    return [EventFilter(type=EventFilterType.CONTRACT, contractIds=[contract_id], topics=topics)]


async def _get_events(
    client: ChainClient,
    filters: list[EventFilter],
    start_ledger: int | None,
    cursor: str | None,
    limit: int,
) -> GetEventsResponse:
    async def fetch() -> GetEventsResponse:
        return await client.rpc.get_events(
            start_ledger=start_ledger, filters=filters, cursor=cursor, limit=limit
        )

    try:
        return await client.call("getEvents", fetch)
    except SorobanRpcErrorResponse as exc:
        start = start_ledger if start_ledger is not None else cursor_ledger(cursor or "")
        text = exc.message or ""
        if _is_range_error(exc.code, text):
            oldest, latest = await _window(client, text)
            raise EventsOutOfRangeError(start, oldest, latest) from exc
        raise ChainDataError(f"getEvents refused the request: {text}") from exc


def _is_range_error(code: int, message: str) -> bool:
    # Stellar RPC 23 and later: "startLedger must be within the ledger range: A - B";
    # earlier: "startLedger must be between the oldest ledger: A and the latest ledger: B".
    text = message.lower()
    return code == _RPC_INVALID_REQUEST and ("ledger range" in text or "oldest ledger" in text)


async def _window(client: ChainClient, message: str) -> tuple[int, int]:
    """(oldest, latest) from the refusal's text, or from getHealth if it has no numbers."""
    numbers = [int(n) for n in re.findall(r"\d+", message)]
    if len(numbers) >= 2:
        return numbers[-2], numbers[-1]
    health = await client.call("getHealth", client.rpc.get_health)
    return health.oldest_ledger, health.latest_ledger


def decode_event(info: EventInfo) -> TokenEvent | None:
    """A token event, or None for an event of another kind or shape.

    An event that names itself a movement with the right number of topics but carries
    something other than addresses and an amount raises ChainDataError: the books must not
    pass over a movement they cannot read.
    """
    try:
        topics = [stellar_xdr.SCVal.from_xdr(t) for t in info.topic]
        value = stellar_xdr.SCVal.from_xdr(info.value)
    except (ValueError, TypeError, IndexError, EOFError):
        raise ChainDataError(f"event {info.id} is not valid XDR") from None
    if not topics or topics[0].type != _SV.SCV_SYMBOL or topics[0].sym is None:
        return None
    kind = topics[0].sym.sc_symbol.decode(errors="replace")
    if _TOPIC_COUNT.get(kind) != len(topics):
        return None
    try:
        first = _address(topics[1])
        second = _address(topics[2]) if kind == "transfer" else None
        amount = _amount(value)
    except ValueError as exc:
        raise ChainDataError(f"{kind} event {info.id}: {exc}") from None
    from_address, to_address = {
        "transfer": (first, second),
        "mint": (None, first),
        "burn": (first, None),
        "clawback": (first, None),
    }[kind]
    return TokenEvent(
        id=info.id,
        ledger=info.ledger,
        tx_hash=info.transaction_hash.lower(),
        contract_id=info.contract_id,
        kind=kind,
        from_address=from_address,
        to_address=to_address,
        amount=amount,
    )


def _address(val: stellar_xdr.SCVal) -> str:
    """A holder's strkey; a muxed account (`M…`) is its underlying `G…` account."""
    if val.type != _SV.SCV_ADDRESS or val.address is None:
        raise ValueError(f"expected an address, got {val.type.name}")
    sc = val.address
    if sc.type == _SA.SC_ADDRESS_TYPE_MUXED_ACCOUNT and sc.muxed_account is not None:
        return str(StrKey.encode_ed25519_public_key(sc.muxed_account.ed25519.uint256))
    try:
        return str(Address.from_xdr_sc_address(sc).address)
    except (ValueError, AssertionError) as exc:
        raise ValueError(f"unreadable address ({exc})") from None


def _amount(val: stellar_xdr.SCVal) -> int:
    """The amount: a bare i128, or the `amount` entry of the CAP-67 map."""
    if val.type == _SV.SCV_MAP and val.map is not None:
        for entry in val.map.sc_map:
            key = entry.key
            if (
                key.type == _SV.SCV_SYMBOL
                and key.sym is not None
                and key.sym.sc_symbol == b"amount"
            ):
                return _amount(entry.val)
        raise ValueError("the data map has no amount")
    if val.type != _SV.SCV_I128:
        raise ValueError(f"expected an i128 amount, got {val.type.name}")
    return int(scval.from_int128(val))
