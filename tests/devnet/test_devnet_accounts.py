"""Accounts, fees, reserves, classic operations and stellar-core's result codes."""

from __future__ import annotations

from stellar_sdk import Account, Asset, Keypair, TransactionBuilder
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from .kit import BASE_FEE, KALE, XLM, Kit, fee_charged, result_code

RESERVE = 5_000_000


def op_codes(result_xdr: str) -> list[str]:
    result = stellar_xdr.TransactionResult.from_xdr(result_xdr).result
    names = []
    for op in result.results or []:
        if op.tr is None:
            names.append(op.code.name)
            continue
        tr = op.tr
        inner = next(getattr(tr, a) for a in vars(tr) if a != "type" and getattr(tr, a) is not None)
        names.append(inner.code.name)
    return names


async def test_friendbot_creates_and_tops_up(kit: Kit) -> None:
    kp = Keypair.random()
    status, body = await kit.friendbot(kp.public_key)
    assert status == 200 and body["status"] == "PENDING"
    closed = await kit.close()
    assert body["hash"] in closed["applied"]
    created = await kit.balances(kp.public_key)
    assert created is not None
    assert created.xlm == 10_000 * XLM
    assert created.seq == closed["sequence"] << 32  # a new account's sequence number
    await kit.friendbot(kp.public_key)
    await kit.close()
    topped = await kit.balances(kp.public_key)
    assert topped is not None and topped.xlm == 20_000 * XLM and topped.seq == created.seq
    funded = await kit.rpc.get_transaction(body["hash"])
    assert funded.status == GetTransactionStatus.SUCCESS


async def test_friendbot_bad_input(kit: Kit) -> None:
    status, body = await kit.friendbot("GNOTANACCOUNT")
    assert status == 400 and "addr" in body["detail"]
    kp = await kit.new_account()
    status, body = await kit.friendbot(kp.public_key, kale=5)
    assert status == 400 and "trustline" in body["detail"]
    async with kit.http.get(
        f"{kit.server.url}/friendbot", params={"addr": kp.public_key, "kale": "-1"}
    ) as resp:
        assert resp.status == 400
    assert (await kit.balances(kp.public_key)) is not None


async def test_payment_charges_fee_and_moves_xlm(kit: Kit) -> None:
    a, b = await kit.new_accounts(2)
    before_a, before_b = await kit.balances(a.public_key), await kit.balances(b.public_key)
    assert before_a is not None and before_b is not None
    tx = (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "12.5").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.status == GetTransactionStatus.SUCCESS
    fee = fee_charged(got)
    assert fee == BASE_FEE
    after_a, after_b = await kit.balances(a.public_key), await kit.balances(b.public_key)
    assert after_a is not None and after_b is not None
    assert after_a.xlm == before_a.xlm - 125_000_000 - fee
    assert after_b.xlm == before_b.xlm + 125_000_000
    assert after_a.seq == before_a.seq + 1
    # Each operation costs the base fee.
    tx = (
        (await kit.builder(a))
        .append_payment_op(b.public_key, Asset.native(), "1")
        .append_payment_op(b.public_key, Asset.native(), "1")
        .build()
    )
    tx.sign(a)
    assert fee_charged(await kit.submit(tx)) == 2 * BASE_FEE


