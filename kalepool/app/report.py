"""`kale-pool report --out DIR`: the pool's history as CSV files and PNG charts.

Everything is read from the pool's API (`ListBlocks` and `GetBlock` for every block,
`ListFarmers`, `GetFarmerBalance` and `ListFarmerLedger` for every farmer), so a report
says exactly what the API says:

- `blocks.csv`: one row per block (the block summary, amounts in stroops);
- `farmers.csv`: one row per farmer with its balance figures (stroops);
- `ledger.csv`: every balance ledger entry of every farmer, oldest first (stroops);
- `rewards.png`, `participation.png`, `zeros.png`, `success.png`, `farmers.png`:
  rewards per block, planted/worked/harvested per block, the zeros of every work per
  block, success rates per block, each farmer's cumulative rewards.

Charts are drawn with matplotlib's Agg renderer straight into files: no display needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kalepool.amounts import STROOPS_PER_KALE
from kalepool.app.commands import list_farmers, list_poolers
from kalepool.app.operator import OperatorClient
from kalepool.app.tables import (
    BLOCK_FIELDS,
    LEDGER_FIELDS,
    Cell,
    block_row,
    farmer_row,
    ledger_row,
    write_csv,
)
from kalepool.v1 import common_pb2, pool_pb2, records_pb2

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

T = TypeVar("T")

# Concurrent calls while reading the history: enough to be quick, few enough to leave
# the pool (and the chain reads some calls make) to its real work.
_CONCURRENCY = 8
# Farmers drawn one by one in the cumulative rewards chart; the rest are summed.
_FARMER_LINES = 8

CHARTS = ("rewards.png", "participation.png", "zeros.png", "success.png", "farmers.png")
FARMER_BALANCE_FIELDS = (
    "available_stroops",
    "staked_stroops",
    "total_reward_stroops",
    "total_paid_out_stroops",
)


@dataclass
class History:
    """What the report is made of, as the API returned it."""

    blocks: list[pool_pb2.GetBlockResponse]  # oldest first
    farmers: list[pool_pb2.Farmer]  # oldest first
    balances: dict[str, pool_pb2.GetFarmerBalanceResponse]
    ledger: dict[str, list[records_pb2.LedgerEntry]]  # per farmer, oldest first
    pooler_names: dict[str, str]


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def read_history(op: OperatorClient, last: int = 0) -> History:
    """Page through the pool's API: every block (or the last `last`), every farmer with
    its balance and ledger, the poolers' names."""
    indexes: list[int] = []
    token = ""
    while True:
        page = await op.pool.ListBlocks(
            pool_pb2.ListBlocksRequest(
                pagination=common_pb2.Pagination(page_size=500, page_token=token)
            ),
            timeout=op.timeout,
        )
        indexes.extend(b.block_index for b in page.blocks)
        token = page.next_page_token
        if not token or (last and len(indexes) >= last):
            break
    if last:
        indexes = indexes[:last]

    def get_block(index: int) -> Callable[[], Awaitable[pool_pb2.GetBlockResponse]]:
        return lambda: op.pool.GetBlock(
            pool_pb2.GetBlockRequest(block_index=index), timeout=op.timeout
        )

    blocks = await _bounded([get_block(i) for i in sorted(indexes)])
    farmers = await list_farmers(op)

    def balance(farmer_id: str) -> Callable[[], Awaitable[pool_pb2.GetFarmerBalanceResponse]]:
        return lambda: op.pool.GetFarmerBalance(
            pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer_id), timeout=op.timeout
        )

    def ledger(farmer_id: str) -> Callable[[], Awaitable[list[records_pb2.LedgerEntry]]]:
        return lambda: _ledger(op, farmer_id)

    balances = await _bounded([balance(f.farmer_id) for f in farmers])
    ledgers = await _bounded([ledger(f.farmer_id) for f in farmers])
    return History(
        blocks=blocks,
        farmers=farmers,
        balances={f.farmer_id: b for f, b in zip(farmers, balances, strict=True)},
        ledger={f.farmer_id: e for f, e in zip(farmers, ledgers, strict=True)},
        pooler_names={p.pooler_id: p.name for p in await list_poolers(op)},
    )


