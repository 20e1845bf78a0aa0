"""`kale-pool report` against a real pool that farmed a few blocks: the CSV files hold
exactly the API's figures, the charts are real PNG files.

With KALEPOOL_DOCS_IMAGES=DIR the run also leaves the documentation's pictures there:
the charts and an SVG of the live view watching the same blocks."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from kalepool.app.operator import OperatorClient
from kalepool.app.report import CHARTS, FARMERS_HEADER, History, cumulative_rewards
from kalepool.app.tables import BLOCK_FIELDS, LEDGER_FIELDS, block_row, farmer_row, ledger_row
from kalepool.app.view import ConsoleView, PoolWatch
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2
from tests.pool.conftest import KALE, PoolStage

from . import cycle
from .conftest import pool_address
from .test_commands import kale_pool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _strings(row: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in row.items()}


async def _ledger(pool: PoolStage, farmer_id: str) -> list[dict[str, str]]:
    got = await pool.operator().ListFarmerLedger(
        pool_pb2.ListFarmerLedgerRequest(
            farmer_id=farmer_id, pagination=common_pb2.Pagination(page_size=500)
        )
    )
    assert not got.next_page_token
    return [_strings(ledger_row(e)) for e in reversed(got.entries)]


async def test_the_report_holds_the_apis_figures(
    pool: PoolStage, operator_settings: Settings, tmp_path: Path
) -> None:
    empty = await kale_pool(operator_settings, "report", "--out", str(tmp_path / "empty"))
    assert empty.code == 0, empty.err
    assert empty.out.strip().endswith("0 blocks, 0 farmers, 0 ledger entries")
    assert (tmp_path / "empty" / "blocks.csv").read_text().strip() == ",".join(BLOCK_FIELDS)
    for name in CHARTS:
        assert (tmp_path / "empty" / name).read_bytes().startswith(PNG_SIGNATURE)

    watch = PoolWatch(
        lambda: OperatorClient(operator_settings, address=pool_address(pool), timeout=5.0)
    )
    await watch.poll()
    view = ConsoleView(watch, Console(file=io.StringIO()), live=True, network="devnet")

    pooler_id, key, farmers = await cycle.farmers(pool, 3)
    dest = await pool.stage.account(trust=True)
    # A fourth farmer, paid out to an account that trusts KALE, for the ledger's payouts.
    farmers.append(
        await pool.funded_farmer(
            pooler_id, stake_bps=5000, kale=10 * KALE, payout_address=dest.public_key
        )
    )
    for fail in ((), (farmers[1].farmer_id,), ()):
        await cycle.farm_block(pool, key, fail=fail)
        for event in await watch.poll():
            view.event(event.message, level=event.level)
    ran = await kale_pool(
        operator_settings, "farmer", "payout", farmers[3].farmer_id, "--amount", "2"
    )
    assert ran.code == 0, ran.err
    await watch.poll()

    out = tmp_path / "report"
    ran = await kale_pool(operator_settings, "report", "--out", str(out))
    assert ran.code == 0, ran.err
    op = pool.operator()

    # blocks.csv: oldest first, each row the block's summary as GetBlock answers it.
    listed = (await op.ListBlocks(pool_pb2.ListBlocksRequest())).blocks
    assert len(listed) == 4  # three farmed, the fourth open
    blocks = [
        await op.GetBlock(pool_pb2.GetBlockRequest(block_index=b.block_index))
        for b in reversed(listed)
    ]
    assert _csv(out / "blocks.csv") == [_strings(block_row(b.block)) for b in blocks]
    rewards = [int(r["total_reward_stroops"]) for r in _csv(out / "blocks.csv")]
    assert all(r > 0 for r in rewards[:3]) and rewards[3] == 0
    assert [int(r["works_failed"]) for r in _csv(out / "blocks.csv")][:3] == [0, 1, 0]

    # farmers.csv: each farmer with its pooler's name and GetFarmerBalance's figures.
    expected_farmers = []
    for f in (await op.ListFarmers(pool_pb2.ListFarmersRequest())).farmers:
        balance = await op.GetFarmerBalance(pool_pb2.GetFarmerBalanceRequest(farmer_id=f.farmer_id))
        row = _strings(farmer_row(f))
        row["pooler_name"] = "rig-east"
        row["available_stroops"] = str(balance.available_stroops)
        row["staked_stroops"] = str(balance.staked_stroops)
        row["total_reward_stroops"] = str(balance.total_reward_stroops)
        row["total_paid_out_stroops"] = str(balance.total_paid_out_stroops)
        expected_farmers.append(row)
    got_farmers = _csv(out / "farmers.csv")
    assert got_farmers == expected_farmers and list(got_farmers[0]) == list(FARMERS_HEADER)
    assert got_farmers[3]["total_paid_out_stroops"] == str(2 * KALE)

    # ledger.csv: every entry of every farmer, oldest first, with signed stroops.
    got_ledger = _csv(out / "ledger.csv")
    expected_ledger = [e for f in farmers for e in await _ledger(pool, f.farmer_id)]
    assert got_ledger == expected_ledger and list(got_ledger[0]) == list(LEDGER_FIELDS)
    assert {"stake", "reward", "payout"} <= {e["kind"] for e in got_ledger}
    assert ran.out.strip().endswith(f"4 blocks, 4 farmers, {len(expected_ledger)} ledger entries")

    # The farmers chart's figures: each farmer's harvested rewards, as its balance says.
    indexes, lines = cumulative_rewards(History(blocks, [], {}, {}, {}))
    assert indexes == [b.block.block_index for b in blocks[:3]]
    assert len(lines) == 4
    for f, line in lines.items():
        row = next(r for r in got_farmers if r["farmer_id"] == f)
        assert line[-1] == int(row["total_reward_stroops"])

    # The charts: real PNG files, small.
    for name in CHARTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and 2_000 < len(data) < 150_000, (name, len(data))

    # --last keeps the newest blocks only.
    ran = await kale_pool(operator_settings, "report", "--out", str(tmp_path / "r2"), "--last", "2")
    assert ran.code == 0, ran.err
    assert [r["block_index"] for r in _csv(tmp_path / "r2" / "blocks.csv")] == [
        str(b.block.block_index) for b in blocks[-2:]
    ]

    await watch.close()
    _docs_images(out, view)


def _docs_images(report: Path, view: ConsoleView) -> None:
    target = os.environ.get("KALEPOOL_DOCS_IMAGES")
    if not target:
        return
    for name in CHARTS:
        shutil.copyfile(report / name, Path(target) / f"report-{name}")
    console = Console(record=True, width=118, file=io.StringIO(), force_terminal=True)
    console.print(view.render())
    svg = console.export_svg(title="kale-pool up")
    # The page needs no web font: the reader's monospace font will do.
    svg = re.sub(r"@font-face \{.*?\}\s*", "", svg, flags=re.DOTALL)
    (Path(target) / "live-view.svg").write_text(svg)


def test_without_matplotlib_the_report_says_how_to_install_it(tmp_path: Path) -> None:
    """matplotlib is the `report` extra, not a dependency of every service: without it
    `kale-pool report` is one line saying how to install it, before asking the pool."""
    argv = ["kale-pool", "--data-dir", str(tmp_path / "data"), "report", "--out", "out"]
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if not installed\n"
        "from kalepool.app import cli\n"
        f"sys.argv = {argv!r}\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "matplotlib, which is not installed: pip install 'kale-pool[report]'" in done.stderr
    assert not (tmp_path / "out").exists()
