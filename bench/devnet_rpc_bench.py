"""What one `getLatestLedger` answer costs the devnet after a ledger of P payments: the
answer encoded as JSON at every call (before) beside the answer kept per ledger
(RpcService.call_json, now), in the same run, in CPU time (time.process_time). The
answer carries the ledger's whole close meta. No assertion.

    .venv/bin/python -m bench.devnet_rpc_bench --payments 500 --calls 200
"""

from __future__ import annotations

import argparse
import json
import time

from stellar_sdk import Keypair

from bench.devnet_state_bench import _fund, _payments
from kale_devnet import DevnetConfig
from kale_devnet.chain import Chain
from kale_devnet.rpc import RpcService
from kale_devnet.server import _answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payments", type=int, default=500)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    chain = Chain(DevnetConfig(manual=True))
    keys = [Keypair.random() for _ in range(args.payments + 1)]
    _fund(chain, keys)
    for envelope in _payments(chain, keys[:-1], keys[-1].public_key):
        chain.submit(envelope)
    chain.close_ledger()
    rpc = RpcService(chain, lambda: "http://127.0.0.1", lambda: None)
    before = now = 0.0
    size = 0
    for _ in range(args.calls):
        t0 = time.process_time()
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "result": rpc.call("getLatestLedger", {})})
        before += time.process_time() - t0
        t0 = time.process_time()
        cached = _answer(1, rpc.call_json("getLatestLedger", {}))
        now += time.process_time() - t0
        size = len(body)
        assert json.loads(cached) == json.loads(body)
    print(
        f"getLatestLedger after a ledger of {args.payments} payments ({size / 1e3:.0f} kB): "
        f"encoded every call {before / args.calls * 1e3:.2f} ms CPU, kept per ledger "
        f"{now / args.calls * 1e3:.3f} ms; ratio {before / now:.0f}x"
    )


if __name__ == "__main__":
    main()
