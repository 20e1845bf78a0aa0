"""The consistency check proves every payout was debited once and a failed one reversed."""

from __future__ import annotations

from kalepool.db.consistency import check_consistency

from .rows import Conn, Rows


def test_payout_debits_and_reversals_are_checked(db: Conn, rows: Rows) -> None:
    farmer = rows.farmer(rows.pooler())
    rows.ledger(farmer, 1_000)
    assert check_consistency(db) == []

    never_debited = rows.payout(farmer, 100)
    assert check_consistency(db) == [
        f"payout {never_debited} (pending) has 0 debit entries, expected 1"
    ]
    rows.ledger(farmer, -100, kind="payout", payout_id=never_debited)
    assert check_consistency(db) == []

    rows.fail_payout(never_debited)
    assert check_consistency(db) == [f"payout {never_debited} failed but was never reversed"]
    rows.ledger(farmer, 100, kind="payout_reversal", payout_id=never_debited)
    assert check_consistency(db) == []
    assert rows.balance(farmer) == 1_000
