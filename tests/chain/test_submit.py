"""Safe submission: record before send, the same envelope resent, expiry, reconciliation."""

from __future__ import annotations

import pytest
from stellar_sdk import Account
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from kalepool.chain import (
    ChainClient,
    ChainUnavailableError,
    Fault,
    SignedTx,
    SubmitEvent,
    SubmitStep,
    TxKind,
    TxStatus,
    attribute_fault,
    build_close,
    build_payment,
    build_plant,
    build_trustline,
    read_account,
    read_pail,
    reconcile,
    sign,
    submit,
)

from .stage import KALE, Stage


async def test_record_hook_runs_before_the_send_with_the_hash_the_chain_reports(
    stage: Stage,
) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=KALE)
    signed = sign(await build_plant(client, farmer.public_key, KALE), farmer)
    before = await read_account(client, farmer.public_key)
    assert before is not None
    recorded: list[SignedTx] = []

    async def record(tx: SignedTx) -> None:
        # Nothing may have reached the chain yet: not queued, not applied.
        assert (await stage.info())["pending_transactions"] == 0
        got = await client.rpc.get_transaction(tx.hash)
        assert got.status == GetTransactionStatus.NOT_FOUND
        recorded.append(tx)

    events: list[SubmitEvent] = []
    outcome = await submit(client, signed, record=record, observe=stage.closer(events=events))
    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    assert recorded == [signed]
    assert [e.step for e in events] == [SubmitStep.SENT]
    got = await client.rpc.get_transaction(recorded[0].hash)
    assert got.status == GetTransactionStatus.SUCCESS
    assert got.transaction_hash == recorded[0].hash == outcome.hash
    assert got.envelope_xdr == recorded[0].envelope_xdr
    assert got.ledger == outcome.ledger and outcome.sends == 1
    # What the wallet service stores describes the envelope exactly.
    assert recorded[0].source == farmer.public_key
    assert recorded[0].sequence == before.sequence + 1
    assert recorded[0].kind is TxKind.PLANT
    assert 0 < recorded[0].min_time < recorded[0].max_time
    assert recorded[0].max_time - recorded[0].min_time == client.config.tx_timeout_seconds
    assert (
        SignedTx.from_envelope(recorded[0].envelope_xdr, client.config.network_passphrase)
        == (recorded[0])
    )


async def test_a_failing_record_hook_sends_nothing(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1)
    signed = sign(await build_trustline(client, farmer.public_key), farmer)

    async def record(tx: SignedTx) -> None:
        raise RuntimeError("database is down")

    with pytest.raises(RuntimeError, match="database is down"):
        await submit(client, signed, record=record, observe=stage.closer())
    assert (await stage.info())["pending_transactions"] == 0
    await stage.close()
    assert (await client.rpc.get_transaction(signed.hash)).status == GetTransactionStatus.NOT_FOUND
    account = await read_account(client, farmer.public_key)
    assert account is not None and account.kale is None and account.sequence == signed.sequence - 1


