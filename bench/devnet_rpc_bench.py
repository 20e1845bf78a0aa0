"""What one `getLatestLedger` answer costs the devnet after a ledger of P payments: the
answer encoded as JSON at every call (before) beside the answer kept per ledger
(RpcService.call_json, now), in the same run, in CPU time (time.process_time). The
answer carries the ledger's whole close meta, built once per ledger: measured too, built
from every piece decoded and the whole encoded again (before) beside joined from the XDR
kept (Chain.ledger_close_meta, now), the two checked equal. No assertion on time.

    .venv/bin/python -m bench.devnet_rpc_bench --payments 500 --calls 200
"""

from __future__ import annotations

import argparse
import base64
import json
import time

from stellar_sdk import Keypair
from stellar_sdk import xdr as stellar_xdr

from bench.devnet_state_bench import _fund, _payments
from kale_devnet import DevnetConfig
from kale_devnet.chain import Chain, LedgerRecord
from kale_devnet.rpc import RpcService
from kale_devnet.server import _answer


def decoded_meta(chain: Chain, record: LedgerRecord) -> str:
    """The reference: the ledger's close meta built from its pieces decoded, then encoded."""
    entries = [
        stellar_xdr.TransactionResultMetaV1(
            ext=stellar_xdr.ExtensionPoint(0),
            result=stellar_xdr.TransactionResultPair(
                stellar_xdr.Hash(bytes.fromhex(h)),
                stellar_xdr.TransactionResult.from_xdr(chain.txs[h].result),
            ),
            fee_processing=stellar_xdr.LedgerEntryChanges.from_xdr(chain.txs[h].fee_changes),
            tx_apply_processing=stellar_xdr.TransactionMeta.from_xdr(chain.txs[h].meta),
            post_tx_apply_fee_processing=stellar_xdr.LedgerEntryChanges([]),
        )
        for h in record.tx_hashes
    ]
    meta = stellar_xdr.LedgerCloseMeta(
        2,
        v2=stellar_xdr.LedgerCloseMetaV2(
            ext=stellar_xdr.LedgerCloseMetaExt(0),
            ledger_header=stellar_xdr.LedgerHeaderHistoryEntry(
                stellar_xdr.Hash(record.hash),
                stellar_xdr.LedgerHeader.from_xdr(record.header_b64),
                stellar_xdr.LedgerHeaderHistoryEntryExt(0),
            ),
            tx_set=stellar_xdr.GeneralizedTransactionSet.from_xdr(record.tx_set_b64),
            tx_processing=entries,
            upgrades_processing=[],
            scp_info=[],
            total_byte_size_of_live_soroban_state=stellar_xdr.Uint64(0),
            evicted_keys=[stellar_xdr.LedgerKey.from_xdr(k) for k in record.evicted],
        ),
    )
    return base64.b64encode(meta.to_xdr_bytes()).decode()


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
    record = chain.close_ledger()
    t0 = time.process_time()
    reference = decoded_meta(chain, record)
    t1 = time.process_time()
    record.meta_b64 = None
    joined = chain.ledger_close_meta(record)
    t2 = time.process_time()
    assert joined == reference
    print(
        f"close meta of a ledger of {args.payments} payments ({len(joined) / 1e3:.0f} kB):"
        f" decoded and encoded again {(t1 - t0) * 1e3:.1f} ms CPU, joined from the XDR kept"
        f" {(t2 - t1) * 1e3:.2f} ms; ratio {(t1 - t0) / (t2 - t1):.0f}x"
    )
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
