"""The consistency check proves every payout was debited once and a failed one reversed."""

from __future__ import annotations

import uuid

from kalepool.db.consistency import check_consistency

from .rows import Conn, Rows


def _payout(db: Conn, farmer: uuid.UUID, amount: int) -> uuid.UUID:
    payout_id = uuid.uuid4()
    db.execute(
        "INSERT INTO payouts (id, farmer_id, destination, amount, wallet_key)"
        " VALUES (%s, %s, %s, %s, %s)",
        (payout_id, farmer, "GDESTINATION", amount, f"payout:{payout_id}"),
    )
    return payout_id


def _fail(db: Conn, payout_id: uuid.UUID) -> None:
    db.execute(
        "UPDATE payouts SET status = 'failed', error_message = 'transfer failed',"
        " completed_at = now() WHERE id = %s",
        (payout_id,),
    )


def test_payout_debits_and_reversals_are_checked(db: Conn, rows: Rows) -> None:
    farmer = rows.farmer(rows.pooler())
    rows.ledger(farmer, 1_000)
    assert check_consistency(db) == []

    never_debited = _payout(db, farmer, 100)
    assert check_consistency(db) == [
        f"payout {never_debited} (pending) has 0 debit entries, expected 1"
    ]
    rows.ledger(farmer, -100, kind="payout", payout_id=never_debited)
    assert check_consistency(db) == []

    _fail(db, never_debited)
    assert check_consistency(db) == [f"payout {never_debited} failed but was never reversed"]
    rows.ledger(farmer, 100, kind="payout_reversal", payout_id=never_debited)
    assert check_consistency(db) == []
    assert rows.balance(farmer) == 1_000