@pytest.mark.parametrize(("mode", "applied_before_resend"), [("disconnect", False), ("http", True)])
async def test_a_lost_send_answer_ends_in_exactly_one_applied_transaction(
    stage: Stage, mode: str, applied_before_resend: bool
) -> None:
    """The send is accepted but its answer lost; the same envelope is sent again and the
    transaction applies once: DUPLICATE while it is queued; refused with txBAD_SEQ when it
    applied between the lookup and the resend (an RPC whose history lags the network)."""
    client = stage.client
    (farmer,) = await stage.accounts(1, kale=KALE)
    signed = sign(await build_plant(client, farmer.public_key, KALE), farmer)
    before = await read_account(client, farmer.public_key)
    assert before is not None
    await stage.faults(lose_next_sends=1, lost_send_mode=mode)
    events: list[SubmitEvent] = []
    closes_on = {SubmitStep.DUPLICATE, SubmitStep.SENT}
    if applied_before_resend:
        closes_on.add(SubmitStep.NOT_FOUND)
    outcome = await submit(client, signed, observe=stage.closer(closes_on, events))

    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    steps = [e.step for e in events]
    if applied_before_resend:
        # The resend of an applied envelope is refused: stellar-core bans a hash it just
        # applied (TRY_AGAIN_LATER) and, after that, its sequence number is used (txBAD_SEQ).
        # Neither is final: the next lookup finds it applied.
        assert steps[:2] == [SubmitStep.SEND_LOST, SubmitStep.NOT_FOUND]
        assert len(steps) == 3
        assert steps[2] is SubmitStep.TRY_AGAIN_LATER or (
            steps[2] is SubmitStep.REFUSED and events[2].detail == "txBAD_SEQ"
        )
    else:
        assert steps == [SubmitStep.SEND_LOST, SubmitStep.NOT_FOUND, SubmitStep.DUPLICATE]
    assert outcome.sends == 1  # the lost send is not counted: its answer never came
    assert {e.tx.hash for e in events} == {signed.hash}
    assert stage.applied.count(signed.hash) == 1
    after = await read_account(client, farmer.public_key)
    assert after is not None and after.sequence == before.sequence + 1
    assert after.kale is not None and before.kale is not None
    assert after.kale.balance == before.kale.balance - KALE  # staked once, not twice
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and pail.sequence == outcome.ledger


async def test_try_again_later_waits_and_resends_the_same_envelope(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1)
    account = await read_account(client, farmer.public_key)
    assert account is not None
    first = sign(await build_trustline(client, farmer.public_key), farmer)
    # The next transaction of the same account, built while the first is still queued.
    second = sign(
        await build_plant(
            client, farmer.public_key, 0, source=Account(farmer.public_key, first.sequence)
        ),
        farmer,
    )
    assert second.sequence == first.sequence + 1
    sent = await client.rpc.send_transaction(first.envelope_xdr)
    assert sent.status == SendTransactionStatus.PENDING
    events: list[SubmitEvent] = []
    outcome = await submit(client, second, observe=stage.closer(events=events))
    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    steps = [e.step for e in events]
    assert steps[0] is SubmitStep.TRY_AGAIN_LATER
    assert steps[-1] is SubmitStep.SENT
    assert stage.applied.index(first.hash) < stage.applied.index(second.hash)
    assert outcome.sends == steps.count(SubmitStep.TRY_AGAIN_LATER) + 1


async def test_expiry_is_reported_after_max_time_and_no_second_transaction_applies(
    stage: Stage,
) -> None:
    """Every send fails in transport; the same envelope is tried until a ledger closes past
    max_time, then EXPIRED. Its sequence number was never used."""
    client = stage.client
    (farmer,) = await stage.accounts(1)
    latest = await client.latest_ledger()
    max_time = latest.close_time + 12  # ledgers close 5 s apart: expired after three closes
    signed = sign(await build_trustline(client, farmer.public_key, max_time=max_time), farmer)
    assert signed.max_time == max_time
    await stage.faults(fail_next={"sendTransaction": 100}, error_kind="http")
    events: list[SubmitEvent] = []
    outcome = await submit(client, signed, observe=stage.closer({SubmitStep.SEND_LOST}, events))
    await stage.faults(fail_next={})

    assert outcome.status is TxStatus.EXPIRED, outcome.describe()
    assert outcome.db_status == "expired"
    assert attribute_fault(TxKind.TRUSTLINE, outcome) is Fault.CHAIN
    lost = [e for e in events if e.step is SubmitStep.SEND_LOST]
    assert len(lost) == 3 and {e.tx.hash for e in events} == {signed.hash}
    assert (await client.latest_ledger()).close_time > max_time
    assert signed.hash not in stage.applied and (await stage.info())["pending_transactions"] == 0
    account = await read_account(client, farmer.public_key)
    assert account is not None and account.sequence == signed.sequence - 1
    # Only now may a replacement be built: it takes the same sequence number and applies.
    again = sign(await build_trustline(client, farmer.public_key), farmer)
    assert again.sequence == signed.sequence and again.hash != signed.hash
    assert (await stage.settle(again)).ok


