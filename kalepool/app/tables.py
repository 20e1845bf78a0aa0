"""Tables of the pool's API messages: what `blocks`, `farmers`, `poolers`, the live view,
the report and `up --blocks` show.

Two forms of every record: a rich table for people (amounts in KALE, short addresses,
times in UTC) and a plain row (`*_row`: full ids and addresses, amounts as integer
stroops, times in ISO 8601) for CSV files and scripts. Both read the API's messages
only; nothing here talks to the pool.

Amounts are written by `kalepool.amounts` (with `short_kale` here, the table cells'
rounding) and the API's enums and times read through `kalepool.wire`; this module is
the one home for how the console shows them.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.table import Table
from rich.text import Text

from kalepool import wire
from kalepool.amounts import STROOPS_PER_KALE, format_kale
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from kalepool.wire import when

Cell = str | int


# --- amounts ------------------------------------------------------------------------------


def short_kale(stroops: int) -> str:
    """KALE for a table cell: rounded to the hundredth from 1 KALE up (`1,891.25`,
    `-3`), exact below (`0.0001234`). The exact figure is `format_kale`'s, and the
    plain rows' stroops."""
    magnitude = abs(stroops)
    if magnitude < STROOPS_PER_KALE:
        return format_kale(stroops)
    hundredths = (magnitude + 50_000) // 100_000  # to the nearest 0.01 KALE, half up
    whole, cents = divmod(hundredths, 100)
    decimals = f"{cents:02d}".rstrip("0")
    return ("-" if stroops < 0 else "") + f"{whole:,}" + (f".{decimals}" if decimals else "")


def format_rate(hashes_per_second: float) -> str:
    """A hash rate with an SI prefix: `812 H/s`, `3.41 MH/s`."""
    value = float(hashes_per_second)
    for prefix in ("", "k", "M", "G", "T"):
        if value < 1000 or prefix == "T":
            return f"{value:.0f} {prefix}H/s" if prefix == "" else f"{value:.2f} {prefix}H/s"
        value /= 1000
    raise AssertionError("unreachable")


# --- times --------------------------------------------------------------------------------


