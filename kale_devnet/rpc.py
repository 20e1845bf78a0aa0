"""Stellar RPC's JSON-RPC methods over the devnet chain, with its request and answer shapes."""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from stellar_sdk import StrKey
from stellar_sdk import xdr as stellar_xdr

from kale_devnet.chain import Chain, EventRecord, LedgerRecord, TxRecord, event_id
from kale_devnet.ledger import LT
from kale_devnet.network import PROTOCOL_VERSION
from kale_devnet.txn import EnvelopeError

# The distribution's version, read from its metadata: importing `kalepool` for its
# `__version__` would cross the devnet's wall (it may import protocol math only).
try:
    VERSION = metadata.version("kale-pool")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "unknown"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

MAX_LEDGER_KEYS = 200
MAX_EVENTS_LIMIT = 10_000
DEFAULT_EVENTS_LIMIT = 100
MAX_FILTERS = 5
MAX_CONTRACT_IDS = 5
MAX_TOPIC_FILTERS = 5
MAX_TOPIC_SEGMENTS = 4  # not counting a trailing "**"
# An event id's TOID: ledger << 32 | transaction (20 bits) << 12 | operation (12 bits)
TX_MASK = (1 << 20) - 1
OP_MASK = (1 << 12) - 1
U32_MAX = 2**32 - 1


class RpcError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "invalid parameters: expected an object of named parameters")
    return params


