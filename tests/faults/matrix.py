"""`make faults`: the whole fault matrix, each scenario struck into the real processes of
`kale-pool up`, and the table docs/reliability.md keeps.

    python -m tests.faults.matrix [--runs N] [--only TEXT] [--seed S] [--write PATH]

Each run starts one farm (a fresh data directory, two poolers, six farmers, 20-second
blocks) and strikes every scenario in turn; the figures are summed over the runs. With
`--write`, the table between the markers of PATH is replaced by this run's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.faults.harness import Farm, FarmError
from tests.faults.scenarios import SCENARIOS, Outcome, Scenario, run_scenario

BEGIN = "<!-- fault matrix: begin -->"
END = "<!-- fault matrix: end -->"


async def _matrix(runs: int, scenarios: list[Scenario], seed: int) -> list[Outcome | str]:
    results: list[Outcome | str] = []
    for run in range(runs):
        rng = random.Random(seed + run)
        with tempfile.TemporaryDirectory(prefix="kale-pool-faults-") as tmp:
            farm = Farm(Path(tmp) / "data", poolers=2, farmers=6)
            await farm.start()
            try:
                for scenario in scenarios:
                    print(f"run {run + 1}: {scenario.name} ...", flush=True)
                    try:
                        outcome = await run_scenario(farm, scenario, rng)
                    except FarmError as error:
                        results.append(f"{scenario.name}: {error}")
                        print(f"  FAILED: {error}", flush=True)
                        # A broken farm cannot host the next scenario: start over.
                        await farm.close()
                        farm = Farm(Path(tmp) / f"data-{len(results)}", poolers=2, farmers=6)
                        await farm.start()
                        continue
                    results.append(outcome)
                    print(
                        f"  block {outcome.block} ({outcome.caught}) -> farmed again in"
                        f" {outcome.recovered};"
                        f" lost {outcome.data_lost}, twice {outcome.applied_twice},"
                        f" differences {outcome.differences} ({outcome.seconds:.0f} s)",
                        flush=True,
                    )
                    for note in outcome.notes:
                        print(f"    {note}", flush=True)
            finally:
                await farm.close()
    return results


def table(results: list[Outcome | str], runs: int, seed: int, seconds: float) -> str:
    """The markdown table (scenario, runs, blocks affected, lost, twice, differences)."""
    rows: dict[str, list[Outcome]] = defaultdict(list)
    failed: list[str] = []
    for r in results:
        if isinstance(r, str):
            failed.append(r)
        else:
            rows[r.scenario.name].append(r)
    cpus = os.cpu_count()
    lines = [
        BEGIN,
        f"Measured {dt.date.today().isoformat()} on {platform.machine()}, {cpus} cores, Python"
        f" {platform.python_version()}: `make faults` ({runs} run(s), seed {seed},"
        f" {seconds / 60:.0f} minutes).",
        "",
        "| scenario | runs | what it caught (last run) | blocks affected | data lost"
        " | applied twice | books-vs-chain differences | recovered after (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in SCENARIOS:
        got = rows.get(scenario.name)
        if not got:
            continue
        lines.append(
            f"| {scenario.name} | {len(got)} | {got[-1].caught} |"
            f" {sum(o.blocks_affected for o in got)} |"
            f" {sum(o.data_lost for o in got)} | {sum(o.applied_twice for o in got)} |"
            f" {sum(o.differences for o in got)} |"
            f" {max(o.seconds for o in got):.0f} |"
        )
    for line in failed:
        lines.append(f"\nNot completed: {line}")
    lines.append(END)
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    doc = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path} has no fault matrix markers")
    path.write_text(pattern.sub(lambda _: text, doc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", help="only the scenarios whose name contains this")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", type=Path, help="replace the table in this markdown file")
    args = parser.parse_args(argv)
    # The harness's own chain reads meet the faults too; their retries are not news here.
    logging.basicConfig(level=logging.ERROR)
    chosen = [s for s in SCENARIOS if args.only is None or args.only in s.name]
    begun = time.monotonic()
    results = asyncio.run(_matrix(args.runs, chosen, args.seed))
    text = table(results, args.runs, args.seed, time.monotonic() - begun)
    print(text)
    if args.write is not None:
        write(args.write, text)
    bad = [r for r in results if isinstance(r, str)] + [
        r
        for r in results
        if not isinstance(r, str) and (r.data_lost or r.applied_twice or r.differences)
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
