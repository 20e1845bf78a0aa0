"""What the devnet's `--state` costs per ledger close: the journal (persist.Store) beside
the whole-chain snapshot at every close it replaced, on the same chain in the same run.

Builds a chain in-process with N accounts created by its friendbot (their transactions
in the history, as after onboarding N farmers), then closes ledgers of P payments each.
After every close both are measured in CPU time (time.process_time, every thread of
the process): the store's journal line, fsynced, with any compaction it starts waited
for inside the measurement; and the reference, the whole chain serialized and written
atomically to another file (what every close did before). Wall time of the journal
line (its fsync included) is printed too. No assertion.

    .venv/bin/python bench/devnet_state_bench.py --accounts 2000 --payments 200 --closes 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stellar_sdk import Account, Asset, Keypair, TransactionBuilder

from kale_devnet import DevnetConfig, persist
from kale_devnet.chain import Chain, FriendbotBusy


def _fund(chain: Chain, keys: list[Keypair]) -> None:
    for kp in keys:
        while True:
            try:
                outcome = chain.friendbot(kp.public_key)
                break
            except FriendbotBusy:
                chain.close_ledger()
        assert outcome.status == "PENDING", outcome
    while chain.pending:
        chain.close_ledger()


def _payments(chain: Chain, keys: list[Keypair], to: str) -> list[str]:
    envelopes = []
    for kp in keys:
        acc = chain.account(kp.public_key)
        assert acc is not None
        tx = (
            TransactionBuilder(
                Account(kp.public_key, acc.seq_num),
                chain.identity.network_passphrase,
                base_fee=100,
            )
            .add_time_bounds(0, 0)
            .append_payment_op(to, Asset.native(), "1")
            .build()
        )
        tx.sign(kp)
        envelopes.append(tx.to_xdr())
    return envelopes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--payments", type=int, default=200, help="per measured close")
    parser.add_argument("--closes", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="kale-devnet-state-bench-"))
    config = DevnetConfig(manual=True, state_path=folder / "state.json")
    store = persist.Store.open(config, folder / "state.json")
    chain = store.chain
    keys = [Keypair.random() for _ in range(args.accounts)]
    started = time.monotonic()
    _fund(chain, keys)
    store.record()
    store.snapshot()
    print(
        f"{args.accounts} accounts created in {time.monotonic() - started:.0f} s "
        f"({chain.latest.seq} ledgers, {len(chain.txs)} transactions, "
        f"snapshot {(folder / 'state.json').stat().st_size / 1e6:.1f} MB)"
    )

    reference = folder / "reference.json"
    close_cpu, journal_cpu, journal_wall, full_cpu = [], [], [], []
    snapshots_before = store.snapshots
    for i in range(args.closes):
        senders = keys[(i * args.payments) % len(keys) :][: args.payments]
        for envelope in _payments(chain, senders, keys[-1 - i].public_key):
            outcome = chain.submit(envelope)
            assert outcome.status == "PENDING", outcome
        t0 = time.process_time()
        record = chain.close_ledger()
        close_cpu.append(time.process_time() - t0)
        assert len(record.tx_hashes) == len(senders), record.tx_hashes

        t0, w0 = time.process_time(), time.monotonic()
        store.record()
        journal_wall.append(time.monotonic() - w0)
        store.wait()  # a compaction it started: its CPU counts here, not in the reference's
        journal_cpu.append(time.process_time() - t0)

        t0 = time.process_time()
        persist.write(persist.serialize(chain), reference)
        full_cpu.append(time.process_time() - t0)

    ms = 1000.0
    figures: dict[str, Any] = {
        "accounts": args.accounts,
        "payments_per_close": args.payments,
        "closes": args.closes,
        "transactions_kept": len(chain.txs),
        "snapshot_mb": reference.stat().st_size / 1e6,
        "close_cpu_ms": statistics.mean(close_cpu) * ms,
        "snapshot_every_close_cpu_ms": statistics.mean(full_cpu) * ms,
        "journal_cpu_ms": statistics.mean(journal_cpu) * ms,
        "journal_wall_ms_median": statistics.median(journal_wall) * ms,
        "compactions": store.snapshots - snapshots_before,
    }
    figures["ratio"] = figures["snapshot_every_close_cpu_ms"] / figures["journal_cpu_ms"]
    store.close()
    print(
        f"per close of {args.payments} payments (mean of {args.closes}), CPU: "
        f"the close itself {figures['close_cpu_ms']:.1f} ms; "
        f"whole-chain snapshot (before) {figures['snapshot_every_close_cpu_ms']:.1f} ms; "
        f"journal (now, {figures['compactions']} compactions included) "
        f"{figures['journal_cpu_ms']:.1f} ms; ratio {figures['ratio']:.1f}x; "
        f"journal line wall time (fsync) median {figures['journal_wall_ms_median']:.1f} ms"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