async def _ledger(op: OperatorClient, farmer_id: str) -> list[records_pb2.LedgerEntry]:
    entries: list[records_pb2.LedgerEntry] = []
    token = ""
    while True:
        page = await op.pool.ListFarmerLedger(
            pool_pb2.ListFarmerLedgerRequest(
                farmer_id=farmer_id,
                pagination=common_pb2.Pagination(page_size=500, page_token=token),
            ),
            timeout=op.timeout,
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries[::-1]  # the API pages newest first


# --- CSV ----------------------------------------------------------------------------------


def blocks_rows(history: History) -> list[dict[str, Cell]]:
    """`blocks.csv`: the summary of each block, oldest first."""
    return [block_row(b.block) for b in history.blocks]


def farmers_rows(history: History) -> list[dict[str, Cell]]:
    """`farmers.csv`: each farmer with its pooler's name and its balance figures."""
    rows = []
    for f in history.farmers:
        b = history.balances[f.farmer_id]
        row = farmer_row(f)
        row["pooler_name"] = history.pooler_names.get(f.pooler_id, "")
        row |= {
            "available_stroops": b.available_stroops,
            "staked_stroops": b.staked_stroops,
            "total_reward_stroops": b.total_reward_stroops,
            "total_paid_out_stroops": b.total_paid_out_stroops,
        }
        rows.append(row)
    return rows


def ledger_rows(history: History) -> list[dict[str, Cell]]:
    """`ledger.csv`: every entry, farmer by farmer (in `farmers.csv`'s order), oldest first."""
    return [ledger_row(e) for f in history.farmers for e in history.ledger[f.farmer_id]]


FARMERS_HEADER = (*farmer_row(pool_pb2.Farmer()), "pooler_name", *FARMER_BALANCE_FIELDS)


# --- charts -------------------------------------------------------------------------------


def _figure(title: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    # About 640x300 pixels: small files, readable on a page.
    fig = Figure(figsize=(6.4, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    return fig, ax


def _kale(stroops: int) -> float:
    return stroops / STROOPS_PER_KALE


def _empty(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no blocks yet", ha="center", va="center", transform=ax.transAxes)


def _block_axis(ax: Axes, indexes: Sequence[int]) -> None:
    ax.set_xlabel("block")
    if len(indexes) <= 20:
        ax.set_xticks(list(indexes))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _integer_y(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _rewards(history: History, path: Path) -> None:
    fig, ax = _figure("Rewards per block")
    indexes = [b.block.block_index for b in history.blocks]
    if indexes:
        ax.bar(indexes, [_kale(b.block.total_reward_stroops) for b in history.blocks])
        _block_axis(ax, indexes)
    else:
        _empty(ax)
    ax.set_ylabel("KALE")
    fig.savefig(path)


def _participation(history: History, path: Path) -> None:
    fig, ax = _figure("Farmers planted, worked and harvested per block")
    indexes = [b.block.block_index for b in history.blocks]
    if indexes:
        width = 0.27
        stages = (
            ("planted", [b.block.counts.plants_succeeded for b in history.blocks], -width),
            ("worked", [b.block.counts.works_succeeded for b in history.blocks], 0.0),
            ("harvested", [b.block.counts.harvests_succeeded for b in history.blocks], width),
        )
        for label, values, shift in stages:
            ax.bar([i + shift for i in indexes], values, width, label=label)
        failed = [
            b.block.counts.plants_failed
            + b.block.counts.works_failed
            + b.block.counts.harvests_failed
            for b in history.blocks
        ]
        marks = [(i, n) for i, n in zip(indexes, failed, strict=True) if n]
        if marks:
            ax.plot(*zip(*marks, strict=True), "x", color="red", label="failed", markersize=8)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _block_axis(ax, indexes)
    else:
        _empty(ax)
    ax.set_ylabel("farmers")
    fig.savefig(path)


def _zeros(history: History, path: Path) -> None:
    fig, ax = _figure("Leading zeros of each work per block")
    indexes = [b.block.block_index for b in history.blocks]
    points = [
        (w.block_index, w.zeros)
        for b in history.blocks
        for w in b.works
        if w.status == records_pb2.EVENT_STATUS_SUCCEEDED
    ]
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, alpha=0.6, label="work")
        best: dict[int, int] = {}
        for index, zeros in points:
            best[index] = max(zeros, best.get(index, 0))
        ax.plot(sorted(best), [best[i] for i in sorted(best)], "-", label="best")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _block_axis(ax, indexes)
        _integer_y(ax)
    elif indexes:
        ax.text(0.5, 0.5, "no work recorded", ha="center", va="center", transform=ax.transAxes)
    else:
        _empty(ax)
    ax.set_ylabel("zeros")
    fig.savefig(path)


def _rate(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def _success(history: History, path: Path) -> None:
    fig, ax = _figure("Success rates per block")
    indexes = [b.block.block_index for b in history.blocks]
    if indexes:
        counts = [b.block.counts for b in history.blocks]
        series = (
            (
                "plants",
                [_rate(c.plants_succeeded, c.plants_succeeded + c.plants_failed) for c in counts],
            ),
            (
                "works",
                [_rate(c.works_succeeded, c.works_succeeded + c.works_failed) for c in counts],
            ),
            (
                "harvests",
                [
                    _rate(c.harvests_succeeded, c.harvests_succeeded + c.harvests_failed)
                    for c in counts
                ],
            ),
        )
        for label, values in series:
            ax.plot(indexes, values, "o-", label=label, markersize=4)
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _block_axis(ax, indexes)
    else:
        _empty(ax)
    ax.set_ylabel("% succeeded")
    fig.savefig(path)


def cumulative_rewards(history: History) -> tuple[list[int], dict[str, list[int]]]:
    """The blocks over (not active), oldest first, and per farmer harvested its
    cumulative reward (stroops) after each of them, from the blocks' harvest records."""
    over = [b for b in history.blocks if b.block.status != pool_pb2.BLOCK_STATUS_ACTIVE]
    per_block: list[dict[str, int]] = []
    for b in over:
        got: dict[str, int] = {}
        for h in b.harvests:
            if h.status == records_pb2.EVENT_STATUS_SUCCEEDED:
                got[h.farmer_id] = got.get(h.farmer_id, 0) + h.reward_stroops
        per_block.append(got)
    farmers = {f for got in per_block for f in got}
    lines: dict[str, list[int]] = {}
    for farmer_id in farmers:
        total, line = 0, []
        for got in per_block:
            total += got.get(farmer_id, 0)
            line.append(total)
        lines[farmer_id] = line
    return [b.block.block_index for b in over], lines


def _farmers_chart(history: History, path: Path) -> None:
    fig, ax = _figure("Cumulative rewards per farmer")
    indexes, lines = cumulative_rewards(history)
    if lines:
        ranked = sorted(lines, key=lambda f: (-lines[f][-1], f))
        for farmer_id in ranked[:_FARMER_LINES]:
            ax.plot(
                indexes,
                [_kale(v) for v in lines[farmer_id]],
                "o-",
                markersize=3,
                label=farmer_id[:8],
            )
        if len(ranked) > _FARMER_LINES:
            rest = sum(lines[f][-1] for f in ranked[_FARMER_LINES:])
            ax.set_title(
                f"Cumulative rewards per farmer (top {_FARMER_LINES};"
                f" {len(ranked) - _FARMER_LINES} more: {_kale(rest):,.2f} KALE)",
                fontsize=11,
            )
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _block_axis(ax, indexes)
    else:
        ax.text(0.5, 0.5, "nothing harvested yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("KALE")
    fig.savefig(path)


# --- the report ---------------------------------------------------------------------------


def write_report(history: History, out: Path) -> list[Path]:
    """Write the CSV files and the charts into `out` (created if missing); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, rows, header in (
        ("blocks.csv", blocks_rows(history), BLOCK_FIELDS),
        ("farmers.csv", farmers_rows(history), FARMERS_HEADER),
        ("ledger.csv", ledger_rows(history), LEDGER_FIELDS),
    ):
        path = out / name
        with path.open("w", newline="") as handle:
            write_csv(rows, handle, header)
        written.append(path)
    for name, draw in zip(
        CHARTS, (_rewards, _participation, _zeros, _success, _farmers_chart), strict=True
    ):
        draw(history, out / name)
        written.append(out / name)
    return written


async def run_report(op: OperatorClient, out: Path, last: int = 0) -> tuple[History, list[Path]]:
    """Read the history through `op` and write the report into `out` (drawing is CPU work:
    it runs in a thread, off the event loop)."""
    history = await read_history(op, last)
    written = await asyncio.to_thread(write_report, history, out)
    return history, written