async def test_a_queued_transaction_dropped_at_max_time_is_expired(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1)
    signed = sign(await build_trustline(client, farmer.public_key), farmer)

    async def late_close(event: SubmitEvent) -> None:
        if event.step is SubmitStep.SENT:  # queued; the next ledger closes after max_time
            await stage.advance(client.config.tx_timeout_seconds + 1)
            await stage.close()

    outcome = await submit(client, signed, observe=late_close)
    assert outcome.status is TxStatus.EXPIRED, outcome.describe()
    assert outcome.sends == 1
    assert (await client.rpc.get_transaction(signed.hash)).status == GetTransactionStatus.NOT_FOUND
    account = await read_account(client, farmer.public_key)
    assert account is not None and account.sequence == signed.sequence - 1


@pytest.mark.parametrize("before_crash", ["applied", "queued", "recorded", "recorded_expired"])
async def test_reconcile_after_a_restart(stage: Stage, before_crash: str) -> None:
    """Only the stored envelope survives the crash; a new client settles its fate."""
    client = stage.client
    passphrase = client.config.network_passphrase
    (farmer,) = await stage.accounts(1, kale=KALE)
    stored = sign(await build_plant(client, farmer.public_key, KALE), farmer).envelope_xdr
    if before_crash in ("applied", "queued"):
        sent = await client.rpc.send_transaction(stored)
        assert sent.status == SendTransactionStatus.PENDING
    if before_crash == "applied":
        await stage.close()
    if before_crash == "recorded_expired":
        await stage.advance(client.config.tx_timeout_seconds + 1)
        await stage.close()

    restarted = ChainClient(
        client.config, retry=client.retry, poll_interval=client.poll_interval, stall_seconds=30
    )
    try:
        tx = SignedTx.from_envelope(stored, passphrase)
        events: list[SubmitEvent] = []
        outcome = await reconcile(restarted, tx, observe=stage.closer(events=events))
    finally:
        await restarted.aclose()

    steps = [e.step for e in events]
    if before_crash == "recorded_expired":
        assert outcome.status is TxStatus.EXPIRED, outcome.describe()
        assert outcome.sends == 0  # past max_time: not even resent
        account = await read_account(client, farmer.public_key)
        assert account is not None and account.sequence == tx.sequence - 1
        return
    assert outcome.status is TxStatus.SUCCESS, outcome.describe()
    assert stage.applied.count(tx.hash) == 1
    if before_crash == "applied":
        assert steps == [] and outcome.sends == 0
    elif before_crash == "queued":
        assert steps[:2] == [SubmitStep.NOT_FOUND, SubmitStep.DUPLICATE]
    else:
        assert steps[:2] == [SubmitStep.NOT_FOUND, SubmitStep.SENT]
    pail = await read_pail(client, farmer.public_key, 0)
    assert pail is not None and pail.stake == KALE


async def test_rejected_and_failed_classic_transactions(stage: Stage) -> None:
    client = stage.client
    payer, payee = await stage.accounts(2, kale=KALE)

    # A sequence number already used: refused on the first send, never queued.
    stale = Account(payer.public_key, (await read_account(client, payer.public_key)).sequence - 1)  # type: ignore[union-attr]
    rejected = await stage.run(await build_payment(client, stale, payee.public_key, 1), payer)
    assert rejected.status is TxStatus.REJECTED and rejected.result_code == "txBAD_SEQ"
    assert rejected.db_status == "failed" and rejected.error_code == "txBAD_SEQ"
    assert attribute_fault(TxKind.TRANSFER, rejected) is Fault.POOL

    # More KALE than the account holds: applied, failed, fee charged.
    failed = await stage.run(
        await build_payment(client, payer.public_key, payee.public_key, 2 * KALE), payer
    )
    assert failed.status is TxStatus.FAILED, failed.describe()
    assert (failed.result_code, failed.operation_code) == ("txFAILED", "PAYMENT_UNDERFUNDED")
    assert failed.fee_charged == client.config.base_fee_stroops

    # A destination without a trustline: the farmer's side is not set up.
    (bare,) = await stage.accounts(1)
    no_trust = await stage.run(
        await build_payment(client, payer.public_key, bare.public_key, 1), payer
    )
    assert no_trust.operation_code == "PAYMENT_NO_TRUST"
    assert attribute_fault(TxKind.TRANSFER, no_trust) is Fault.FARMER