async def test_trustlines_reserves_and_kale_payments(kit: Kit) -> None:
    a, b = await kit.new_accounts(2, trust=True)
    bal = await kit.balances(a.public_key)
    assert bal is not None and bal.sub_entries == 1 and bal.kale == 0
    status, _ = await kit.friendbot(a.public_key, kale=100 * KALE)
    assert status == 200
    await kit.close()
    tx = (await kit.builder(a)).append_payment_op(b.public_key, kit.asset, "40").build()
    tx.sign(a)
    assert (await kit.submit(tx)).status == GetTransactionStatus.SUCCESS
    ka, kb = await kit.balances(a.public_key), await kit.balances(b.public_key)
    assert ka is not None and kb is not None and ka.kale == 60 * KALE and kb.kale == 40 * KALE

    # Not enough KALE: the transaction fails, the fee is still charged, the sequence used.
    tx = (await kit.builder(a)).append_payment_op(b.public_key, kit.asset, "61").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.status == GetTransactionStatus.FAILED
    assert got.result_xdr is not None and op_codes(got.result_xdr) == ["PAYMENT_UNDERFUNDED"]
    after = await kit.balances(a.public_key)
    assert after is not None and after.kale == 60 * KALE
    assert after.xlm == ka.xlm - fee_charged(got) and after.seq == ka.seq + 1

    # No trustline on the other side.
    c = await kit.new_account()
    tx = (await kit.builder(a)).append_payment_op(c.public_key, kit.asset, "1").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == ["PAYMENT_NO_TRUST"]

    # The reserve: an account keeps (2 + subentries) x 0.5 XLM.
    xlm = await kit.balances(b.public_key)
    assert xlm is not None
    spendable = xlm.xlm - 3 * RESERVE - BASE_FEE
    tx = (
        (await kit.builder(b))
        .append_payment_op(c.public_key, Asset.native(), f"{(spendable + 1) / XLM:.7f}")
        .build()
    )
    tx.sign(b)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == ["PAYMENT_UNDERFUNDED"]
    tx = (
        (await kit.builder(b))
        .append_payment_op(c.public_key, Asset.native(), f"{(spendable - BASE_FEE) / XLM:.7f}")
        .build()
    )
    tx.sign(b)
    assert (await kit.submit(tx)).status == GetTransactionStatus.SUCCESS


async def test_change_trust_remove_and_low_reserve(kit: Kit) -> None:
    a = await kit.new_account(trust=True)
    tx = (await kit.builder(a)).append_change_trust_op(kit.asset, limit="0").build()
    tx.sign(a)
    assert (await kit.submit(tx)).status == GetTransactionStatus.SUCCESS
    bal = await kit.balances(a.public_key)
    assert bal is not None and bal.kale is None and bal.sub_entries == 0
    # An account holding just its base reserve cannot add a trustline.
    poor = Keypair.random()
    tx = (await kit.builder(a)).append_create_account_op(poor.public_key, "1").build()
    tx.sign(a)
    assert (await kit.submit(tx)).status == GetTransactionStatus.SUCCESS
    tx = (
        (await kit.builder(a)).append_payment_op(poor.public_key, Asset.native(), "0.00002").build()
    )
    tx.sign(a)
    await kit.submit(tx)
    tx = (await kit.builder(poor)).append_change_trust_op(kit.asset).build()
    tx.sign(poor)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == ["CHANGE_TRUST_LOW_RESERVE"]


async def test_create_account_and_merge(kit: Kit) -> None:
    a = await kit.new_account()
    fresh = Keypair.random()
    tx = (await kit.builder(a)).append_create_account_op(fresh.public_key, "0.5").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == ["CREATE_ACCOUNT_LOW_RESERVE"]
    tx = (await kit.builder(a)).append_create_account_op(fresh.public_key, "5").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.status == GetTransactionStatus.SUCCESS
    created = await kit.balances(fresh.public_key)
    assert created is not None and created.xlm == 5 * XLM and created.seq == got.ledger << 32
    tx = (await kit.builder(a)).append_create_account_op(fresh.public_key, "5").build()
    tx.sign(a)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == [
        "CREATE_ACCOUNT_ALREADY_EXIST"
    ]

    # Merge needs the sequence to be below the current ledger's starting sequence.
    await kit.close()
    before = await kit.balances(a.public_key)
    assert before is not None
    tx = (await kit.builder(fresh)).append_account_merge_op(a.public_key).build()
    tx.sign(fresh)
    got = await kit.submit(tx)
    assert got.status == GetTransactionStatus.SUCCESS, got.result_xdr
    assert await kit.balances(fresh.public_key) is None
    after = await kit.balances(a.public_key)
    assert after is not None and after.xlm == before.xlm + 5 * XLM - fee_charged(got)

    trusting = await kit.new_account(trust=True)
    tx = (await kit.builder(trusting)).append_account_merge_op(a.public_key).build()
    tx.sign(trusting)
    got = await kit.submit(tx)
    assert got.result_xdr is not None and op_codes(got.result_xdr) == [
        "ACCOUNT_MERGE_HAS_SUB_ENTRIES"
    ]


async def _error_code(kit: Kit, tx: object) -> str:
    sent = await kit.rpc.send_transaction(tx)  # type: ignore[arg-type]
    assert sent.status == SendTransactionStatus.ERROR, sent
    assert sent.error_result_xdr is not None
    return result_code(sent.error_result_xdr)


