"""How fast one backend harvests N worked pails, beside the devnet's own ceiling.

The stack and onboarding of `plant_bench.py`, then, through the public API and the chain:

- one `RequestPlant` for N farmers the moment a block is due (`plant_bench.plant`), and
  the plants it answered pending waited for (the pool goes on with them);
- each pail worked on chain: a nonce found by `miner_ext` (one leading zero, the least
  the contract takes), `work` sent from an account of the bench's (one per pail: no
  sequence conflicts), the results reported with `ReportWork` as a pooler would;
- once the next block is due it is opened (a plant of one farmer);
- **ceiling**: N independent XLM payments sent at once and followed to their ledgers;
- **harvest**: one `RequestHarvest` for the block, timed from the request until its
  answer (every harvest settled on chain); the ledgers the harvests landed in counted.

It prints the harvest rate (pails/s), the ceiling (transactions/s), their ratio, and the
peak resident memory of each process. The pool's own harvest loop runs too (every 10 s)
and may take some pails first: they count as harvested (each pail is harvested once).

    .venv/bin/python bench/harvest_bench.py --farmers 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from figures import write_figures
from plant_bench import (
    Stack,
    ceiling,
    common_arguments,
    funded_keys,
    gather_limited,
    onboarded_pooler,
    plant,
    print_peak_rss,
    when_due,
)
from stellar_sdk import Keypair, StrKey

import miner_ext
from kalepool.chain import ChainClient, build_work, current_block, sign, submit
from kalepool.v1 import common_pb2, pooler_pb2, records_pb2

# ReportWork takes at most this many results a call (pool_service.work.MAX_RESULTS).
REPORT_BATCH = 1000


@dataclass
class Run:
    """N worked pails: the harvest and the ceiling measured beside it."""

    farmers: int
    worked: int
    harvested: int
    harvest_seconds: float
    harvest_ledgers: int
    ceiling_seconds: float
    ceiling_ledgers: int

    @property
    def ratio(self) -> float:
        return (self.harvested / self.harvest_seconds) / (self.farmers / self.ceiling_seconds)

    def line(self) -> str:
        return (
            f"N={self.farmers:5d}  worked {self.worked}  harvest: {self.harvested} in"
            f" {self.harvest_seconds:6.1f} s over {self.harvest_ledgers:3d} ledgers"
            f" ({self.harvested / self.harvest_seconds:6.1f}/s)  ceiling:"
            f" {self.ceiling_seconds:5.1f} s over {self.ceiling_ledgers} ledgers"
            f" ({self.farmers / self.ceiling_seconds:6.1f} tx/s)  ratio {self.ratio:.3f}"
        )


async def settled_assignments(stub: Any, auth: Any, block: int, n: int) -> list[Any]:
    """The block's assignments once its plants have settled: `RequestPlant` answers
    plants still pending as such, and the pool goes on with them; waited for until all N
    are there or none came for 30 s."""
    seen, quiet_since = -1, time.monotonic()
    while True:
        got = await stub.GetAssignments(
            pooler_pb2.GetAssignmentsRequest(block_index=block), metadata=auth, timeout=120
        )
        assignments = [a for a in got.assignments if a.block_index == block]
        if len(assignments) > seen:
            seen, quiet_since = len(assignments), time.monotonic()
        if seen >= n or time.monotonic() - quiet_since > 30:
            print(f"  {seen} of {n} pails planted in block {block}", flush=True)
            return assignments
        await asyncio.sleep(5)


async def work(chain: ChainClient, stub: Any, auth: Any, block: int, keys: list[Keypair]) -> int:
    """Work every pail of `block` on chain and report it; how many were worked."""
    assignments = await settled_assignments(stub, auth, block, len(keys))

    async def one(a: Any, key: Keypair) -> pooler_pb2.WorkReport | None:
        raw = StrKey.decode_ed25519_public_key(a.farmer_address)
        found = miner_ext.search(block, a.entropy, raw, target_zeros=1, threads=1)
        tx = await build_work(
            chain, a.farmer_address, found.hash, found.nonce, source=key.public_key
        )
        outcome = await submit(chain, sign(tx, key))
        if not outcome.ok:
            print(f"  work of {a.farmer_address} failed: {outcome.describe()}")
            return None
        return pooler_pb2.WorkReport(
            farmer_id=a.farmer_id,
            status=records_pb2.EVENT_STATUS_SUCCEEDED,
            nonce=found.nonce,
            hash=found.hash,
            zeros=found.zeros,
            gap=outcome.value or 0,
            transaction=common_pb2.TransactionRef(tx_hash=outcome.hash, ledger=outcome.ledger or 0),
        )

    started = time.monotonic()
    reports = [
        r
        for r in await gather_limited(
            256, [one(a, k) for a, k in zip(assignments, keys, strict=False)]
        )
        if r is not None
    ]
    for i in range(0, len(reports), REPORT_BATCH):
        await stub.ReportWork(
            pooler_pb2.ReportWorkRequest(block_index=block, results=reports[i : i + REPORT_BATCH]),
            metadata=auth,
            timeout=300,
        )
    print(f"  worked and reported {len(reports)} pails in {time.monotonic() - started:.1f} s")
    return len(reports)


async def harvest(stub: Any, auth: Any, block: int) -> tuple[int, float, int]:
    started = time.monotonic()
    got = await stub.RequestHarvest(
        pooler_pb2.RequestHarvestRequest(block_index=block), metadata=auth, timeout=900
    )
    seconds = time.monotonic() - started
    ledgers = [h.transaction.ledger for h in got.harvested if h.transaction.ledger]
    if got.failed or got.pending:
        print(f"  block {block}: {len(got.failed)} failed, {len(got.pending)} pending")
    spanned = max(ledgers) - min(ledgers) + 1 if ledgers else 0
    return len(got.harvested), seconds, spanned


async def bench(args: argparse.Namespace) -> tuple[list[Run], dict[str, int]]:
    runs: list[Run] = []
    biggest = max(args.farmers)
    async with Stack(args, biggest) as stack:
        keys = await funded_keys(stack.chain, stack.bot, biggest)
        made = await onboarded_pooler(stack, biggest, args.concurrency)
        channel, stub = stack.pooler_stub()
        auth = (("authorization", f"Bearer {made.api_key}"),)
        for n in args.farmers:
            planted, p_seconds, _ = await plant(stub, made.api_key, stack.chain, n)
            block = (await current_block(stack.chain)).index
            print(f"  planted {planted} in block {block} ({p_seconds:.1f} s)")
            worked = await work(stack.chain, stub, auth, block, keys[:n])
            # The block is over once the next opens: one plant opens it.
            nxt = await when_due(stack.chain)
            await stub.RequestPlant(
                pooler_pb2.RequestPlantRequest(block_index=nxt, max_farmers=1),
                metadata=auth,
                timeout=300,
            )
            c_seconds, c_ledgers = await ceiling(stack.chain, keys[:n])
            harvested, h_seconds, h_ledgers = await harvest(stub, auth, block)
            run = Run(n, worked, harvested, h_seconds, h_ledgers, c_seconds, c_ledgers)
            print(run.line(), flush=True)
            runs.append(run)
        await channel.close()
        peaks = stack.peak_rss()
        print_peak_rss(peaks)
    return runs, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, nargs="+", default=[500])
    common_arguments(parser)
    args = parser.parse_args(argv)
    runs, peaks = asyncio.run(bench(args))
    figures = [asdict(r) | {"ratio": r.ratio} for r in runs]
    write_figures(args.json, {"runs": figures, "peak_rss": peaks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
