"""Saving and restoring the devnet chain (`--state PATH`): one JSON file, written atomically.

Ledger entries, headers, transactions and events are stored as the XDR the RPC serves,
so a restored chain answers exactly as before the restart.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from stellar_sdk import xdr as stellar_xdr

from kale_devnet import txn
from kale_devnet.chain import Chain, EventRecord, LedgerRecord, TxRecord
from kale_devnet.config import DevnetConfig
from kale_devnet.ledger import Entry, is_temporary, key_of

FORMAT = "kale-pool-devnet-state"
VERSION = 1


class StateFileError(ValueError):
    """The state file cannot be read as a devnet state."""


def dump(chain: Chain) -> dict[str, Any]:
    entries = []
    for kb, entry in chain.state.entries.items():
        entries.append([entry.ledger_entry_b64, entry.live_until, chain.state.is_temporary(kb)])
    return {
        "format": FORMAT,
        "version": VERSION,
        "network_passphrase": chain.identity.network_passphrase,
        "latest": chain.latest.seq,
        "fee_pool": chain.fee_pool,
        "pending_advance": chain.pending_advance,
        "clock_offset": chain.clock_offset,
        "bucket_hash": chain.bucket_hash.hex(),
        "ledgers": [
            {**asdict(rec), "hash": rec.hash.hex(), "meta_b64": None}
            for rec in chain.ledgers.values()
        ],
        "entries": entries,
        # Records hold only strings, numbers and lists of strings: their __dict__ is JSON
        # as it stands (asdict's deep copies would double the time of every save).
        "transactions": [tx.__dict__ for tx in chain.txs.values()],
        "events": [ev.__dict__ for ev in chain.events],
        "pending": [frame.b64 for frame in chain.pending],
    }


def serialize(chain: Chain) -> str:
    return json.dumps(dump(chain), separators=(",", ":"))


def save(chain: Chain, path: Path) -> None:
    """Write the state atomically: a temporary file in the same folder, then a rename."""
    write(serialize(chain), path)


def write(data: str, path: Path) -> None:
    """Atomically replace `path` with `data` (fsync, rename, fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(config: DevnetConfig, path: Path) -> Chain:
    """Rebuild a chain from a state file (StateFileError if it is not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StateFileError(f"cannot read devnet state {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(f"{path} is not a kale-pool devnet state file")
    if data.get("version") != VERSION:
        raise StateFileError(f"{path} has state version {data.get('version')}, expected {VERSION}")
    chain = Chain(config, genesis=False)
    if data.get("network_passphrase") != chain.identity.network_passphrase:
        raise StateFileError(f"{path} belongs to another network")
    try:
        for raw, live_until, temporary in data["entries"]:
            le = stellar_xdr.LedgerEntry.from_xdr(raw)
            kb = key_of(le.data).to_xdr_bytes()
            chain.state.set(
                kb,
                Entry(le.data, le.last_modified_ledger_seq.uint32, live_until),
                bool(temporary) or is_temporary(key_of(le.data)),
            )
        for rec in data["ledgers"]:
            chain.ledgers[rec["seq"]] = LedgerRecord(**{**rec, "hash": bytes.fromhex(rec["hash"])})
        for tx in data["transactions"]:
            chain.txs[tx["hash"]] = TxRecord(**tx)
        chain.events = deque(EventRecord(**ev) for ev in data["events"])
        chain.fee_pool = int(data["fee_pool"])
        chain.pending_advance = int(data["pending_advance"])
        chain.clock_offset = int(data["clock_offset"])
        chain.bucket_hash = bytes.fromhex(data["bucket_hash"])
        chain._latest = chain.ledgers[int(data["latest"])]
        pending = [txn.parse(b64, chain.identity.network_id) for b64 in data["pending"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"{path} is damaged: {exc}") from None
    chain.register_farm_code()  # a farm upgraded before the restart runs on
    for frame in pending:
        chain._enqueue(frame)
    return chain
