"""The chain client's metrics: every process that talks to the chain (wallet, pool,
pooler agent) counts its RPC reads and its transactions' fates under these names.

Labels are bounded: an RPC method name, a contract function name (`plant`, `work`,
`harvest`, `transfer`, ...) or the transaction's kind, and a fixed set of outcomes.
"""

from __future__ import annotations

from prometheus_client import Counter

CHAIN_RPC_CALLS = Counter(
    "kalepool_chain_rpc_calls_total",
    "Stellar RPC reads and simulations, by method and outcome (ok, error: refused at once,"
    " unavailable: every retry failed).",
    ["method", "outcome"],
)
CHAIN_TRANSACTIONS = Counter(
    "kalepool_chain_transactions_total",
    "Transactions driven to their fate, by contract function (or kind) and outcome"
    " (success, failed, expired, rejected, unknown, unavailable).",
    ["function", "outcome"],
)

#: Outcomes of CHAIN_TRANSACTIONS that count as a failed contract call.
FAILED_TRANSACTION_OUTCOMES = ("failed", "expired", "rejected", "unavailable")
