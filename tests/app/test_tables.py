"""Tables of the API's messages: KALE amounts, failures with their cause, plain rows."""

from __future__ import annotations

import datetime as dt
import io

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from kalepool.amounts import exact_kale, format_kale
from kalepool.app.tables import (
    BLOCK_FIELDS,
    block_failures,
    block_row,
    blocks_table,
    farmer_row,
    farmers_table,
    format_age,
    format_rate,
    ledger_row,
    payout_summary,
    pooler_row,
    poolers_table,
    short_kale,
    write_csv,
)
from kalepool.v1 import common_pb2, pool_pb2, records_pb2

KALE = 10_000_000
FARMER = "1f0c5a52-8a5e-4ac8-9a52-3d6b7b2f4e11"
POOLER = "7d2b9e11-0c1e-4f55-a2b4-5b8a0c6d2e90"
ADDRESS = "GBZXN7PIRZGNMHGA7MUUUF4GWPY5AYPV6LY4UV2GL6VJGIQRXFDNMADI"


def render(table: Table, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def by_first_cell(text: str) -> dict[str, str]:
    """The body lines of a rendered table by their first cell."""
    return {line.split()[0]: line for line in text.splitlines() if line.strip()}


def stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def test_kale_amounts_are_exact_to_the_stroop() -> None:
    assert format_kale(0) == "0"
    assert format_kale(5 * KALE) == "5"
    assert format_kale(12_345 * KALE + 5_000_000) == "12,345.5"
    assert format_kale(1) == "0.0000001"
    assert format_kale(-3 * KALE - 1) == "-3.0000001"
    # In a table, from 1 KALE up people read hundredths.
    assert short_kale(-3 * KALE - 1) == "-3"
    assert short_kale(18_912_499_998) == "1,891.25"
    assert short_kale(KALE + 49_999) == "1" and short_kale(KALE + 50_000) == "1.01"
    assert short_kale(9_999_999) == "0.9999999"
    assert exact_kale(-1) == "-0.0000001"
    assert exact_kale(25 * KALE // 10) == "2.5000000"
    assert exact_kale(0) == "0.0000000"


def test_rates_and_ages() -> None:
    assert format_rate(812) == "812 H/s"
    assert format_rate(3_410_000) == "3.41 MH/s"
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert format_age(Timestamp(), now) == "never"
    assert format_age(stamp(int(now.timestamp()) - 65), now) == "1m05s ago"


def _summary(index: int, status: int, **counts: int) -> pool_pb2.BlockSummary:
    return pool_pb2.BlockSummary(
        block_index=index,
        status=status,  # type: ignore[arg-type]
        opened_at=stamp(1_750_000_000),
        total_farmers=3,
        counts=pool_pb2.CycleCounts(**counts),
        total_staked_stroops=15 * KALE,
        total_reward_stroops=1_234_567,
        best_zeros=7,
    )


def test_blocks_table_shows_the_cycle_and_failures_with_their_cause() -> None:
    completed = _summary(
        41,
        pool_pb2.BLOCK_STATUS_COMPLETED,
        plants_succeeded=3,
        works_succeeded=2,
        works_failed=1,
        harvests_succeeded=2,
    )
    active = _summary(42, pool_pb2.BLOCK_STATUS_ACTIVE, plants_succeeded=3)
    late = common_pb2.Failure(
        code=common_pb2.FAILURE_CODE_WORK_LATE,
        fault=common_pb2.FAULT_PARTY_POOLER,
        message="no work before the deadline",
    )
    block = pool_pb2.GetBlockResponse(
        block=completed,
        works=[
            records_pb2.WorkEvent(
                block_index=41,
                farmer_id=FARMER,
                pooler_id=POOLER,
                status=records_pb2.EVENT_STATUS_FAILED,
                failure=late,
            ),
            records_pb2.WorkEvent(
                block_index=41, farmer_id=FARMER, status=records_pb2.EVENT_STATUS_SUCCEEDED
            ),
        ],
        harvests=[
            # Nobody's fault (asked too early, retried): not shown as a failure.
            records_pb2.HarvestEvent(
                block_index=41,
                status=records_pb2.EVENT_STATUS_FAILED,
                failure=common_pb2.Failure(
                    code=common_pb2.FAILURE_CODE_HARVEST_NOT_READY,
                    fault=common_pb2.FAULT_PARTY_NONE,
                ),
            )
        ],
    )
    notes = block_failures(block)
    assert [(n.stage, n.cause) for n in notes] == [("work", "work_late (pooler)")]
    assert notes[0].describe() == (
        f"block 41 work failed for farmer {FARMER}: work_late (pooler): no work before the deadline"
    )

    text = render(blocks_table([active, completed], {41: notes}))
    lines = by_first_cell(text)
    assert "completed" in lines["41"] and "active" in lines["42"]
    assert "2 ✗1" in lines["41"]  # worked: 2 succeeded, 1 failed
    assert "0.1234567" in lines["41"] and "15" in lines["41"]  # reward and stake in KALE
    # Failures are listed under the table, with their cause.
    assert "block 41 failures: work: work_late (pooler)" in text
    assert "06-15 15:06:40" in lines["42"]
    assert " 7 " in lines["42"]  # best zeros
    assert "failures" not in render(blocks_table([completed]))
    # Narrow (an 80-column terminal): every figure is still whole.
    narrow = by_first_cell(render(blocks_table([active, completed], {41: notes}), width=100))
    assert "2 ✗1" in narrow["41"] and "0.1234567" in narrow["41"]


def test_plain_rows_keep_stroops_and_full_ids() -> None:
    summary = _summary(41, pool_pb2.BLOCK_STATUS_HARVESTING, plants_succeeded=3)
    row = block_row(summary)
    assert row["total_reward_stroops"] == 1_234_567 and row["status"] == "harvesting"
    assert row["opened_at"] == "2025-06-15T15:06:40Z" and row["plant_completed_at"] == ""
    out = io.StringIO()
    write_csv([row], out)
    header, line, *rest = out.getvalue().splitlines()
    assert header.split(",") == list(BLOCK_FIELDS) and not rest
    assert ",1234567," in line
    empty = io.StringIO()
    write_csv([], empty, BLOCK_FIELDS)
    assert empty.getvalue().splitlines() == [",".join(BLOCK_FIELDS)]

    farmer = pool_pb2.Farmer(
        farmer_id=FARMER,
        pooler_id=POOLER,
        custodial_address=ADDRESS,
        payout_address=ADDRESS,
        stake_bps=2500,
        status=common_pb2.FARMER_STATUS_ACTIVE,
        balance_stroops=-1,
    )
    assert farmer_row(farmer)["custodial_address"] == ADDRESS
    assert farmer_row(farmer)["balance_stroops"] == -1
    entry = records_pb2.LedgerEntry(
        farmer_id=FARMER, kind=records_pb2.LEDGER_ENTRY_KIND_STAKE, amount_stroops=-5 * KALE
    )
    assert ledger_row(entry)["kind"] == "stake" and ledger_row(entry)["amount_stroops"] == -5 * KALE


def test_farmers_table_in_kale_with_pooler_names() -> None:
    farmer = pool_pb2.Farmer(
        farmer_id=FARMER,
        pooler_id=POOLER,
        custodial_address=ADDRESS,
        payout_address=ADDRESS,
        stake_bps=2500,
        status=common_pb2.FARMER_STATUS_PENDING_FUNDING,
        balance_stroops=105 * KALE // 10,
    )
    text = render(farmers_table([farmer], {POOLER: "rig-east"}))
    row = next(line for line in text.splitlines() if FARMER in line)
    assert "rig-east" in row and "pending funding" in row and "25%" in row
    assert "10.5" in row and "GBZXN…MADI" in row
    assert POOLER[:8] in render(farmers_table([farmer]))


def test_poolers_table_with_heartbeat_figures() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    beat = stamp(int(now.timestamp()) - 4)
    pooler = pool_pb2.Pooler(
        pooler_id=POOLER,
        name="rig-east",
        status=common_pb2.POOLER_STATUS_ACTIVE,
        current_farmers=2,
        max_farmers=10,
        last_seen_at=beat,
    )
    quiet = pool_pb2.Pooler(pooler_id=FARMER, name="rig-west", max_farmers=5)
    stats = pool_pb2.GetPoolerStatsResponse(
        pooler=pooler,
        blocks=3,
        counts=pool_pb2.CycleCounts(works_succeeded=5, works_failed=1),
        total_reward_stroops=2 * KALE,
        stream_connected=True,
        last_heartbeat_at=beat,
        capacity=8,
        hashes_per_second=2_500_000,
    )
    text = render(poolers_table([pooler, quiet], {POOLER: stats}, now=now))
    east = next(line for line in text.splitlines() if "rig-east" in line)
    west = next(line for line in text.splitlines() if "rig-west" in line)
    assert "2/10" in east and " 4s " in east and " yes " in east
    assert "2.50 MH/s" in east and "5 ✗1" in east
    assert "never" in west and "?" in west
    assert pooler_row(pooler, stats)["hashes_per_second"] == 2_500_000
    assert "hash rate" not in render(poolers_table([pooler], now=now))


def test_payout_summary_names_the_outcome() -> None:
    paid = records_pb2.Payout(
        payout_id="p1",
        amount_stroops=3 * KALE,
        destination_address=ADDRESS,
        transaction=common_pb2.TransactionRef(
            tx_hash="ab" * 32, status=common_pb2.TX_STATUS_SUCCESS, ledger=812
        ),
    )
    assert payout_summary(paid) == (
        f"payout p1 of 3 KALE to {ADDRESS}: success in ledger 812 (tx {'ab' * 32})"
    )
    failed = records_pb2.Payout(
        payout_id="p2",
        amount_stroops=KALE,
        destination_address=ADDRESS,
        transaction=common_pb2.TransactionRef(status=common_pb2.TX_STATUS_FAILED),
        failure=common_pb2.Failure(
            code=common_pb2.FAILURE_CODE_TRUSTLINE_MISSING,
            fault=common_pb2.FAULT_PARTY_FARMER,
            message="the payout address has no KALE trustline",
        ),
    )
    assert payout_summary(failed).endswith(
        "failed: trustline_missing (farmer): the payout address has no KALE trustline"
    )
