"""The pooler agent mining many farmers at once, beside one plain search on the same cores.

The agent's own code path: `pooler_agent.work_manager.WorkManager` given N assignments of
one block (one `miner_ext.Search` each, all sharing the process-wide pool of hashing
threads), each mined until the block's work delay, as the agent does when the pool
streams it a block's assignments. Measured per round:

- **agent**: hashes of all N searches together per wall-clock second, from the moment
  the assignments are handed over until every result is back;
- **reference**: one `miner_ext.search` (the fastest kernel, the same thread count) for
  the same time, in the same round, on the same cores;
- **ratio** = agent / reference (the target of the scale issue: >= 0.95 at N = 50);
- **first hash**: from handing over the assignments (the block opened, the assignments
  arrived) until the first search has hashed, and until every one of the N has.

Each figure also records the CPU share the process obtained (a shared machine shows).

    .venv/bin/python bench/agent_bench.py --farmers 50 --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stellar_sdk import Keypair

import miner_ext
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock
from pooler_agent.work_manager import WorkManager, WorkTiming

sys.path.insert(0, str(Path(__file__).parent))
from miner_bench import ENTROPY, FARMER, INDEX, Rate, cpu_model

TARGET_RATIO = 0.95


@dataclass
class Round:
    agent: Rate
    reference: Rate
    assign_s: float  # handing the N assignments to the work manager
    first_hash_s: float  # until any search hashed
    all_hashing_s: float  # until all N had
    farmers: int

    @property
    def ratio(self) -> float:
        return self.agent.wall / self.reference.wall


def reference(seconds: float, threads: int | None) -> Rate:
    """One search, the default (fastest) kernel, `threads` threads, `seconds` long."""
    cpu0 = time.process_time()
    found = miner_ext.search(INDEX, ENTROPY, FARMER, seconds=seconds, threads=threads)
    cpu = time.process_time() - cpu0
    return Rate(wall=found.hashes / found.elapsed, cpus=cpu / found.elapsed)


async def agent(
    farmers: int, seconds: float, threads: int | None
) -> tuple[Rate, float, float, float]:
    """N assignments of one block through the agent's work manager, mined `seconds`."""
    clock = ChainClock()
    clock.observe(1, int(time.time()))
    opened = clock.now()
    # Mining ends `seconds` after the block opened (work delay); no margin needed here.
    timing = WorkTiming(
        block_seconds=seconds + 60, work_delay_seconds=seconds, submit_margin_seconds=0
    )
    manager = WorkManager(timing, clock, capacity=farmers, threads=threads)
    assignments = [
        Assignment(
            farmer_address=Keypair.random().public_key,
            block_index=INDEX,
            entropy=ENTROPY,
            stake_stroops=0,
            plant_ledger=1,
            block_opened_at=opened,
        )
        for _ in range(farmers)
    ]
    cpu0 = time.process_time()
    started = time.perf_counter()
    tasks = [t for a in assignments if (t := manager.assign(a)) is not None]
    handed = time.perf_counter() - started
    first = every = 0.0
    # Poll progress until every search has hashed (1 ms steps; the hashing threads do not
    # hold the GIL, so this costs them little).
    while not every:
        hashing = sum(1 for f in manager.progress().farmers if f.hashes > 0)
        now = time.perf_counter() - started
        if hashing and not first:
            first = now
        if hashing == farmers:
            every = now
        await asyncio.sleep(0.001)
    works = await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    await manager.shutdown()
    hashes = sum(w.hashes for w in works)
    return Rate(wall=hashes / wall, cpus=cpu / wall), handed, first, every


def line(label: str, rate: Rate) -> str:
    return (
        f"  {label:<34}: {rate.wall / 1e6:6.2f} MH/s  ({rate.cpus:4.2f} CPUs obtained, "
        f"{rate.per_cpu / 1e6:6.2f} MH/s per CPU-second)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="mining time per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: one per core")
    parser.add_argument("--json", type=Path, default=Path("bench/results/agent.json"))
    args = parser.parse_args(argv)
    threads = args.threads or miner_ext.default_threads()
    kernel = miner_ext.backends()[-1]
    print(f"machine : {cpu_model()}, {os.cpu_count()} logical CPUs; kernel {kernel}")
    print(f"agent   : {args.farmers} farmers at once, {threads} hashing threads, {args.seconds} s")
    rounds: list[Round] = []
    for i in range(1, args.rounds + 1):
        # Alternate which goes first, so a neighbour's load hits both alike.
        if i % 2:
            ref = reference(args.seconds, threads)
        rate, handed, first, every = asyncio.run(agent(args.farmers, args.seconds, threads))
        if not i % 2:
            ref = reference(args.seconds, threads)
        r = Round(rate, ref, handed, first, every, args.farmers)
        rounds.append(r)
        print(f"round {i}")
        print(line(f"agent, {args.farmers} farmers at once", rate))
        print(line("reference: one miner_ext.search", ref))
        print(
            f"  ratio agent / reference          : {r.ratio:.3f}"
            f"  (target >= {TARGET_RATIO}: {'PASS' if r.ratio >= TARGET_RATIO else 'FAIL'})"
        )
        print(
            f"  block open -> first hash         : {first * 1e3:.1f} ms (any farmer),"
            f" {every * 1e3:.1f} ms (all {args.farmers}); assign() of all took"
            f" {handed * 1e3:.1f} ms"
        )
    ratios = [r.ratio for r in rounds]
    per_cpu = [r.agent.per_cpu / r.reference.per_cpu for r in rounds]
    print(f"\nsummary over {len(rounds)} rounds")
    print(f"  ratio agent / reference          : median {statistics.median(ratios):.3f}")
    print(f"  ratio per CPU-second             : median {statistics.median(per_cpu):.3f}")
    print(
        "  first hash, all farmers          : median "
        f"{statistics.median(r.all_hashing_s for r in rounds) * 1e3:.1f} ms"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "seconds": args.seconds,
        "rounds": [asdict(r) | {"ratio": r.ratio} for r in rounds],
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