def _str_param(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise RpcError(INVALID_PARAMS, f"invalid parameters: {name} must be a non-empty string")
    return value


def _int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RpcError(INVALID_PARAMS, f"invalid parameters: {name} must be an integer")
    return value


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode_xdr(cls: Any, b64: str) -> Any:
    """Decode canonical XDR or raise ValueError."""
    try:
        raw = base64.b64decode(b64, validate=True)
        value = cls.from_xdr_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from exc
    except Exception as exc:  # the XDR decoder raises assorted errors on garbage
        raise ValueError(str(exc)) from exc
    if value.to_xdr_bytes() != raw:
        raise ValueError("non-canonical XDR")
    return value


class RpcService:
    """Answers Stellar RPC methods for one chain."""

    def __init__(
        self, chain: Chain, base_url: Callable[[], str], healthy: Callable[[], str | None]
    ) -> None:
        self.chain = chain
        self.base_url = base_url
        self.healthy = healthy
        # getLatestLedger's answer as JSON, kept for its ledger: it carries the ledger's
        # whole close meta (hundreds of kB for a ledger of plants), asked for many times
        self._latest_json: tuple[LedgerRecord, str] | None = None
        self.methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "getHealth": self.get_health,
            "getNetwork": self.get_network,
            "getLatestLedger": self.get_latest_ledger,
            "getLedgerEntries": self.get_ledger_entries,
            "simulateTransaction": self.simulate_transaction,
            "sendTransaction": self.send_transaction,
            "getTransaction": self.get_transaction,
            "getEvents": self.get_events,
            "getVersionInfo": self.get_version_info,
            "getFeeStats": self.get_fee_stats,
            "getTransactions": self.get_transactions,
            "getLedgers": self.get_ledgers,
        }

    def call(self, method: str, params: Any) -> dict[str, Any]:
        handler = self.methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, "method not found")
        return handler(_params(params))

    def call_json(self, method: str, params: Any) -> str:
        """`call`'s answer as JSON text (getLatestLedger's encoded once per ledger)."""
        if method != "getLatestLedger":
            return json.dumps(self.call(method, params))
        _params(params)
        latest = self.chain.latest
        if self._latest_json is None or self._latest_json[0] is not latest:
            self._latest_json = (latest, json.dumps(self.get_latest_ledger({})))
        return self._latest_json[1]

    # ---- the ledger --------------------------------------------------------------------

    def _window(self) -> dict[str, Any]:
        chain = self.chain
        oldest = chain.ledgers.get(chain.oldest_ledger, chain.latest)
        return {
            "latestLedger": chain.latest.seq,
            "latestLedgerCloseTime": str(chain.latest.close_time),
            "oldestLedger": oldest.seq,
            "oldestLedgerCloseTime": str(oldest.close_time),
        }

    def get_health(self, params: dict[str, Any]) -> dict[str, Any]:
        problem = self.healthy()
        if problem is not None:
            raise RpcError(INTERNAL_ERROR, problem)
        chain = self.chain
        return {
            "status": "healthy",
            "latestLedger": chain.latest.seq,
            "oldestLedger": chain.oldest_ledger,
            "ledgerRetentionWindow": chain.config.history_ledgers,
        }

    def get_network(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "friendbotUrl": f"{self.base_url()}/friendbot",
            "passphrase": self.chain.identity.network_passphrase,
            "protocolVersion": PROTOCOL_VERSION,
        }

    def get_version_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": f"kale-pool-devnet {VERSION}",
            "commitHash": "",
            "buildTimestamp": "",
            "captiveCoreVersion": "none (kale-pool devnet)",
            "protocolVersion": PROTOCOL_VERSION,
        }

    def get_fee_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        fee = str(self.chain.config.base_fee)
        dist = {
            k: fee
            for k in (
                [
                    "max",
                    "min",
                    "mode",
                    "p10",
                    "p20",
                    "p30",
                    "p40",
                    "p50",
                    "p60",
                    "p70",
                    "p80",
                    "p90",
                    "p95",
                    "p99",
                ]
            )
        }
        stats = {**dist, "transactionCount": "0", "ledgerCount": 0}
        return {
            "sorobanInclusionFee": stats,
            "inclusionFee": stats,
            "latestLedger": self.chain.latest.seq,
        }

    def get_latest_ledger(self, params: dict[str, Any]) -> dict[str, Any]:
        latest = self.chain.latest
        return {
            "id": latest.hash.hex(),
            "protocolVersion": PROTOCOL_VERSION,
            "sequence": latest.seq,
            "closeTime": str(latest.close_time),
            "headerXdr": latest.header_b64,
            "metadataXdr": self.chain.ledger_close_meta(latest),
        }

    def get_ledger_entries(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = params.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise RpcError(INVALID_PARAMS, "invalid parameters: keys must be a list of strings")
        if not keys:
            raise RpcError(INVALID_PARAMS, "key list must not be empty")
        if len(keys) > MAX_LEDGER_KEYS:
            raise RpcError(
                INVALID_PARAMS,
                f"key count ({len(keys)}) exceeds maximum supported ({MAX_LEDGER_KEYS})",
            )
        decoded: list[stellar_xdr.LedgerKey] = []
        for i, k in enumerate(keys):
            try:
                key = _decode_xdr(stellar_xdr.LedgerKey, k)
            except ValueError:
                raise RpcError(
                    INVALID_PARAMS, f"cannot unmarshal key value {k} at index {i}"
                ) from None
            if key.type == LT.TTL:
                raise RpcError(INVALID_PARAMS, "ledger ttl entries cannot be queried directly")
            decoded.append(key)
        entries = []
        for raw, key in zip(keys, decoded, strict=True):
            entry = self.chain.get_entry(key)
            if entry is None:
                continue
            item: dict[str, Any] = {
                "key": raw,
                "xdr": entry.data.to_xdr(),
                "lastModifiedLedgerSeq": entry.last_modified,
            }
            if entry.live_until is not None:
                item["liveUntilLedgerSeq"] = entry.live_until
            entries.append(item)
        return {"entries": entries, "latestLedger": self.chain.latest.seq}

    # ---- transactions ------------------------------------------------------------------

    def simulate_transaction(self, params: dict[str, Any]) -> dict[str, Any]:
        envelope = _str_param(params, "transaction")
        auth_mode = params.get("authMode")
        if auth_mode is not None and auth_mode not in ("enforce", "record", "record_allow_nonroot"):
            raise RpcError(INVALID_PARAMS, f"invalid authMode: {auth_mode}")
        leeway = 0
        config = params.get("resourceConfig")
        if config is not None:
            if not isinstance(config, dict):
                raise RpcError(
                    INVALID_PARAMS, "invalid parameters: resourceConfig must be an object"
                )
            value = _int_param(config, "instructionLeeway")
            if value is not None:
                if value < 0:
                    raise RpcError(INVALID_PARAMS, "instructionLeeway must not be negative")
                leeway = value
        return self.chain.simulate(envelope, auth_mode, leeway)

    def send_transaction(self, params: dict[str, Any]) -> dict[str, Any]:
        envelope = _str_param(params, "transaction")
        try:
            outcome = self.chain.submit(envelope)
        except EnvelopeError:
            raise RpcError(INVALID_PARAMS, "invalid_xdr") from None
        answer: dict[str, Any] = {
            "status": outcome.status,
            "hash": outcome.hash,
            "latestLedger": self.chain.latest.seq,
            "latestLedgerCloseTime": str(self.chain.latest.close_time),
        }
        if outcome.error_result is not None:
            answer["errorResultXdr"] = outcome.error_result
        if outcome.diagnostics:
            answer["diagnosticEventsXdr"] = outcome.diagnostics
        return answer

    def get_transaction(self, params: dict[str, Any]) -> dict[str, Any]:
        tx_hash = _str_param(params, "hash")
        if len(tx_hash) != 64:
            raise RpcError(INVALID_PARAMS, f"unexpected hash length ({len(tx_hash)})")
        try:
            bytes.fromhex(tx_hash)
        except ValueError:
            raise RpcError(INVALID_PARAMS, f"incorrect hash: {tx_hash}") from None
        record = self.chain.txs.get(tx_hash.lower())
        answer: dict[str, Any] = {**self._window(), "txHash": tx_hash.lower()}
        if record is None:
            return {**answer, "status": "NOT_FOUND"}
        return {
            **answer,
            "status": "SUCCESS" if record.successful else "FAILED",
            "applicationOrder": record.application_order,
            "feeBump": record.fee_bump,
            "envelopeXdr": record.envelope,
            "resultXdr": record.result,
            "resultMetaXdr": record.meta,
            "diagnosticEventsXdr": record.diagnostics,
            "events": {
                "transactionEventsXdr": record.transaction_events,
                "contractEventsXdr": record.contract_events,
            },
            "ledger": record.ledger,
            "createdAt": str(record.close_time),
        }

    def _tx_json(self, record: TxRecord) -> dict[str, Any]:
        return {
            "status": "SUCCESS" if record.successful else "FAILED",
            "txHash": record.hash,
            "applicationOrder": record.application_order,
            "feeBump": record.fee_bump,
            "envelopeXdr": record.envelope,
            "resultXdr": record.result,
            "resultMetaXdr": record.meta,
            "diagnosticEventsXdr": record.diagnostics,
            "events": {
                "transactionEventsXdr": record.transaction_events,
                "contractEventsXdr": record.contract_events,
            },
            "ledger": record.ledger,
            "createdAt": record.close_time,
        }

    def _page_start(
        self, params: dict[str, Any], max_limit: int, default: int
    ) -> tuple[int, int, int]:
        """(first ledger, position after which to start, limit) for a paginated method."""
        chain = self.chain
        oldest, latest = chain.oldest_ledger, chain.latest.seq
        pagination = params.get("pagination") or {}
        if not isinstance(pagination, dict):
            raise RpcError(INVALID_PARAMS, "invalid parameters: pagination must be an object")
        limit = _int_param(pagination, "limit") or default
        if not 1 <= limit <= max_limit:
            raise RpcError(INVALID_REQUEST, f"limit must be between 1 and {max_limit}")
        cursor = pagination.get("cursor")
        start = _int_param(params, "startLedger")
        if cursor is not None:
            if start:
                raise RpcError(INVALID_REQUEST, "startLedger and cursor cannot both be set")
            if not isinstance(cursor, str) or not cursor.isdigit():
                raise RpcError(INVALID_PARAMS, "invalid cursor")
            return oldest, int(cursor), limit
        if not start or not oldest <= start <= latest:
            raise RpcError(
                INVALID_REQUEST,
                f"start ledger must be between the oldest ledger: {oldest} and the latest "
                f"ledger: {latest} for this rpc instance.",
            )
        return start, -1, limit

    def get_transactions(self, params: dict[str, Any]) -> dict[str, Any]:
        chain = self.chain
        first, after, limit = self._page_start(params, 200, 10)
        found: list[TxRecord] = []
        for seq in range(first, chain.latest.seq + 1):
            ledger = chain.ledgers.get(seq)
            for h in ledger.tx_hashes if ledger else []:
                record = chain.txs.get(h)
                if record is None or _toid(record) <= after:
                    continue
                found.append(record)
                if len(found) == limit:
                    break
            if len(found) == limit:
                break
        cursor = str(_toid(found[-1])) if found else str((chain.latest.seq + 1) << 32)
        window = self._window()
        return {
            "transactions": [self._tx_json(r) for r in found],
            "latestLedger": window["latestLedger"],
            "latestLedgerCloseTimestamp": int(window["latestLedgerCloseTime"]),
            "oldestLedger": window["oldestLedger"],
            "oldestLedgerCloseTimestamp": int(window["oldestLedgerCloseTime"]),
            "cursor": cursor,
        }

    def get_ledgers(self, params: dict[str, Any]) -> dict[str, Any]:
        chain = self.chain
        first, after, limit = self._page_start(params, 200, 5)
        found = []
        for seq in range(max(first, after + 1), chain.latest.seq + 1):
            ledger = chain.ledgers.get(seq)
            if ledger is None:
                continue
            entry = stellar_xdr.LedgerHeaderHistoryEntry(
                stellar_xdr.Hash(ledger.hash),
                stellar_xdr.LedgerHeader.from_xdr(ledger.header_b64),
                stellar_xdr.LedgerHeaderHistoryEntryExt(0),
            )
            found.append(
                {
                    "hash": ledger.hash.hex(),
                    "sequence": ledger.seq,
                    "ledgerCloseTime": str(ledger.close_time),
                    "headerXdr": entry.to_xdr(),
                    "metadataXdr": chain.ledger_close_meta(ledger),
                }
            )
            if len(found) == limit:
                break
        cursor = str(found[-1]["sequence"]) if found else str(chain.latest.seq)
        return {"ledgers": found, "cursor": cursor, **self._window()}

    # ---- events ------------------------------------------------------------------------

    def get_events(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stellar RPC's getEvents (its `get_events.go`): validation, scan window, cursor.

        Events are kept in id order. A page is cut at `limit` events or at the end of the
        scan window (`event_scan_ledgers` ledgers at most, up to the latest); its cursor is the
        last event's id when full, otherwise the largest id of the window's last ledger, so
        passing it back continues exactly where the scan stopped.
        """
        chain = self.chain
        oldest, latest = chain.oldest_ledger, chain.latest.seq
        pagination = params.get("pagination") or {}
        if not isinstance(pagination, dict):
            raise RpcError(INVALID_PARAMS, "invalid parameters: pagination must be an object")
        limit = _int_param(pagination, "limit") or DEFAULT_EVENTS_LIMIT
        cursor = pagination.get("cursor")
        start = _int_param(params, "startLedger") or 0
        end = _int_param(params, "endLedger") or 0
        if cursor is not None:
            position = _parse_cursor(cursor)
            if position is None:
                raise RpcError(INVALID_PARAMS, f"invalid event id {cursor}")
            if start or end:
                raise RpcError(INVALID_PARAMS, "ledger ranges and cursor cannot both be set")
            # Paging starts with the item right after the cursor (a uint32 increment, as
            # the real server does it).
            ledger, tx, op, index = position
            first = (ledger, tx, op, (index + 1) & U32_MAX)
        elif start <= 0:
            raise RpcError(INVALID_PARAMS, "startLedger must be positive")
        else:
            first = (start, 0, 0, 0)
        if limit < 0 or limit > MAX_EVENTS_LIMIT:
            raise RpcError(INVALID_PARAMS, f"limit must not exceed {MAX_EVENTS_LIMIT}")
        matcher = _EventMatcher.parse(params.get("filters"))
        if not oldest <= first[0] <= latest:
            raise RpcError(
                INVALID_REQUEST,
                f"startLedger must be within the ledger range: {oldest} - {latest}",
            )
        stop = min(first[0] + chain.config.event_scan_ledgers, latest + 1)
        if end:
            stop = min(stop, end)
        lowest, beyond = event_id(*first), event_id(stop, 0, 0, 0)
        found: list[EventRecord] = []
        # The ids are fixed-width, so string order is event order (the real server compares
        # them the same way); a follower's poll starts near the end without a full scan.
        begin = bisect.bisect_left(chain.events, lowest, key=lambda ev: ev.id)
        for ev in itertools.islice(chain.events, begin, None):
            if ev.id >= beyond:
                break
            if matcher.matches(ev):
                found.append(ev)
                if len(found) == limit:
                    break
        if len(found) == limit:
            next_cursor = found[-1].id
        else:  # the end of the scan window: the largest cursor of its last ledger
            next_cursor = event_id(stop - 1, TX_MASK, OP_MASK, U32_MAX)
        return {
            "events": [_event_json(ev) for ev in found],
            "cursor": next_cursor,
            **self._window(),
        }


def _toid(record: TxRecord) -> int:
    return (record.ledger << 32) | (record.application_order << 12)


def _parse_cursor(cursor: Any) -> tuple[int, int, int, int] | None:
    """(ledger, transaction, operation, event) of an event id `TOID-INDEX`, or None."""
    if not isinstance(cursor, str):
        return None
    parts = cursor.split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    toid, index = int(parts[0]), int(parts[1])
    if toid >= 2**63 or index > U32_MAX:
        return None
    return toid >> 32, (toid >> 12) & TX_MASK, toid & OP_MASK, index


def _event_json(ev: EventRecord) -> dict[str, Any]:
    return {
        "type": ev.type,
        "ledger": ev.ledger,
        "ledgerClosedAt": _iso(ev.close_time),
        "contractId": ev.contract_id,
        "id": ev.id,
        "operationIndex": ev.op_index,
        "transactionIndex": ev.tx_index,
        "txHash": ev.tx_hash,
        "inSuccessfulContractCall": ev.successful,
        "topic": ev.topics,
        "value": ev.value,
    }


Filter = tuple[set[str] | None, set[str] | None, list[list[bytes | str]]]


class _EventMatcher:
    """getEvents filters: any filter may match; within one, every given field must.

    A topic filter matches an event with exactly as many topics, each segment equal or
    `*`; a trailing `**` matches any number of further topics (none included).
    """

    def __init__(self, filters: list[Filter]):
        self.filters = filters

    @staticmethod
    def parse(raw: Any) -> _EventMatcher:
        if raw is None:
            return _EventMatcher([])
        if not isinstance(raw, list):
            raise RpcError(INVALID_PARAMS, "invalid parameters: filters must be a list")
        if len(raw) > MAX_FILTERS:
            raise RpcError(INVALID_PARAMS, f"maximum {MAX_FILTERS} filters per request")
        return _EventMatcher([_parse_filter(i, f) for i, f in enumerate(raw, start=1)])

    def matches(self, ev: EventRecord) -> bool:
        if not self.filters:
            return True
        return any(self._match_one(f, ev) for f in self.filters)

    @staticmethod
    def _match_one(f: Filter, ev: EventRecord) -> bool:
        types, ids, topics = f
        if types is not None and ev.type not in types:
            return False
        if ids is not None and ev.contract_id not in ids:
            return False
        if not topics:
            return True
        actual = [base64.b64decode(t) for t in ev.topics]
        return any(_topic_matches(segments, actual) for segments in topics)


def _parse_filter(number: int, f: Any) -> Filter:
    """One filter, checked as the real server checks it (`EventFilter.Valid`)."""

    def invalid(why: str) -> RpcError:
        return RpcError(INVALID_PARAMS, f"filter {number} invalid: {why}")

    if not isinstance(f, dict):
        raise invalid("not an object")
    types = f.get("type")
    type_set: set[str] | None = None
    if types:
        if not isinstance(types, str):
            raise invalid("type must be a string")
        type_set = set(types.split(","))
        if not type_set <= {"contract", "system"}:
            raise invalid("filter type invalid: if set, type must be either 'system' or 'contract'")
    ids = f.get("contractIds") or []
    if not isinstance(ids, list):
        raise invalid("contractIds must be a list")
    if len(ids) > MAX_CONTRACT_IDS:
        raise invalid(f"maximum {MAX_CONTRACT_IDS} contract IDs per filter")
    topics_raw = f.get("topics") or []
    if not isinstance(topics_raw, list):
        raise invalid("topics must be a list")
    if len(topics_raw) > MAX_TOPIC_FILTERS:
        raise invalid(f"maximum {MAX_TOPIC_FILTERS} topics per filter")
    for i, cid in enumerate(ids, start=1):
        if not isinstance(cid, str) or not StrKey.is_valid_contract(cid):
            raise invalid(f"contract ID {i} invalid")
    topics: list[list[bytes | str]] = []
    for i, topic in enumerate(topics_raw, start=1):
        try:
            topics.append(_parse_topic(topic))
        except ValueError as exc:
            raise invalid(f"topic {i} invalid: {exc}") from None
    return type_set, (set(ids) if ids else None), topics


def _parse_topic(topic: Any) -> list[bytes | str]:
    """A topic filter's segments (XDR bytes, `*`, a trailing `**`); ValueError says why not."""
    if not isinstance(topic, list) or not topic:
        raise ValueError("topic must have at least 1 segment")
    fixed = topic[:-1] if topic[-1] == "**" else topic
    segments: list[bytes | str] = []
    for i, seg in enumerate(fixed, start=1):
        if seg == "**":
            raise ValueError(
                f"segment {i} invalid: wildcard '**' is only allowed as the last segment"
            )
        if seg == "*":
            segments.append(seg)
            continue
        if not isinstance(seg, str):
            raise ValueError(f"segment {i} invalid: must set either wildcard or scval")
        try:
            segments.append(_decode_xdr(stellar_xdr.SCVal, seg).to_xdr_bytes())
        except (ValueError, TypeError):
            raise ValueError(f"segment {i} invalid: not an SCVal") from None
    if len(segments) > MAX_TOPIC_SEGMENTS:
        raise ValueError(f"topic cannot have more than {MAX_TOPIC_SEGMENTS} segments")
    if len(fixed) < len(topic):
        segments.append("**")
    return segments


def _topic_matches(segments: list[bytes | str], actual: list[bytes]) -> bool:
    if segments and segments[-1] == "**":
        fixed = segments[:-1]
        if len(actual) < len(fixed):
            return False
    else:
        fixed = segments
        if len(actual) != len(fixed):
            return False
    return all(seg == "*" or seg == got for seg, got in zip(fixed, actual, strict=False))
