"""How fast one backend onboards N farmers, beside the devnet's own ceiling.

The stack of `plant_bench.py` (`kale-pool up --no-demo`: embedded PostgreSQL, the devnet,
the wallet and the pool, each its own process), worked through the public API as an
operator would. For each N, N new farmers:

- **register**: N `RegisterFarmer` calls, `--concurrency` at once (a custodial wallet
  each, no chain);
- their custodial accounts are created with XLM (a hundred create-account operations per
  transaction: the setup, not what is measured);
- **confirm**: N `ConfirmFunding` calls, `--concurrency` at once, each repeated while
  its trustline transaction is pending, until every farmer is funded (the KALE trustline
  on chain);
- **ceiling**: N independent XLM payments sent at once to the same devnet and followed to
  their ledgers, in the same run (`plant_bench.ceiling`).

It prints the rates (farmers/s), the ceiling (transactions/s), the ratio of the
confirmations to the ceiling, and the peak resident memory of each process at the end.
No assertion: absolute times depend on what else runs on the machine.

    .venv/bin/python bench/onboard_bench.py --farmers 500 2000 --concurrency 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict, dataclass

from figures import write_figures
from plant_bench import (
    Onboarded,
    Stack,
    ceiling,
    common_arguments,
    funded_keys,
    onboard,
    print_peak_rss,
)


@dataclass
class Run:
    """One N: the onboarding and the ceiling measured beside it."""

    onboarded: Onboarded
    ceiling_seconds: float
    ceiling_ledgers: int

    @property
    def ratio(self) -> float:
        """Confirmations per second against independent transactions per second."""
        return self.ceiling_seconds / self.onboarded.confirm_seconds

    def line(self) -> str:
        n = self.onboarded.farmers
        return (
            f"{self.onboarded.line()}  ceiling: {self.ceiling_seconds:5.1f} s over"
            f" {self.ceiling_ledgers} ledgers ({n / self.ceiling_seconds:6.1f} tx/s)"
            f"  ratio {self.ratio:.3f}"
        )


async def bench(args: argparse.Namespace) -> tuple[list[Run], dict[str, int]]:
    runs: list[Run] = []
    async with Stack(args, sum(args.farmers)) as stack:
        keys = await funded_keys(stack.chain, stack.bot, max(args.farmers))
        async with stack.operator() as op:
            made = await stack.pooler(op)
            for n in args.farmers:
                done = await onboard(
                    op,
                    stack.chain,
                    stack.bot,
                    made.pooler.pooler_id,
                    n,
                    args.concurrency,
                    stack.cpu,
                )
                c_seconds, c_ledgers = await ceiling(stack.chain, keys[:n])
                run = Run(done, c_seconds, c_ledgers)
                print(run.line(), flush=True)
                runs.append(run)
        peaks = stack.peak_rss()
        print_peak_rss(peaks)
    return runs, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--farmers", type=int, nargs="+", default=[500])
    common_arguments(parser)
    args = parser.parse_args(argv)
    runs, peaks = asyncio.run(bench(args))
    figures = [
        {k: v for k, v in asdict(r.onboarded).items() if k != "farmer_ids"}
        | {"ceiling_seconds": r.ceiling_seconds, "ceiling_ledgers": r.ceiling_ledgers}
        | {"ratio": r.ratio}
        for r in runs
    ]
    write_figures(args.json, {"runs": figures, "peak_rss": peaks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
