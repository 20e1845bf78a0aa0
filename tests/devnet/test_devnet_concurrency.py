"""Many accounts submitting at once: every transaction applies, none twice."""

from __future__ import annotations

import asyncio

from stellar_sdk import Asset, Keypair
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus

from .kit import XLM, Kit

ACCOUNTS = 500


async def test_500_accounts_apply_once(kit: Kit) -> None:
    bank = await kit.new_account()
    sink = await kit.new_account()
    keys = [Keypair.random() for _ in range(ACCOUNTS)]
    for start in range(0, ACCOUNTS, 100):
        builder = await kit.builder(bank)
        for kp in keys[start : start + 100]:
            builder.append_create_account_op(kp.public_key, "5")
        tx = builder.build()
        tx.sign(bank)
        assert (await kit.submit(tx)).status == GetTransactionStatus.SUCCESS
    before = await kit.balances(sink.public_key)
    assert before is not None

    async def pay(kp: Keypair) -> tuple[str, list[str]]:
        tx = (await kit.builder(kp)).append_payment_op(sink.public_key, Asset.native(), "1").build()
        tx.sign(kp)
        # The same envelope twice at once: one is queued, the other is a duplicate.
        answers = await asyncio.gather(kit.rpc.send_transaction(tx), kit.rpc.send_transaction(tx))
        return tx.hash_hex(), sorted(a.status.value for a in answers)

    sent = await asyncio.gather(*(pay(kp) for kp in keys))
    hashes = [h for h, _ in sent]
    for _, statuses in sent:
        assert statuses == ["DUPLICATE", "PENDING"]
    closed = await kit.close()
    assert sorted(closed["applied"]) == sorted(hashes)  # all in one ledger, each once
    results = await asyncio.gather(*(kit.rpc.get_transaction(h) for h in hashes))
    assert all(r.status == GetTransactionStatus.SUCCESS for r in results)
    assert all(r.ledger == closed["sequence"] for r in results)
    assert sorted(r.application_order for r in results) == list(range(1, ACCOUNTS + 1))  # type: ignore[type-var]
    after = await kit.balances(sink.public_key)
    assert after is not None and after.xlm == before.xlm + ACCOUNTS * XLM

    # Replayed after they applied: every one is refused (stellar-core bans applied hashes
    # for a while: TRY_AGAIN_LATER), nothing moves.
    replays = await asyncio.gather(
        *(kit.rpc.send_transaction(r.envelope_xdr) for r in results)  # type: ignore[arg-type]
    )
    for r in replays:
        assert r.status == SendTransactionStatus.TRY_AGAIN_LATER
    await kit.close()
    final = await kit.balances(sink.public_key)
    assert final is not None and final.xlm == after.xlm
    entries = []
    for start in range(0, ACCOUNTS, 200):
        keys_xdr = [
            stellar_xdr.LedgerKey(
                stellar_xdr.LedgerEntryType.ACCOUNT,
                account=stellar_xdr.LedgerKeyAccount(kp.xdr_account_id()),
            )
            for kp in keys[start : start + 200]
        ]
        got = await kit.rpc.get_ledger_entries(keys_xdr)
        entries.extend(got.entries or [])
    assert len(entries) == ACCOUNTS
    for item in entries:
        account = stellar_xdr.LedgerEntryData.from_xdr(item.xdr).account
        assert account is not None
        assert account.balance.int64 == 5 * XLM - XLM - 100
        assert account.seq_num.sequence_number.int64 & 0xFFFFFFFF == 1  # exactly one transaction