async def test_payout_remove_trustline_and_merge(stage: Stage) -> None:
    """The account chores the wallet service does when a farmer leaves."""
    client = stage.client
    leaving, farmer_wallet = await stage.accounts(2, kale=3 * KALE)
    paid = await stage.run(
        await build_payment(client, leaving.public_key, farmer_wallet.public_key, 3 * KALE), leaving
    )
    assert paid.ok, paid.describe()
    removed = await stage.run(
        await build_trustline(client, leaving.public_key, remove=True), leaving
    )
    assert removed.ok, removed.describe()
    state = await read_account(client, leaving.public_key)
    assert state is not None and state.kale is None and state.sub_entries == 0
    merged = await stage.run(
        await build_close(client, leaving.public_key, farmer_wallet.public_key), leaving
    )
    assert merged.ok and merged.tx.kind is TxKind.CLOSE
    assert await read_account(client, leaving.public_key) is None
    wallet = await read_account(client, farmer_wallet.public_key)
    assert wallet is not None and wallet.kale is not None and wallet.kale.balance == 6 * KALE


async def test_a_close_sends_the_kale_removes_the_trustline_and_merges_in_one_transaction(
    stage: Stage,
) -> None:
    """What CloseWallet signs: the whole close applies together."""
    client = stage.client
    leaving, farmer_wallet = await stage.accounts(2, kale=3 * KALE)
    before = await read_account(client, farmer_wallet.public_key)
    assert before is not None
    close = await build_close(client, leaving.public_key, farmer_wallet.public_key)
    assert len(close.envelope.transaction.operations) == 3
    closed = await stage.run(close, leaving)
    assert closed.ok and closed.tx.kind is TxKind.CLOSE, closed.describe()
    assert await read_account(client, leaving.public_key) is None
    after = await read_account(client, farmer_wallet.public_key)
    assert after is not None and after.kale is not None and after.kale.balance == 6 * KALE
    assert after.xlm_balance > before.xlm_balance  # the closed account's XLM, merged


async def test_transport_failures_are_retried_then_reported_as_the_chains(stage: Stage) -> None:
    client = stage.client
    (farmer,) = await stage.accounts(1)
    await stage.faults(fail_next={"getLedgerEntries": 2}, error_kind="rpc")
    assert await read_account(client, farmer.public_key) is not None
    await stage.faults(fail_next={"getLedgerEntries": 100}, error_kind="http")
    with pytest.raises(ChainUnavailableError) as down:
        await read_account(client, farmer.public_key)
    assert attribute_fault(TxKind.PLANT, down.value) is Fault.CHAIN
    assert stage.server.url.split("//")[1] in str(down.value)
    await stage.faults(fail_next={})

    # The shared waiter's scan (getTransactions) failing while a transaction is in
    # flight: each lost answer is the drive's own, and it keeps looking.
    signed = sign(await build_trustline(client, farmer.public_key), farmer)
    await stage.faults(fail_next={"getTransactions": 3})
    events: list[SubmitEvent] = []
    outcome = await submit(client, signed, observe=stage.closer(events=events))
    assert outcome.ok, outcome.describe()
    assert [e.step for e in events].count(SubmitStep.LOOKUP_FAILED) == 3