def format_time(stamp: Timestamp) -> str:
    """`2025-06-01 12:34:56` (UTC), or `—` when unset."""
    moment = when(stamp)
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _table(title: str | None) -> Table:
    """The tables' one look: a rule under the header, no vertical lines (narrow)."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )


def iso_time(stamp: Timestamp) -> str:
    """ISO 8601 in UTC for plain rows; empty when unset."""
    moment = when(stamp)
    return "" if moment is None else moment.isoformat().replace("+00:00", "Z")


def format_age(stamp: Timestamp, now: dt.datetime, *, suffix: str = " ago") -> str:
    """How long ago: `4s ago`, `12m05s ago`, `3h10m ago`; `never` when unset."""
    moment = when(stamp)
    if moment is None:
        return "never"
    return f"{format_span((now - moment).total_seconds())}{suffix}"


def format_span(seconds: float) -> str:
    """A duration, coarsely: `45s`, `4m05s`, `3h10m`, `2d4h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


# --- enums --------------------------------------------------------------------------------


def block_status(status: pool_pb2.BlockStatus.ValueType) -> str:
    """`active`, `harvesting`, `completed`, `failed`."""
    return _label(pool_pb2.BlockStatus.Name(status), "BLOCK_STATUS_")


def farmer_status(status: common_pb2.FarmerStatus.ValueType) -> str:
    """`pending funding`, `active`, `leaving`, `departed`."""
    return _label(common_pb2.FarmerStatus.Name(status), "FARMER_STATUS_")


def pooler_status(status: common_pb2.PoolerStatus.ValueType) -> str:
    """`active`, `disabled`."""
    return _label(common_pb2.PoolerStatus.Name(status), "POOLER_STATUS_")


def tx_status(status: common_pb2.TxStatus.ValueType) -> str:
    """`pending`, `success`, `failed`, `rejected`, `expired`."""
    return _label(common_pb2.TxStatus.Name(status), "TX_STATUS_")


def ledger_kind(kind: records_pb2.LedgerEntryKind.ValueType) -> str:
    """`reward`, `stake`, `payout`, ..."""
    return _label(records_pb2.LedgerEntryKind.Name(kind), "LEDGER_ENTRY_KIND_")


def fault_party(party: common_pb2.FaultParty.ValueType) -> str:
    """`farmer`, `pool`, `pooler`, `chain`, `none` (nobody's), or `unattributed` (unset)."""
    if party == common_pb2.FAULT_PARTY_UNSPECIFIED:
        return "unattributed"
    return _label(common_pb2.FaultParty.Name(party), "FAULT_PARTY_")


def failure_cause(failure: common_pb2.Failure) -> str:
    """`work_late (pooler)`: the cause and whose fault it was, in a few words."""
    code = wire.failure_label(failure.code).lower()
    if failure.contract_error:
        code += f" #{failure.contract_error}"
    return f"{code} ({fault_party(failure.fault)})"


def _label(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower().replace("_", " ")


BLOCK_STATUS_STYLE = {
    "active": "cyan",
    "harvesting": "yellow",
    "completed": "green",
    "failed": "red",
}
FARMER_STATUS_STYLE = {
    "pending funding": "yellow",
    "active": "green",
    "leaving": "magenta",
    "departed": "dim",
}


def short(address: str, head: int = 5, tail: int = 4) -> str:
    """`GABCD…WXYZ`: enough of a long address or id to tell it apart on screen."""
    if len(address) <= head + tail + 1:
        return address
    return f"{address[:head]}…{address[-tail:]}"


# --- failures -----------------------------------------------------------------------------


def is_failure(failure: common_pb2.Failure) -> bool:
    """Whether a failed record counts as a failure: not when it is nobody's fault
    (FAULT_PARTY_NONE: an outcome the protocol allows, such as a step asked too early
    and tried again; the farmer's outcome in that block is what comes of the next try).
    The one rule for the tables, the live view and `up --blocks`."""
    return failure.fault != common_pb2.FAULT_PARTY_NONE


@dataclass(frozen=True)
class FailureNote:
    """One failed plant, work or harvest of a block, with its cause."""

    block_index: int
    stage: str  # plant | work | harvest
    farmer_id: str
    pooler_id: str
    failure: common_pb2.Failure

    @property
    def cause(self) -> str:
        return failure_cause(self.failure)

    @property
    def fault(self) -> str:
        return fault_party(self.failure.fault)

    @property
    def attributed(self) -> bool:
        """It names whose fault it was."""
        return self.failure.fault != common_pb2.FAULT_PARTY_UNSPECIFIED

    def describe(self) -> str:
        """One line: `block 12 work failed for farmer 1a2b3c…: work_late (pooler): ...`."""
        text = f"block {self.block_index} {self.stage} failed for farmer {self.farmer_id}"
        text += f": {self.cause}"
        if self.failure.message:
            text += f": {self.failure.message}"
        return text


def block_failures(block: pool_pb2.GetBlockResponse) -> list[FailureNote]:
    """The failures recorded in a block, plants then works then harvests, each in the
    order recorded. Records that are nobody's fault are not failures (`is_failure`)."""
    notes: list[FailureNote] = []
    records: list[
        tuple[
            str,
            Iterable[records_pb2.PlantingEvent]
            | Iterable[records_pb2.WorkEvent]
            | Iterable[records_pb2.HarvestEvent],
        ]
    ] = [("plant", block.plantings), ("work", block.works), ("harvest", block.harvests)]
    for stage, events in records:
        for event in events:
            if event.status != records_pb2.EVENT_STATUS_FAILED or not is_failure(event.failure):
                continue
            notes.append(
                FailureNote(
                    event.block_index, stage, event.farmer_id, event.pooler_id, event.failure
                )
            )
    return notes


def summarize_failures(notes: Sequence[FailureNote]) -> str:
    """`work: work_late (pooler) x2; plant: insufficient_kale (farmer)`."""
    counted = Counter((n.stage, n.cause) for n in notes)
    parts = []
    for (stage, cause), count in counted.items():
        parts.append(f"{stage}: {cause}" + (f" x{count}" if count > 1 else ""))
    return "; ".join(parts)


# --- blocks -------------------------------------------------------------------------------


def _outcome(succeeded: int, failed: int) -> Text:
    text = Text(str(succeeded))
    if failed:
        text.append(f" ✗{failed}", style="red")
    return text


def blocks_table(
    summaries: Sequence[pool_pb2.BlockSummary],
    failures: Mapping[int, Sequence[FailureNote]] | None = None,
    *,
    title: str | None = "blocks",
) -> Table:
    """Per block: status, when it opened, farmers, planted, worked, harvested (✗ failed),
    best zeros, stake and reward in KALE. `failures` (block index -> notes) are listed
    under the table with their causes, one line per block (a column would be squeezed
    out on a narrow terminal)."""
    table = _table(title)
    table.add_column("block", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("opened UTC", no_wrap=True)
    table.add_column("farmers", justify="right", no_wrap=True)
    table.add_column("planted", justify="right", no_wrap=True)
    table.add_column("worked", justify="right", no_wrap=True)
    table.add_column("harvested", justify="right", no_wrap=True)
    table.add_column("best\nzeros", justify="right", no_wrap=True)
    table.add_column("staked\nKALE", justify="right", no_wrap=True)
    table.add_column("reward\nKALE", justify="right", no_wrap=True)
    for s in summaries:
        status = block_status(s.status)
        c = s.counts
        opened = when(s.opened_at)
        table.add_row(
            str(s.block_index),
            Text(status, style=BLOCK_STATUS_STYLE.get(status, "")),
            "—" if opened is None else opened.strftime("%m-%d %H:%M:%S"),
            str(s.total_farmers),
            _outcome(c.plants_succeeded, c.plants_failed),
            _outcome(c.works_succeeded, c.works_failed),
            _outcome(c.harvests_succeeded, c.harvests_failed),
            str(s.best_zeros) if s.best_zeros else "—",
            short_kale(s.total_staked_stroops),
            short_kale(s.total_reward_stroops),
        )
    lines = [
        f"block {s.block_index} failures: {summarize_failures(failures[s.block_index])}"
        for s in summaries
        if failures and failures.get(s.block_index)
    ]
    if lines:
        table.caption = Text("\n".join(lines), style="red")
        table.caption_justify = "left"
    return table


def block_row(s: pool_pb2.BlockSummary) -> dict[str, Cell]:
    """One block summary as a plain row (stroops, ISO times)."""
    c = s.counts
    return {
        "block_index": s.block_index,
        "pooler_id": s.pooler_id,
        "status": block_status(s.status),
        "opened_at": iso_time(s.opened_at),
        "total_farmers": s.total_farmers,
        "plants_succeeded": c.plants_succeeded,
        "plants_failed": c.plants_failed,
        "works_succeeded": c.works_succeeded,
        "works_failed": c.works_failed,
        "harvests_succeeded": c.harvests_succeeded,
        "harvests_failed": c.harvests_failed,
        "best_zeros": s.best_zeros,
        "total_staked_stroops": s.total_staked_stroops,
        "total_reward_stroops": s.total_reward_stroops,
        "plant_requested_at": iso_time(s.plant_requested_at),
        "plant_completed_at": iso_time(s.plant_completed_at),
        "work_completed_at": iso_time(s.work_completed_at),
        "harvest_completed_at": iso_time(s.harvest_completed_at),
    }


# --- farmers ------------------------------------------------------------------------------


def farmers_table(
    farmers: Sequence[pool_pb2.Farmer],
    pooler_names: Mapping[str, str] | None = None,
    *,
    title: str | None = "farmers",
    compact: bool = False,
) -> Table:
    """Per farmer: id (8 characters when `compact`: the live view), pooler, status, stake
    share, balance in KALE and, unless `compact`, its two addresses (shortened)."""
    names = pooler_names or {}
    table = _table(title)
    table.add_column("farmer", no_wrap=True)
    table.add_column("pooler", overflow="ellipsis", max_width=16)
    table.add_column("status", no_wrap=True)
    table.add_column("stake", justify="right", no_wrap=True)
    table.add_column("balance\nKALE", justify="right", no_wrap=True)
    if not compact:
        table.add_column("custodial", no_wrap=True)
        table.add_column("payout to", no_wrap=True)
    for f in farmers:
        status = farmer_status(f.status)
        row: list[str | Text] = [
            f.farmer_id[:8] if compact else f.farmer_id,
            names.get(f.pooler_id) or f.pooler_id[:8],
            Text(status, style=FARMER_STATUS_STYLE.get(status, "")),
            f"{f.stake_bps / 100:g}%",
            short_kale(f.balance_stroops),
        ]
        if not compact:
            row += [short(f.custodial_address), short(f.payout_address)]
        table.add_row(*row)
    return table


def farmer_row(f: pool_pb2.Farmer) -> dict[str, Cell]:
    """One farmer as a plain row."""
    return {
        "farmer_id": f.farmer_id,
        "pooler_id": f.pooler_id,
        "status": farmer_status(f.status),
        "stake_bps": f.stake_bps,
        "balance_stroops": f.balance_stroops,
        "custodial_address": f.custodial_address,
        "payout_address": f.payout_address,
        "created_at": iso_time(f.created_at),
        "funded_at": iso_time(f.funded_at),
        "left_at": iso_time(f.left_at),
    }


# --- poolers ------------------------------------------------------------------------------


def poolers_table(
    poolers: Sequence[pool_pb2.Pooler],
    stats: Mapping[str, pool_pb2.GetPoolerStatsResponse] | None = None,
    *,
    now: dt.datetime | None = None,
    title: str | None = "poolers",
    compact: bool = False,
) -> Table:
    """Per pooler: id (its first 8 characters when `compact`), name, status, farmers, last
    seen; with `stats` (pooler id -> GetPoolerStats) its stream, last heartbeat's hash rate
    and capacity, works and rewards."""
    moment = now or dt.datetime.now(dt.UTC)
    table = _table(title)
    table.add_column("pooler", no_wrap=True)
    table.add_column("name", overflow="ellipsis", max_width=16)
    table.add_column("status", no_wrap=True)
    table.add_column("farmers", justify="right", no_wrap=True)
    table.add_column("last\nseen", justify="right", no_wrap=True)
    if stats is not None:
        table.add_column("stream", no_wrap=True)
        table.add_column("hash\nrate", justify="right", no_wrap=True)
        table.add_column("can\nmine", justify="right", no_wrap=True)  # heartbeat capacity
        table.add_column("worked", justify="right", no_wrap=True)
        table.add_column("reward\nKALE", justify="right", no_wrap=True)
    for p in poolers:
        status = pooler_status(p.status)
        row: list[str | Text] = [
            p.pooler_id[:8] if compact else p.pooler_id,
            p.name,
            Text(status, style="green" if status == "active" else "red"),
            f"{p.current_farmers}/{p.max_farmers}",
            format_age(p.last_seen_at, moment, suffix=""),
        ]
        if stats is not None:
            st = stats.get(p.pooler_id)
            if st is None:
                row.extend(["?"] * 5)
            else:
                beat = when(st.last_heartbeat_at) is not None
                row.extend(
                    [
                        Text("yes", style="green")
                        if st.stream_connected
                        else Text("no", style="dim"),
                        format_rate(st.hashes_per_second) if beat else "—",
                        str(st.capacity) if beat else "—",
                        _outcome(st.counts.works_succeeded, st.counts.works_failed),
                        short_kale(st.total_reward_stroops),
                    ]
                )
        table.add_row(*row)
    return table


def pooler_row(
    p: pool_pb2.Pooler, st: pool_pb2.GetPoolerStatsResponse | None = None
) -> dict[str, Cell]:
    """One pooler (and its statistics, when given) as a plain row."""
    row: dict[str, Cell] = {
        "pooler_id": p.pooler_id,
        "name": p.name,
        "public_key": p.public_key,
        "status": pooler_status(p.status),
        "current_farmers": p.current_farmers,
        "max_farmers": p.max_farmers,
        "last_seen_at": iso_time(p.last_seen_at),
        "created_at": iso_time(p.created_at),
    }
    if st is not None:
        row |= {
            "stream_connected": int(st.stream_connected),
            "last_heartbeat_at": iso_time(st.last_heartbeat_at),
            "hashes_per_second": st.hashes_per_second,
            "capacity": st.capacity,
            "threads": st.threads,
            "mining_farmers": st.mining_farmers,
            "observed_block_index": st.observed_block_index,
            "agent_version": st.agent_version,
            "blocks": st.blocks,
            "works_succeeded": st.counts.works_succeeded,
            "works_failed": st.counts.works_failed,
            "total_reward_stroops": st.total_reward_stroops,
            "compensations_owed_stroops": st.compensations_owed_stroops,
        }
    return row


# --- ledger and payouts -------------------------------------------------------------------


def ledger_row(e: records_pb2.LedgerEntry) -> dict[str, Cell]:
    """One balance ledger entry as a plain row (signed stroops)."""
    return {
        "entry_id": e.entry_id,
        "farmer_id": e.farmer_id,
        "kind": ledger_kind(e.kind),
        "amount_stroops": e.amount_stroops,
        "balance_after_stroops": e.balance_after_stroops,
        "block_index": e.block_index,
        "tx_hash": e.tx_hash,
        "source_id": e.source_id,
        "created_at": iso_time(e.created_at),
    }


def payout_summary(p: records_pb2.Payout) -> str:
    """One line: `payout 1a2b… of 3 KALE to GABCD…WXYZ: success in ledger 812 (tx …)`."""
    state = tx_status(p.transaction.status)
    text = (
        f"payout {p.payout_id} of {format_kale(p.amount_stroops)} KALE"
        f" to {p.destination_address}: {state}"
    )
    if p.transaction.ledger:
        text += f" in ledger {p.transaction.ledger}"
    if p.transaction.tx_hash:
        text += f" (tx {p.transaction.tx_hash})"
    if p.HasField("failure"):
        text += f": {failure_cause(p.failure)}"
        if p.failure.message:
            text += f": {p.failure.message}"
    return text


# --- plain output -------------------------------------------------------------------------


def write_csv(rows: Sequence[Mapping[str, Cell]], out: IO[str], header: Sequence[str] = ()) -> None:
    """Rows as CSV with a header line (the first row's keys, or `header` when there are
    no rows, so an empty result still names its columns)."""
    fields = list(rows[0].keys()) if rows else list(header)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


# Column names of the plain rows, for a CSV with no rows.
BLOCK_FIELDS = tuple(block_row(pool_pb2.BlockSummary()))
FARMER_FIELDS = tuple(farmer_row(pool_pb2.Farmer()))
POOLER_FIELDS = tuple(pooler_row(pool_pb2.Pooler(), pool_pb2.GetPoolerStatsResponse()))
LEDGER_FIELDS = tuple(ledger_row(records_pb2.LedgerEntry()))