async def test_submission_result_codes(kit: Kit) -> None:
    a, b = await kit.new_accounts(2)
    account = await kit.rpc.load_account(a.public_key)
    start_seq = account.sequence

    bad_seq = (
        TransactionBuilder(account, kit.passphrase, 100)
        .append_bump_sequence_op(0)
        .set_timeout(60)
        .build()
    )
    bad_seq.transaction.sequence += 1
    bad_seq.sign(a)
    assert await _error_code(kit, bad_seq) == "txBAD_SEQ"

    low_fee = (await kit.builder(a, fee=50)).append_bump_sequence_op(0).build()
    low_fee.sign(a)
    assert await _error_code(kit, low_fee) == "txINSUFFICIENT_FEE"

    unsigned = (await kit.builder(a)).append_bump_sequence_op(0).build()
    assert await _error_code(kit, unsigned) == "txBAD_AUTH"
    wrong_key = (await kit.builder(a)).append_bump_sequence_op(0).build()
    wrong_key.sign(b)
    assert await _error_code(kit, wrong_key) == "txBAD_AUTH"
    extra = (await kit.builder(a)).append_bump_sequence_op(0).build()
    extra.sign(a)
    extra.sign(b)
    assert await _error_code(kit, extra) == "txBAD_AUTH_EXTRA"

    ghost = Keypair.random()
    no_account = (
        TransactionBuilder(Account(ghost.public_key, 1), kit.passphrase, 100)
        .append_bump_sequence_op(0)
        .set_timeout(60)
        .build()
    )
    no_account.sign(ghost)
    assert await _error_code(kit, no_account) == "txNO_ACCOUNT"

    latest = await kit.rpc.get_latest_ledger()
    too_late = (
        TransactionBuilder(await kit.rpc.load_account(a.public_key), kit.passphrase, 100)
        .append_bump_sequence_op(0)
        .add_time_bounds(0, latest.close_time - 1)
        .build()
    )
    too_late.sign(a)
    assert await _error_code(kit, too_late) == "txTOO_LATE"
    too_early = (
        TransactionBuilder(await kit.rpc.load_account(a.public_key), kit.passphrase, 100)
        .append_bump_sequence_op(0)
        .add_time_bounds(latest.close_time + 3600, 0)
        .build()
    )
    too_early.sign(a)
    assert await _error_code(kit, too_early) == "txTOO_EARLY"

    # An operation whose source did not sign fails the whole transaction at submission.
    op_auth = (
        (await kit.builder(a))
        .append_payment_op(a.public_key, Asset.native(), "1", source=b.public_key)
        .build()
    )
    op_auth.sign(a)
    sent = await kit.rpc.send_transaction(op_auth)
    assert sent.error_result_xdr is not None
    assert result_code(sent.error_result_xdr) == "txFAILED"
    assert op_codes(sent.error_result_xdr) == ["opBAD_AUTH"]

    malformed = (
        (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "0.0000001").build()
    )
    malformed.transaction.operations[0].amount = "0"  # type: ignore[attr-defined]
    malformed.sign(a)
    assert await _error_code(kit, malformed) == "txFAILED"

    # None of it changed anything.
    assert (await kit.rpc.load_account(a.public_key)).sequence == start_seq


async def test_insufficient_balance_for_the_fee(kit: Kit) -> None:
    a = await kit.new_account()
    poor = Keypair.random()
    tx = (await kit.builder(a)).append_create_account_op(poor.public_key, "1").build()
    tx.sign(a)
    await kit.submit(tx)
    pay = (await kit.builder(poor)).append_bump_sequence_op(0).build()
    pay.sign(poor)
    assert await _error_code(kit, pay) == "txINSUFFICIENT_BALANCE"


