"""Confirmations awaited together: one `getTransactions` scan per new ledger for every
transaction in flight, instead of one `getTransaction` loop per transaction.

A drive that has sent its envelope (and so knows the ledger it was sent in) asks
:meth:`TxWaiter.lookup` for its hash from the first ledger it may have applied in. The
waiter's one task reads each new ledger's transactions once, answers every hash found
with what `getTransaction` would have answered (built from the same fields), and every
hash not found through the latest ledger with NOT_FOUND and the server's window, so the
drive's rules (resend per ledger, expiry past `max_time`) stay as they are. A failed scan
fails every waiter with the same exception: each drive counts it as its own lost answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stellar_sdk.soroban_rpc import (
    GetTransactionResponse,
    GetTransactionsResponse,
    GetTransactionStatus,
    Transaction,
)

from kalepool.chain.metrics import CHAIN_RPC_CALLS

if TYPE_CHECKING:
    from kalepool.chain.client import ChainClient

# Transactions per getTransactions page (the RPC server's maximum is 200).
PAGE = 200


@dataclass
class _Waiting:
    since: int  # the first ledger not yet searched for this hash
    futures: list[asyncio.Future[GetTransactionResponse]] = field(default_factory=list)


class TxWaiter:
    """Every awaited hash, answered by one scan of each new ledger (see the module doc)."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client
        self._waiting: dict[str, _Waiting] = {}
        self._task: asyncio.Task[None] | None = None
        self._latest = 0  # the newest ledger the server reported
        self._oldest = 0  # the oldest ledger it still keeps

    @property
    def awaited(self) -> int:
        """How many hashes are awaited now."""
        return len(self._waiting)

    async def lookup(self, tx_hash: str, *, since: int) -> GetTransactionResponse:
        """What `getTransaction(tx_hash)` answers once ledgers from `since` on (up to the
        latest) are searched: found, or NOT_FOUND with the server's window."""
        future: asyncio.Future[GetTransactionResponse] = asyncio.get_running_loop().create_future()
        entry = self._waiting.get(tx_hash)
        if entry is None:
            self._waiting[tx_hash] = entry = _Waiting(since)
        entry.since = min(entry.since, since)
        entry.futures.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        try:
            return await future
        except asyncio.CancelledError:
            # Nobody waits for this answer any more: a hash nobody awaits is not scanned for.
            if future in entry.futures:
                entry.futures.remove(future)
            if not entry.futures and self._waiting.get(tx_hash) is entry:
                del self._waiting[tx_hash]
            raise

    async def _run(self) -> None:
        while self._waiting:
            start = min(e.since for e in self._waiting.values())
            if start > self._latest:
                # Nothing new to read: wait for the next ledger (one cheap call a poll).
                try:
                    # Asked once, not retried here: a failure is each drive's own to count.
                    async with self.client.limit:
                        latest = await self.client.rpc.get_latest_ledger()
                except Exception as exc:  # every waiter gets it: each drive judges it
                    self._fail_all(exc)
                    continue
                if latest.sequence < start:
                    self._latest = max(self._latest, latest.sequence)
                    await asyncio.sleep(self.client.poll_interval)
                    continue
            try:
                await self._scan(start)
            except Exception as exc:  # every waiter gets it: each drive judges it
                self._fail_all(exc)

    async def _scan(self, start: int) -> None:
        """Read every transaction from ledger `start` to the latest; answer the waiters."""
        found: dict[str, Transaction] = {}
        cursor: str | None = None
        # A server refuses a start before its window; hashes awaited from earlier than
        # that are asked for on their own below.
        start_at = max(start, self._oldest)
        rpc = self.client.rpc
        while True:
            async with self.client.limit:
                if cursor is None:
                    page = await rpc.get_transactions(start_ledger=start_at, limit=PAGE)
                else:
                    page = await rpc.get_transactions(cursor=cursor, limit=PAGE)
            CHAIN_RPC_CALLS.labels("getTransactions", "ok").inc()
            # Every transaction read, not only those awaited now: a hash asked for while
            # the scan runs is answered from the whole range too.
            found.update((tx.transaction_hash, tx) for tx in page.transactions)
            if len(page.transactions) < PAGE:
                break
            cursor = page.cursor
        self._latest = max(self._latest, page.latest_ledger)
        self._oldest = page.oldest_ledger
        for tx_hash, entry in list(self._waiting.items()):
            if entry.since < start:
                continue  # asked for meanwhile, from an earlier ledger: the next scan's
            tx = found.get(tx_hash)
            if tx is not None:
                answer = _response(tx, page)
            elif entry.since < page.oldest_ledger:
                # Outside what the scan could read: the hash's own look-up decides.
                async with self.client.limit:
                    answer = await rpc.get_transaction(tx_hash)
            else:
                answer = _not_found(page)
            del self._waiting[tx_hash]
            for future in entry.futures:
                if not future.done():
                    future.set_result(answer)

    def _fail_all(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for entry in waiting.values():
            for future in entry.futures:
                if not future.done():
                    future.set_exception(exc)


def _not_found(page: GetTransactionsResponse) -> GetTransactionResponse:
    """NOT_FOUND with the server's window, as getTransaction answers it."""
    return GetTransactionResponse.model_construct(
        status=GetTransactionStatus.NOT_FOUND,
        latest_ledger=page.latest_ledger,
        latest_ledger_close_time=page.latest_ledger_close_timestamp,
        oldest_ledger=page.oldest_ledger,
        oldest_ledger_close_time=page.oldest_ledger_close_timestamp,
    )


def _response(tx: Transaction, page: GetTransactionsResponse) -> GetTransactionResponse:
    """The getTransaction answer for a transaction read from getTransactions."""
    # Built from already-validated fields, by field name (the model's aliases are camelCase).
    return GetTransactionResponse.model_construct(
        status=GetTransactionStatus(tx.status),
        transaction_hash=tx.transaction_hash,
        application_order=tx.application_order,
        fee_bump=tx.fee_bump,
        envelope_xdr=tx.envelope_xdr,
        result_xdr=tx.result_xdr,
        result_meta_xdr=tx.result_meta_xdr,
        diagnostic_events_xdr=tx.diagnostic_events_xdr,
        ledger=tx.ledger,
        create_at=tx.created_at,
        latest_ledger=page.latest_ledger,
        latest_ledger_close_time=page.latest_ledger_close_timestamp,
        oldest_ledger=page.oldest_ledger,
        oldest_ledger_close_time=page.oldest_ledger_close_timestamp,
    )
