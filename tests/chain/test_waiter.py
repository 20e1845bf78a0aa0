"""The shared confirmation waiter: transactions in flight are looked for together, one
getTransactions scan per ledger, on the devnet (ledgers close when the test says)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from stellar_sdk import Keypair
from stellar_sdk.soroban_rpc import GetTransactionsResponse, GetTransactionStatus, Transaction

from kalepool.chain import (
    ChainClient,
    SignedTx,
    SubmitEvent,
    SubmitStep,
    TxStatus,
    build_trustline,
    read_account,
    reconcile,
    sign,
    submit,
)
from tests.waits import until

from .stage import Stage


def count_calls(client: ChainClient) -> Counter[str]:
    """How often the client's transport is asked for each RPC method (the real server
    answers; only the asking is counted)."""
    calls: Counter[str] = Counter()
    rpc: Any = client.rpc
    for name in ("get_transaction", "get_transactions", "send_transaction"):
        method = getattr(rpc, name)

        def counted(
            *args: Any, _m: Callable[..., Awaitable[Any]] = method, _n: str = name, **kw: Any
        ) -> Awaitable[Any]:
            calls[_n] += 1
            return _m(*args, **kw)

        setattr(rpc, name, counted)
    return calls


async def signed_trustlines(stage: Stage, n: int, **build: Any) -> list[SignedTx]:
    farmers: list[Keypair] = await stage.accounts(n)
    return [sign(await build_trustline(stage.client, f.public_key, **build), f) for f in farmers]


async def pending(stage: Stage, n: int) -> bool:
    return bool((await stage.info())["pending_transactions"] == n)


async def test_many_transactions_are_confirmed_by_one_scan_of_their_ledger(stage: Stage) -> None:
    client = stage.client
    txs = await signed_trustlines(stage, 25)
    calls = count_calls(client)
    drives = [asyncio.create_task(submit(client, tx)) for tx in txs]
    await until(lambda: pending(stage, 25), what="all 25 queued")
    await until(lambda: client.waiter.awaited == 25, what="all 25 awaited")
    # No ledger closed while they wait: nothing to scan yet.
    assert calls["get_transactions"] == 0
    await stage.close()
    outcomes = await asyncio.gather(*drives)

    assert all(o.status is TxStatus.SUCCESS for o in outcomes), [o.describe() for o in outcomes]
    assert len({o.ledger for o in outcomes}) == 1
    assert calls["send_transaction"] == 25
    # Nobody asked for a hash on its own, and one scan of the new ledger answered all 25.
    assert calls["get_transaction"] == 0
    assert calls["get_transactions"] == 1
    for tx in txs:
        account = await read_account(client, tx.source)
        assert account is not None and account.sequence == tx.sequence


async def test_a_drive_cancelled_while_it_waits_is_no_longer_awaited(stage: Stage) -> None:
    client = stage.client
    (tx,) = await signed_trustlines(stage, 1)
    drive = asyncio.create_task(submit(client, tx))
    await until(lambda: client.waiter.awaited == 1, what="the hash awaited")
    drive.cancel()
    await until(lambda: client.waiter.awaited == 0, what="the hash no longer awaited")
    # Still queued: the chain applies it, and a reconcile by hash finds it.
    await stage.close()
    assert (await reconcile(client, tx)).ok


async def test_a_lost_scan_answer_is_each_drives_own_and_they_keep_looking(stage: Stage) -> None:
    client = stage.client
    txs = await signed_trustlines(stage, 5)
    events: list[SubmitEvent] = []

    async def observe(event: SubmitEvent) -> None:
        events.append(event)

    await stage.faults(fail_next={"getTransactions": 1}, error_kind="http")
    drives = [asyncio.create_task(submit(client, tx, observe=observe)) for tx in txs]
    await until(lambda: pending(stage, 5), what="all 5 queued")
    await stage.close()
    outcomes = await asyncio.gather(*drives)
    await stage.faults(fail_next={})

    assert all(o.ok for o in outcomes), [o.describe() for o in outcomes]
    lost = [e for e in events if e.step is SubmitStep.LOOKUP_FAILED]
    # The one failed scan was every drive's lost answer; each applied exactly once.
    assert {e.tx.hash for e in lost} == {tx.hash for tx in txs}
    assert all(stage.applied.count(tx.hash) == 1 for tx in txs)


async def test_transactions_dropped_at_max_time_are_expired_together(stage: Stage) -> None:
    client = stage.client
    txs = await signed_trustlines(stage, 6)
    drives = [asyncio.create_task(submit(client, tx)) for tx in txs]
    await until(lambda: pending(stage, 6), what="all 6 queued")
    # The next ledger closes after their max_time: the queue drops them unapplied.
    await stage.advance(client.config.tx_timeout_seconds + 1)
    await stage.close()
    outcomes = await asyncio.gather(*drives)

    assert [o.status for o in outcomes] == [TxStatus.EXPIRED] * 6, [o.describe() for o in outcomes]
    for tx in txs:
        assert tx.hash not in stage.applied
        account = await read_account(client, tx.source)
        assert account is not None and account.sequence == tx.sequence - 1


# --- the scan itself, over a fake transport (unit tests) ---------------------------------


class FakeRpc:
    """getTransactions over a list of (ledger, hash) in pages of `page`, getLatestLedger."""

    def __init__(self, txs: list[tuple[int, str]], latest: int) -> None:
        self.txs = txs
        self.latest = latest
        self.scans: list[dict[str, Any]] = []

    async def get_latest_ledger(self) -> Any:
        return SimpleNamespace(sequence=self.latest, close_time=1000 + self.latest)

    async def get_transactions(
        self, start_ledger: int | None = None, cursor: str | None = None, limit: int = 10
    ) -> GetTransactionsResponse:
        self.scans.append({"start_ledger": start_ledger, "cursor": cursor})
        first = 0 if cursor is None else int(cursor)
        rows = [
            i
            for i, (ledger, _) in enumerate(self.txs)
            if start_ledger is None or ledger >= start_ledger
        ]
        chosen = [i for i in rows if i >= first][:limit]
        return GetTransactionsResponse.model_construct(
            transactions=[
                Transaction.model_construct(
                    status="SUCCESS",
                    transaction_hash=self.txs[i][1],
                    application_order=1,
                    fee_bump=False,
                    envelope_xdr="",
                    result_xdr="",
                    result_meta_xdr="",
                    diagnostic_events_xdr=None,
                    ledger=self.txs[i][0],
                    created_at=0,
                    events=None,
                )
                for i in chosen
            ],
            latest_ledger=self.latest,
            latest_ledger_close_timestamp=1000 + self.latest,
            oldest_ledger=1,
            oldest_ledger_close_timestamp=1001,
            cursor=str(chosen[-1] + 1) if chosen else "",
        )

    async def close(self) -> None:
        pass


async def test_a_scan_reads_every_page_and_answers_found_and_not_found(stage: Stage) -> None:
    txs = [(8, f"{i:064x}") for i in range(450)] + [(9, "f" * 64)]
    fake = FakeRpc(txs, latest=9)
    client = ChainClient(stage.client.config, rpc=fake, poll_interval=0.01)  # type: ignore[arg-type]
    wanted = ["f" * 64, txs[0][1], txs[449][1], "e" * 64]
    got = await asyncio.gather(*(client.waiter.lookup(h, since=8) for h in wanted))

    assert [g.status for g in got] == [GetTransactionStatus.SUCCESS] * 3 + [
        GetTransactionStatus.NOT_FOUND
    ]
    assert [g.ledger for g in got[:3]] == [9, 8, 8]
    # Not found through the latest ledger, with the window the drive judges expiry by.
    assert got[3].latest_ledger == 9 and got[3].latest_ledger_close_time == 1009
    # One scan from ledger 8, in three pages of at most 200.
    assert [s["start_ledger"] for s in fake.scans] == [8, None, None]
    assert client.waiter.awaited == 0