async def test_one_pending_per_account_duplicate_and_replay(kit: Kit) -> None:
    a, b = await kit.new_accounts(2)
    before = await kit.balances(b.public_key)
    assert before is not None
    first = (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "3").build()
    first.sign(a)
    sent = await kit.rpc.send_transaction(first)
    assert sent.status == SendTransactionStatus.PENDING
    assert sent.hash == first.hash_hex()  # the real envelope hash
    again = await kit.rpc.send_transaction(first)
    assert again.status == SendTransactionStatus.DUPLICATE and again.hash == sent.hash
    second = (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "4").build()
    second.transaction.sequence += 1
    second.sign(a)
    assert (await kit.rpc.send_transaction(second)).status == SendTransactionStatus.TRY_AGAIN_LATER
    assert (await kit.rpc.get_transaction(sent.hash)).status == GetTransactionStatus.NOT_FOUND
    await kit.close()
    assert (await kit.rpc.get_transaction(sent.hash)).status == GetTransactionStatus.SUCCESS
    # Replaying the applied envelope: stellar-core bans an applied hash for a while
    # (TRY_AGAIN_LATER), after which its spent sequence number answers txBAD_SEQ.
    replay = await kit.rpc.send_transaction(first)
    assert replay.status == SendTransactionStatus.TRY_AGAIN_LATER
    await kit.close(10)
    replay = await kit.rpc.send_transaction(first)
    assert replay.status == SendTransactionStatus.ERROR
    assert (
        replay.error_result_xdr is not None and result_code(replay.error_result_xdr) == "txBAD_SEQ"
    )
    await kit.close()
    after = await kit.balances(b.public_key)
    assert after is not None and after.xlm == before.xlm + 3 * XLM  # applied exactly once


async def test_expired_transaction_is_dropped_from_the_queue(kit: Kit) -> None:
    a, b = await kit.new_accounts(2)
    latest = await kit.rpc.get_latest_ledger()
    account = await kit.rpc.load_account(a.public_key)
    start_seq = account.sequence
    tx = (
        TransactionBuilder(account, kit.passphrase, 100)
        .append_payment_op(b.public_key, Asset.native(), "1")
        .add_time_bounds(0, latest.close_time + 30)  # outlasts the next close, not 60 s
        .build()
    )
    tx.sign(a)
    assert (await kit.rpc.send_transaction(tx)).status == SendTransactionStatus.PENDING
    await kit.advance(60)  # the ledger closes after maxTime: the network drops it
    await kit.close()
    assert (await kit.rpc.get_transaction(tx.hash_hex())).status == GetTransactionStatus.NOT_FOUND
    assert (await kit.rpc.load_account(a.public_key)).sequence == start_seq
    # Once dropped, a new transaction from the account is accepted.
    retry = (await kit.builder(a)).append_payment_op(b.public_key, Asset.native(), "1").build()
    retry.sign(a)
    assert (await kit.submit(retry)).status == GetTransactionStatus.SUCCESS


async def test_fee_bump(kit: Kit) -> None:
    inner_source, sponsor, dest = await kit.new_accounts(3)
    inner = (
        (await kit.builder(inner_source))
        .append_payment_op(dest.public_key, Asset.native(), "2")
        .build()
    )
    inner.sign(inner_source)
    bump = TransactionBuilder.build_fee_bump_transaction(
        sponsor.public_key, 200, inner, kit.passphrase
    )
    bump.sign(sponsor)
    before_inner, before_sponsor = (
        await kit.balances(inner_source.public_key),
        await kit.balances(sponsor.public_key),
    )
    assert before_inner is not None and before_sponsor is not None
    got = await kit.submit(bump)  # type: ignore[arg-type]
    assert got.status == GetTransactionStatus.SUCCESS and got.fee_bump
    assert got.result_xdr is not None and result_code(got.result_xdr) == "txFEE_BUMP_INNER_SUCCESS"
    after_inner, after_sponsor = (
        await kit.balances(inner_source.public_key),
        await kit.balances(sponsor.public_key),
    )
    assert after_inner is not None and after_sponsor is not None
    assert after_inner.xlm == before_inner.xlm - 2 * XLM and after_inner.seq == before_inner.seq + 1
    assert (
        after_sponsor.xlm == before_sponsor.xlm - fee_charged(got)
        and fee_charged(got) == 2 * BASE_FEE
    )


async def test_friendbot_kale_is_exact(kit: Kit) -> None:
    amount = 922_337_203_685_477_580  # near i64's limit: no float rounding on the way
    kp = await kit.new_account(trust=True, kale=amount)
    bal = await kit.balances(kp.public_key)
    assert bal is not None and bal.kale == amount
