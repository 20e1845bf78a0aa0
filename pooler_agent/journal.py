"""The work journal: every work envelope on disk before it is sent, until it is reported.

An agent killed after sending a `work` transaction and before the pool acknowledged its
report would otherwise forget it: the chain may have applied it, and nobody would ever
report it. So the submitter's `record` hook appends each signed envelope, with the
mined result and its assignment, to `<data dir>/pooler/<cert name>-journal.jsonl` and
fsyncs it *before* the envelope is sent. At the next start the agent follows every entry
not yet reported by its transaction hash (`reconcile`: the same envelope is sent again
while it can still apply, never a new one) and reports its real outcome.

The file is a log of JSON lines, crash-safe by construction: an entry is one appended,
fsynced line (`{"sent": {...}}`), its acknowledgement another (`{"reported": hash}`); a
line torn by a crash is skipped when the file is read, and the file is rewritten
(temporary file, fsync, rename) without it at every start and when it grows. A reported
entry is kept until the saved assignment cursor covers its assignment, so a restarted
agent that is sent the assignment again knows it was worked and does not mine it twice.

Everything in it is public: signed envelopes (what the network sees anyway), hashes,
nonces, farmers' public addresses, block data. No secret key is ever written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kalepool.chain import SignedTx
from pooler_agent.assignment import Assignment
from pooler_agent.work_manager import MinedWork
from pooler_agent.work_submitter import WorkResult, WorkStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One work envelope that was (or was about to be) sent, and what it proves."""

    assignment: Assignment
    nonce: int
    hash: bytes
    zeros: int
    hashes: int
    tx_hash: str
    envelope_xdr: str
    channel: str  # the account that pays the fee (the envelope's source)
    max_time: int  # the envelope's time bound (chain time): it cannot apply after this
    submitted_at: float  # wall time (Unix) it was recorded, just before the first send
    reported: bool = False  # the pool acknowledged its final report

    @property
    def key(self) -> tuple[str, int]:
        return self.assignment.key

    @classmethod
    def of(cls, mined: MinedWork, tx: SignedTx, submitted_at: float) -> JournalEntry:
        return cls(
            assignment=mined.assignment,
            nonce=mined.nonce,
            hash=mined.hash,
            zeros=mined.zeros,
            hashes=mined.hashes,
            tx_hash=tx.hash,
            envelope_xdr=tx.envelope_xdr,
            channel=tx.source,
            max_time=tx.max_time,
            submitted_at=submitted_at,
        )

    def to_json(self) -> dict[str, Any]:
        a = self.assignment
        return {
            "assignment": {
                "farmer_address": a.farmer_address,
                "block_index": a.block_index,
                "entropy": a.entropy.hex(),
                "stake_stroops": a.stake_stroops,
                "plant_ledger": a.plant_ledger,
                "block_opened_at": a.block_opened_at,
                "work_deadline": a.work_deadline,
                "cursor": a.cursor,
                "planting_id": a.planting_id,
                "farmer_id": a.farmer_id,
            },
            "nonce": self.nonce,
            "hash": self.hash.hex(),
            "zeros": self.zeros,
            "hashes": self.hashes,
            "tx_hash": self.tx_hash,
            "envelope_xdr": self.envelope_xdr,
            "channel": self.channel,
            "max_time": self.max_time,
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        """Rebuild an entry; ValueError (or KeyError, TypeError) for a malformed one."""
        a = data["assignment"]
        deadline = a.get("work_deadline")
        assignment = Assignment(
            farmer_address=str(a["farmer_address"]),
            block_index=int(a["block_index"]),
            entropy=bytes.fromhex(a["entropy"]),
            stake_stroops=int(a["stake_stroops"]),
            plant_ledger=int(a["plant_ledger"]),
            block_opened_at=float(a["block_opened_at"]),
            work_deadline=None if deadline is None else float(deadline),
            cursor=int(a["cursor"]),
            planting_id=str(a["planting_id"]),
            farmer_id=str(a["farmer_id"]),
        )
        return cls(
            assignment=assignment,
            nonce=int(data["nonce"]),
            hash=bytes.fromhex(data["hash"]),
            zeros=int(data["zeros"]),
            hashes=int(data["hashes"]),
            tx_hash=str(data["tx_hash"]),
            envelope_xdr=str(data["envelope_xdr"]),
            channel=str(data["channel"]),
            max_time=int(data["max_time"]),
            submitted_at=float(data["submitted_at"]),
        )

    def pending_result(self, network_passphrase: str) -> WorkResult:
        """The work as a PENDING result, with its envelope to follow by hash.

        ValueError when the stored envelope is not a signed transaction."""
        envelope = SignedTx.from_envelope(self.envelope_xdr, network_passphrase)
        if envelope.hash != self.tx_hash:
            raise ValueError(f"the stored envelope's hash is not {self.tx_hash}")
        return WorkResult(
            assignment=self.assignment,
            status=WorkStatus.PENDING,
            nonce=self.nonce,
            hash=self.hash,
            zeros=self.zeros,
            hashes=self.hashes,
            tx_hash=self.tx_hash,
            channel=self.channel,
            submitted_at=self.submitted_at,
            message="sent before a restart: following it by hash",
            envelope=envelope,
        )


class WorkJournal:
    """The journal file and its entries in memory.

    `covered()` returns the saved assignment cursor (entries reported and covered by it
    are dropped when the file is rewritten). `record()` and `reported()` write before
    they return; both run the disk work in a thread so the event loop never waits on fsync.
    """

    def __init__(
        self,
        path: Path,
        *,
        covered: Callable[[], int] = lambda: 0,
        rewrite_after: int = 256,
    ) -> None:
        self.path = path
        self.covered = covered
        self.rewrite_after = rewrite_after
        self._entries: dict[str, JournalEntry] = {}  # tx hash -> entry, in order written
        self._lines = 0  # lines in the file now
        self._lock = asyncio.Lock()
        self._load()
        self._rewrite()

    # ---- reading ----------------------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        torn = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if "sent" in item:
                    entry = JournalEntry.from_json(item["sent"])
                    self._entries[entry.tx_hash] = entry
                elif "reported" in item:
                    tx_hash = str(item["reported"])
                    if tx_hash in self._entries:
                        self._entries[tx_hash] = replace(self._entries[tx_hash], reported=True)
                else:
                    raise ValueError("neither sent nor reported")
            except (ValueError, KeyError, TypeError, AttributeError):
                torn += 1
        if torn:
            log.warning("work journal %s: %d unreadable lines skipped", self.path, torn)

    @property
    def unreported(self) -> list[JournalEntry]:
        """Entries whose final report the pool has not acknowledged: to follow and report."""
        return [e for e in self._entries.values() if not e.reported]

    @property
    def keys(self) -> set[tuple[str, int]]:
        """Every (farmer, block) with an envelope journaled: never mined again."""
        return {e.key for e in self._entries.values()}

    def entry(self, tx_hash: str) -> JournalEntry | None:
        return self._entries.get(tx_hash)

    # ---- writing ----------------------------------------------------------------------

    async def record(self, mined: MinedWork, tx: SignedTx) -> None:
        """The submitter's `record` hook: the envelope is on disk before it is sent (an
        OSError here means it is not sent)."""
        entry = JournalEntry.of(mined, tx, time.time())
        async with self._lock:
            await asyncio.to_thread(self._append, {"sent": entry.to_json()})
            self._entries[entry.tx_hash] = entry

    async def reported(self, tx_hash: str) -> None:
        """The pool acknowledged the final report of this envelope's work."""
        entry = self._entries.get(tx_hash)
        if entry is None or entry.reported:
            return
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, {"reported": tx_hash})
                self._entries[tx_hash] = replace(entry, reported=True)
                if self._lines > self.rewrite_after and self._lines > 2 * len(self._needed()):
                    await asyncio.to_thread(self._rewrite)
            except OSError as exc:
                # The entry stays open: the next start reports it again (harmless).
                log.warning(
                    "work journal %s: cannot note %s as reported (%s)", self.path, tx_hash, exc
                )

    def _append(self, item: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps(item, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1

    def _needed(self) -> dict[str, JournalEntry]:
        """The entries worth keeping: every unreported one, and a reported one only while
        its assignment may come again (its cursor not yet saved, its block the newest)."""
        covered = self.covered()
        newest = max((e.assignment.block_index for e in self._entries.values()), default=0)
        return {
            h: e
            for h, e in self._entries.items()
            if not e.reported
            or (e.assignment.cursor > covered and e.assignment.block_index >= newest)
        }

    def _rewrite(self) -> None:
        """Write the entries still needed to a new file and rename it over the old one."""
        self._entries = self._needed()
        if not self._entries and not self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        lines = []
        for entry in self._entries.values():
            lines.append(json.dumps({"sent": entry.to_json()}, separators=(",", ":")))
            if entry.reported:
                lines.append(json.dumps({"reported": entry.tx_hash}, separators=(",", ":")))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, "".join(line + "\n" for line in lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
        self._lines = len(lines)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
