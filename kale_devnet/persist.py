"""Saving and restoring the devnet chain (`--state PATH`): a snapshot and a journal.

`PATH` holds a snapshot of the whole chain (one JSON object); `PATH.journal.N` files
hold, one JSON line each, what changed since: every ledger close (and every admin
change) appends one line of only the entries it touched, the ledgers, transactions and
events it added, and the chain's counters, and fsyncs it before the close is reported.
So a closed ledger survives a SIGKILL (or a power cut), and a close costs what changed,
not the whole history. When the journal has grown past the snapshot's size, a new
snapshot is written in the background and the journals it covers are deleted (the
journal never outgrows the snapshot); starting and stopping write one as well.

The snapshot names the first journal it does not include, and a journal is deleted
only once a snapshot covering it is in place: a crash at any point loads the newest
snapshot, then replays the journals after it in order. A last line cut short by a
crash was never fsynced, so never reported: it is skipped.

Ledger entries, headers, transactions and events are stored as the XDR the RPC serves,
so a restored chain answers exactly as before the restart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from stellar_sdk import xdr as stellar_xdr

from kale_devnet import txn
from kale_devnet.chain import Chain, EventRecord, LedgerRecord, TxRecord
from kale_devnet.config import DevnetConfig
from kale_devnet.ledger import Entry, is_temporary, key_of

log = logging.getLogger(__name__)

FORMAT = "kale-pool-devnet-state"
VERSION = 2  # 2: the snapshot names its journal; 1 (no journal) is still read
READABLE = (1, 2)
# A new snapshot is taken once the journal holds this many times the snapshot's bytes:
# the amortized cost of snapshots stays proportional to what changed.
COMPACT_RATIO = 1.0


class StateFileError(ValueError):
    """The state file cannot be read as a devnet state."""


# ---- the chain as JSON (one home for the format) ------------------------------------------


def _ledger_json(rec: LedgerRecord) -> dict[str, Any]:
    return {**asdict(rec), "hash": rec.hash.hex(), "meta_b64": None}


def _counters(chain: Chain) -> dict[str, Any]:
    return {
        "latest": chain.latest.seq,
        "oldest": chain.oldest_ledger,
        "fee_pool": chain.fee_pool,
        "pending_advance": chain.pending_advance,
        "clock_offset": chain.clock_offset,
        "bucket_hash": chain.bucket_hash.hex(),
        "pending": [frame.b64 for frame in chain.pending],
    }


def dump(chain: Chain, journal: int = 0) -> dict[str, Any]:
    """The whole chain; `journal`: the first journal file this snapshot does not include."""
    state = chain.state
    entries = [
        [entry.ledger_entry_b64, entry.live_until, state.is_temporary(kb)]
        for kb, entry in state.entries.items()
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "network_passphrase": chain.identity.network_passphrase,
        "journal": journal,
        **_counters(chain),
        "ledgers": [_ledger_json(rec) for rec in chain.ledgers.values()],
        "entries": entries,
        "deleted": [],
        # Records hold only strings, numbers and lists of strings: their __dict__ is JSON
        # as it stands (asdict's deep copies would double the time of every save).
        "transactions": [tx.__dict__ for tx in chain.txs.values()],
        "events": [ev.__dict__ for ev in chain.events],
    }


def delta(chain: Chain, through: int) -> dict[str, Any]:
    """What changed since ledger `through` was journaled: the entries touched since,
    the ledgers after it with their transactions and events, the counters."""
    state = chain.state
    entries: list[list[Any]] = []
    deleted: list[str] = []
    for kb in state.touched:
        entry = state.entries.get(kb)
        if entry is None:
            deleted.append(base64.b64encode(kb).decode())
        else:
            entries.append([entry.ledger_entry_b64, entry.live_until, state.is_temporary(kb)])
    ledgers = [
        rec for seq in range(through + 1, chain.latest.seq + 1) if (rec := chain.ledgers.get(seq))
    ]
    events: list[dict[str, Any]] = []
    for ev in reversed(chain.events):
        if ev.ledger <= through:
            break
        events.append(ev.__dict__)
    events.reverse()
    return {
        **_counters(chain),
        "ledgers": [_ledger_json(rec) for rec in ledgers],
        "entries": entries,
        "deleted": deleted,
        "transactions": [
            chain.txs[h].__dict__ for rec in ledgers for h in rec.tx_hashes if h in chain.txs
        ],
        "events": events,
    }


def _apply(chain: Chain, data: dict[str, Any]) -> list[str]:
    """Apply a snapshot or a journal line to `chain`; the queue it recorded (envelopes)."""
    state = chain.state
    for raw in data["deleted"]:
        kb = base64.b64decode(raw)
        state.set(kb, None, state.is_temporary(kb))
    for raw, live_until, temporary in data["entries"]:
        le = stellar_xdr.LedgerEntry.from_xdr(raw)
        key = key_of(le.data)
        state.set(
            key.to_xdr_bytes(),
            Entry(le.data, le.last_modified_ledger_seq.uint32, live_until),
            bool(temporary) or is_temporary(key),
        )
    for rec in data["ledgers"]:
        chain.ledgers[rec["seq"]] = LedgerRecord(**{**rec, "hash": bytes.fromhex(rec["hash"])})
    for tx in data["transactions"]:
        chain.txs[tx["hash"]] = TxRecord(**tx)
    chain.events.extend(EventRecord(**ev) for ev in data["events"])
    chain.fee_pool = int(data["fee_pool"])
    chain.pending_advance = int(data["pending_advance"])
    chain.clock_offset = int(data["clock_offset"])
    chain.bucket_hash = bytes.fromhex(data["bucket_hash"])
    chain._latest = chain.ledgers[int(data["latest"])]
    if "oldest" in data:
        chain.forget_before(int(data["oldest"]))
    return [str(b64) for b64 in data["pending"]]


# ---- files ------------------------------------------------------------------------------


def journal_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.journal.{number}")


def journals(path: Path) -> dict[int, Path]:
    """The journal files beside the state file, by number."""
    prefix = f"{path.name}.journal."
    found = {}
    if path.parent.is_dir():
        for item in path.parent.iterdir():
            if item.name.startswith(prefix) and item.name[len(prefix) :].isdigit():
                found[int(item.name[len(prefix) :])] = item
    return found


def copy_state(path: Path, to: Path) -> None:
    """Copy a stopped devnet's state to `to`: the snapshot and the journals beside it
    (renamed after `to`), so that a devnet started on the copy sees every ledger the
    original closed, those only journalled since its last snapshot included."""
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, to)
    for number, journal in journals(path).items():
        shutil.copyfile(journal, journal_path(to, number))


def serialize(chain: Chain, journal: int = 0) -> str:
    return json.dumps(dump(chain, journal), separators=(",", ":"))


def write(data: str, path: Path) -> None:
    """Atomically replace `path` with `data` (fsync, rename, fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(config: DevnetConfig, path: Path) -> Chain:
    """Rebuild a chain from a state file and its journals (StateFileError if it is not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateFileError(f"cannot read devnet state {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(f"{path} is not a kale-pool devnet state file")
    if data.get("version") not in READABLE:
        raise StateFileError(f"{path} has state version {data.get('version')}, expected {VERSION}")
    chain = Chain(config, genesis=False)
    if data.get("network_passphrase") != chain.identity.network_passphrase:
        raise StateFileError(f"{path} belongs to another network")
    data.setdefault("deleted", [])
    try:
        pending = _apply(chain, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{path} is damaged: {exc}") from None
    first = int(data.get("journal", 0))
    numbers = sorted(n for n in journals(path) if n >= first)
    if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise StateFileError(f"{path}: journals {numbers} are not consecutive")
    for i, number in enumerate(numbers):
        replayed = _replay(chain, journal_path(path, number), last=i == len(numbers) - 1)
        if replayed is not None:
            pending = replayed
    chain.state.touched.clear()
    chain.register_farm_code()  # a farm upgraded before the restart runs on
    try:
        frames = [txn.parse(b64, chain.identity.network_id) for b64 in pending]
    except (TypeError, ValueError) as exc:
        raise StateFileError(f"{path} is damaged: {exc}") from None
    for frame in frames:
        chain._enqueue(frame)
    return chain


def _replay(chain: Chain, journal: Path, *, last: bool) -> list[str] | None:
    """Apply a journal's lines; the queue of its last line (None when it has none)."""
    pending = None
    try:
        lines = journal.read_bytes().split(b"\n")
    except OSError as exc:
        raise StateFileError(f"cannot read devnet journal {journal}: {exc}") from None
    if lines and lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        try:
            data = json.loads(line)
        except ValueError:
            if last and i == len(lines) - 1:
                break  # cut short by a crash before its fsync: never reported
            raise StateFileError(f"{journal} is damaged at line {i + 1}") from None
        try:
            pending = _apply(chain, data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFileError(f"{journal} is damaged at line {i + 1}: {exc}") from None
    return pending


class Store:
    """A chain kept in a state file: `record` journals each change, snapshots follow."""

    def __init__(self, path: Path, chain: Chain) -> None:
        self.path = path
        self.chain = chain
        self._journal = 0  # the journal file being appended to
        self._fh: IO[bytes] | None = None
        self._through = chain.latest.seq  # the latest ledger journaled
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._writer: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self.snapshots = 0  # snapshots taken while running (compactions)

    @classmethod
    def open(cls, config: DevnetConfig, path: Path) -> Store:
        """Load the chain at `path` (or start one), then snapshot it with an empty journal."""
        chain = load(config, path) if path.exists() else Chain(config)
        store = cls(path, chain)
        store.snapshot()
        return store

    def record(self) -> None:
        """Append what changed since the last record to the journal and fsync it."""
        if self._fh is None:
            self._open_journal(self._journal + 1)
        assert self._fh is not None
        line = json.dumps(delta(self.chain, self._through), separators=(",", ":")) + "\n"
        raw = line.encode()
        end = self._fh.tell()
        try:
            self._fh.write(raw)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError:
            # No half line left for the next one to follow (a replay would refuse it);
            # what it held stays touched and goes into the next line.
            with contextlib.suppress(OSError):
                self._fh.truncate(end)
            raise
        self.chain.state.touched.clear()
        self._through = self.chain.latest.seq
        self._journal_bytes += len(raw)
        if self._writing is not None and self._writing.done():
            failed = self._writing.exception()
            self._writing = None
            if failed is not None:  # the journal goes on; the old snapshot stays valid
                log.error("writing the devnet state snapshot failed: %s", failed)
        if self._writing is None and self._journal_bytes >= COMPACT_RATIO * self._snapshot_bytes:
            self._compact_in_background()

    def snapshot(self) -> None:
        """Write a snapshot now (waiting for one in flight) and delete every journal."""
        self.wait()
        self.chain.state.touched.clear()
        self._close_journal()
        after = max([self._journal, *journals(self.path)]) + 1
        data = serialize(self.chain, journal=after)
        write(data, self.path)
        self._drop_journals_before(after)
        self._journal = after - 1  # the next record opens journal `after`
        self._through = self.chain.latest.seq
        self._snapshot_bytes = len(data)
        self._journal_bytes = 0

    def wait(self) -> None:
        """Wait for a background snapshot to be written."""
        if self._writing is not None:
            self._writing.result()
            self._writing = None

    def close(self) -> None:
        """A last snapshot; the journal is closed (a later record opens a new one)."""
        self.snapshot()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _compact_in_background(self) -> None:
        # The snapshot is taken now, on the loop (consistent), with every change so far
        # journaled; later records go to a new journal, and the covered ones are deleted
        # once the snapshot is in place.
        self.chain.state.touched.clear()  # all in the journal already (record just ran)
        covered = self._journal
        self._open_journal(covered + 1)
        data = serialize(self.chain, journal=covered + 1)
        self._snapshot_bytes = len(data)
        self._journal_bytes = 0
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devnet-state")
        self._writing = self._writer.submit(self._write_snapshot, data, covered + 1)
        self.snapshots += 1

    def _write_snapshot(self, data: str, after: int) -> None:
        write(data, self.path)
        self._drop_journals_before(after)

    def _drop_journals_before(self, number: int) -> None:
        for n, item in journals(self.path).items():
            if n < number:
                item.unlink(missing_ok=True)

    def _open_journal(self, number: int) -> None:
        self._close_journal()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(journal_path(self.path, number), "ab")  # noqa: SIM115 - kept open
        _fsync_dir(self.path.parent)  # the new file's name survives a crash too
        self._journal = number

    def _close_journal(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
