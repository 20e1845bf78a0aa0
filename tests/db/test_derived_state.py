"""Balances, counters and block totals follow the events, and can be proven and rebuilt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors

from kalepool.db.consistency import check_consistency, rebuild_derived_state
from tests.dbkit import owner_view

from .rows import Conn, Rows, tx_hash


def _current_farmers(conn: Conn, pooler: UUID) -> int:
    row = conn.execute("SELECT current_farmers FROM poolers WHERE id = %s", (pooler,)).fetchone()
    assert row is not None
    return int(row[0])


# poolers.current_farmers ---------------------------------------------------------


def test_current_farmers_follows_farmers(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler(max_farmers=5)
    other = rows.pooler(max_farmers=5)
    a = rows.farmer(pooler)
    b = rows.farmer(pooler)
    rows.farmer(pooler, status="leaving")
    assert _current_farmers(db, pooler) == 2

    db.execute("UPDATE farmers SET status = 'leaving' WHERE id = %s", (a,))
    assert _current_farmers(db, pooler) == 1
    db.execute("UPDATE farmers SET status = 'active' WHERE id = %s", (a,))
    assert _current_farmers(db, pooler) == 2
    db.execute("UPDATE farmers SET is_funded = true, stake_bps = 100 WHERE id = %s", (a,))
    assert _current_farmers(db, pooler) == 2

    db.execute("UPDATE farmers SET pooler_id = %s WHERE id = %s", (other, b))
    assert (_current_farmers(db, pooler), _current_farmers(db, other)) == (1, 1)

    db.execute("UPDATE farmers SET status = 'departed' WHERE id = %s", (a,))
    db.execute("DELETE FROM farmers WHERE id = %s", (b,))
    assert (_current_farmers(db, pooler), _current_farmers(db, other)) == (0, 0)
    assert check_consistency(db) == []


def test_a_full_pooler_takes_no_more_active_farmers(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler(max_farmers=2)
    rows.farmer(pooler)
    waiting = rows.farmer(pooler, status="leaving")
    rows.farmer(pooler)
    with pytest.raises(errors.CheckViolation) as caught:
        rows.farmer(pooler)
    assert caught.value.diag.constraint_name == "poolers_capacity"
    with pytest.raises(errors.CheckViolation):
        db.execute("UPDATE farmers SET status = 'active' WHERE id = %s", (waiting,))
    assert _current_farmers(db, pooler) == 2


def test_current_farmers_cannot_be_written(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    with pytest.raises(errors.GeneratedAlways, match="derived"):
        db.execute("UPDATE poolers SET current_farmers = 3 WHERE id = %s", (pooler,))
    with pytest.raises(errors.GeneratedAlways):
        rows.pooler(current_farmers=1)
    # Other columns stay writable.
    db.execute("UPDATE poolers SET last_seen_at = now(), max_farmers = 20 WHERE id = %s", (pooler,))


def _times(conn: Conn, farmer: UUID) -> tuple[Any, Any]:
    row = conn.execute("SELECT funded_at, left_at FROM farmers WHERE id = %s", (farmer,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_funding_and_leaving_are_stamped_by_their_transitions(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    assert _times(db, farmer) == (None, None)
    db.execute("UPDATE farmers SET is_funded = true WHERE id = %s", (farmer,))
    funded, left = _times(db, farmer)
    assert funded is not None and left is None
    db.execute("UPDATE farmers SET stake_bps = 100 WHERE id = %s", (farmer,))
    assert _times(db, farmer) == (funded, None)
    db.execute("UPDATE farmers SET status = 'leaving' WHERE id = %s", (farmer,))
    funded_again, left = _times(db, farmer)
    assert funded_again == funded and left is not None
    db.execute("UPDATE farmers SET status = 'departed' WHERE id = %s", (farmer,))
    assert _times(db, farmer) == (funded, left)  # it left when it stopped being active
    gone = rows.farmer(pooler, status="leaving", is_funded=True)
    assert None not in _times(db, gone)


def test_funding_and_leaving_times_cannot_be_written(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    for column in ("funded_at", "left_at"):
        with pytest.raises(errors.GeneratedAlways):
            db.execute(f"UPDATE farmers SET {column} = now() WHERE id = %s".encode(), (farmer,))
        with pytest.raises(errors.GeneratedAlways):
            rows.farmer(pooler, **{column: "2025-01-01T00:00:00Z"})


# block_operations ------------------------------------------------------------------

TOTALS = (
    "total_farmers, successful_plants, failed_plants, successful_works, failed_works,"
    " successful_harvests, failed_harvests, total_staked, total_rewards"
)


def _totals(conn: Conn, pooler: UUID, block: int) -> tuple[Any, ...] | None:
    query = f"SELECT {TOTALS} FROM block_operations WHERE pooler_id = %s AND block_index = %s"
    return conn.execute(query.encode(), (pooler, block)).fetchone()


def test_block_totals_follow_events(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    a, b, c = (rows.farmer(pooler) for _ in range(3))
    rows.ledger(b, 250)
    rows.planting(a, pooler, 50, status="failed")
    rows.planting(a, pooler, 50, stake_amount=100)
    rows.planting(b, pooler, 50, stake_amount=250)
    rows.planting(c, pooler, 50, status="failed")
    rows.planting(c, pooler, 50, status="failed")
    rows.work(a, pooler, 50)
    rows.work(b, pooler, 50, status="failed")
    rows.harvest(a, pooler, 50, status="failed")
    rows.harvest(a, pooler, 50, reward_amount=7_000, stake_amount=100)
    rows.planting(a, pooler, 51)  # another block, its own row

    assert _totals(db, pooler, 50) == (3, 2, 3, 1, 1, 1, 1, 350, 7_000)
    assert _totals(db, pooler, 51) == (1, 1, 0, 0, 0, 0, 0, 0, 0)
    assert check_consistency(db) == []


def test_the_pool_service_owns_the_phase_columns(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    claim = (
        "INSERT INTO block_operations (pooler_id, block_index, plant_requested_at)"
        " VALUES (%s, %s, now()) ON CONFLICT (pooler_id, block_index) DO NOTHING RETURNING id"
    )
    assert db.execute(claim, (pooler, 60)).fetchone() is not None
    # Asking again for the same (pooler, block) claims nothing: the idempotent plant request.
    assert db.execute(claim, (pooler, 60)).fetchone() is None
    rows.planting(farmer, pooler, 60, stake_amount=5)
    db.execute(
        "UPDATE block_operations SET plant_completed_at = now(), status = 'completed'"
        " WHERE pooler_id = %s AND block_index = 60",
        (pooler,),
    )
    assert _totals(db, pooler, 60) == (1, 1, 0, 0, 0, 0, 0, 5, 0)

    for statement in (
        "UPDATE block_operations SET successful_plants = 9 WHERE pooler_id = %s",
        "UPDATE block_operations SET total_rewards = total_rewards + 1 WHERE pooler_id = %s",
    ):
        with pytest.raises(errors.GeneratedAlways):
            db.execute(statement.encode(), (pooler,))
    with pytest.raises(errors.GeneratedAlways):
        db.execute(
            "INSERT INTO block_operations (pooler_id, block_index, total_staked)"
            " VALUES (%s, 61, 5)",
            (pooler,),
        )
    with pytest.raises(errors.RestrictViolation):
        db.execute("DELETE FROM block_operations WHERE pooler_id = %s", (pooler,))


# Balances ----------------------------------------------------------------------------


def test_chain_events_post_to_the_ledger_by_themselves(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    rows.ledger(farmer, 1_000)  # KALE the farmer brought
    rows.planting(farmer, pooler, 70, stake_amount=400)
    assert rows.balance(farmer) == 600
    rows.harvest(farmer, pooler, 70, reward_amount=9_000, stake_amount=400)
    assert rows.balance(farmer) == 10_000
    # A zero stake and an empty harvest post nothing (the ledger holds no zero entries).
    rows.planting(farmer, pooler, 71)
    rows.harvest(farmer, pooler, 71)
    kinds = db.execute(
        "SELECT kind::text, amount FROM balance_ledger WHERE farmer_id = %s ORDER BY id", (farmer,)
    ).fetchall()
    assert kinds == [("adjustment", 1_000), ("stake", -400), ("harvest", 9_400)]


def test_ledger_entries_must_match_what_they_reference(rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    other = rows.farmer(pooler)
    failed_harvest = rows.harvest(farmer, pooler, 80, status="failed")
    compensation = rows.compensation(farmer, pooler, 80, amount=50)
    payout = rows.payout(farmer, 10)
    rows.ledger(farmer, 100)
    bad: list[tuple[UUID, int, str, dict[str, Any]]] = [
        (farmer, 5, "harvest", {"harvest_id": failed_harvest}),
        (farmer, 49, "compensation", {"compensation_id": compensation}),
        (other, 50, "compensation", {"compensation_id": compensation}),
        (farmer, -11, "payout", {"payout_id": payout}),
        (farmer, 10, "payout_reversal", {"payout_id": payout}),  # not failed, never debited
    ]
    for who, amount, kind, refs in bad:
        with pytest.raises(errors.CheckViolation) as caught:
            rows.ledger(who, amount, kind=kind, **refs)
        assert caught.value.diag.constraint_name == "balance_ledger_reference"
    with pytest.raises(errors.CheckViolation) as shape:
        rows.ledger(farmer, 5, kind="harvest")  # no harvest named
    assert shape.value.diag.constraint_name == "balance_ledger_kind_shape"
    assert rows.balance(farmer) == 100


def test_a_payout_is_debited_once_and_reversed_once_when_it_fails(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    rows.ledger(farmer, 1_000)
    payout = rows.payout(farmer, 80)
    rows.ledger(farmer, -80, kind="payout", payout_id=payout)
    assert rows.balance(farmer) == 920
    with pytest.raises(errors.UniqueViolation):
        rows.ledger(farmer, -80, kind="payout", payout_id=payout)

    rows.fail_payout(payout)
    assert check_consistency(db) == [f"payout {payout} failed but was never reversed"]
    rows.ledger(farmer, 80, kind="payout_reversal", payout_id=payout)
    assert rows.balance(farmer) == 1_000
    with pytest.raises(errors.UniqueViolation):
        rows.ledger(farmer, 80, kind="payout_reversal", payout_id=payout)
    assert check_consistency(db) == []


def test_no_ledger_entry_names_a_wallet_transaction(rows: Rows) -> None:
    """The pool's books reference the pool's own rows: a payout is a `payouts` row (the
    wallet's transaction is the wallet's), and no entry carries a wallet reference."""
    farmer = rows.farmer(rows.pooler())
    rows.ledger(farmer, 100)
    transfer = rows.transaction("payout", farmer_id=farmer, amount=10)
    for amount, kind, refs in [
        (-10, "payout", {"transaction_id": transfer}),
        (-10, "fee", {"transaction_id": transfer}),
        (-10, "fee", {"tx_hash": tx_hash()}),
    ]:
        with pytest.raises(errors.CheckViolation) as caught:
            rows.ledger(farmer, amount, kind=kind, **refs)
        assert caught.value.diag.constraint_name == "balance_ledger_no_wallet_reference"
    assert rows.balance(farmer) == 100


def test_money_out_cannot_overdraw(rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    rows.ledger(farmer, 100)
    big = rows.payout(farmer, 101)
    for amount, kind, refs in [
        (-101, "payout", {"payout_id": big}),
        (-101, "fee", {}),
        (-101, "adjustment", {}),
    ]:
        with pytest.raises(errors.CheckViolation) as caught:
            rows.ledger(farmer, amount, kind=kind, **refs)
        assert caught.value.diag.constraint_name == "balance_ledger_no_overdraft"
    rows.ledger(farmer, -100, kind="fee")
    assert rows.balance(farmer) == 0


def test_current_balance_cannot_be_written(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    with pytest.raises(errors.GeneratedAlways):
        db.execute("UPDATE farmers SET current_balance = 10 WHERE id = %s", (farmer,))
    with pytest.raises(errors.GeneratedAlways):
        rows.farmer(pooler, current_balance=10)
    assert rows.balance(farmer) == 0


# Hypothesis: any sequence of ledger activity keeps balance == sum(entries) ----------


@pytest.fixture(scope="module")
def shared_conn(pg_server: Any, migrated_template: str) -> Iterator[Conn]:
    """One database for the generated examples; each example rolls itself back."""
    name = pg_server.create_database(template=migrated_template)
    with psycopg.connect(owner_view(pg_server.conninfo(name)), autocommit=True) as conn:
        yield conn
    pg_server.drop_database(name)


AMOUNT = st.integers(min_value=1, max_value=10**13)
LEDGER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("plant"), st.integers(min_value=0, max_value=10**13)),
        st.tuples(st.just("harvest"), st.integers(0, 10**13), st.integers(0, 10**13)),
        st.tuples(st.just("payout"), AMOUNT),
        st.tuples(st.just("fail_last_payout")),
        st.tuples(st.just("fee"), AMOUNT),
        st.tuples(st.just("adjustment"), st.integers(-(10**13), 10**13).filter(bool)),
    ),
    max_size=30,
)


def _balance_change(op: str, args: list[int], payouts: list[tuple[UUID, int]]) -> int:
    """What an operation would do to the balance, if it is let through."""
    if op == "harvest":
        return args[0] + args[1]
    if op == "fail_last_payout":
        return payouts[-1][1]
    return args[0] if op == "adjustment" else -args[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=LEDGER_OPS)
def test_balances_equal_the_sum_of_the_ledger(
    shared_conn: Conn, ops: list[tuple[Any, ...]]
) -> None:
    conn = shared_conn
    with conn.transaction(force_rollback=True):
        rows = Rows(conn)
        pooler = rows.pooler()
        farmer = rows.farmer(pooler)
        model = 0
        payouts: list[tuple[UUID, int]] = []
        for block, (op, *args) in enumerate(ops):
            if op == "fail_last_payout" and not payouts:
                continue
            change = _balance_change(op, args, payouts)
            refused = False
            try:
                with conn.transaction():
                    if op == "plant":
                        rows.planting(farmer, pooler, block, stake_amount=args[0])
                    elif op == "harvest":
                        rows.harvest(
                            farmer, pooler, block, reward_amount=args[0], stake_amount=args[1]
                        )
                    elif op == "payout":
                        payout = rows.payout(farmer, args[0])
                        rows.ledger(farmer, change, kind="payout", payout_id=payout)
                        payouts.append((payout, args[0]))
                    elif op == "fail_last_payout":
                        payout, amount = payouts.pop()
                        rows.fail_payout(payout)
                        rows.ledger(farmer, amount, kind="payout_reversal", payout_id=payout)
                    else:
                        rows.ledger(farmer, change, kind=op)
            except errors.CheckViolation as error:
                assert error.diag.constraint_name == "balance_ledger_no_overdraft"
                refused = True
            # Exactly the decisions the pool makes (payout, fee, adjustment) are
            # refused, and only when they would overdraw; chain events never are.
            would_overdraw = (
                op in {"payout", "fee", "adjustment"} and change < 0 and model + change < 0
            )
            assert refused == would_overdraw
            if not refused:
                model += change
            assert rows.balance(farmer) == rows.ledger_sum(farmer) == model

        expected = []
        if model < 0:
            expected.append(
                f"farmer {farmer}: balance {model} is negative; "
                "reconcile with the chain and record an adjustment"
            )
        assert check_consistency(conn) == expected


EVENT_OPS = st.lists(
    st.tuples(
        st.sampled_from(["planting", "work", "harvest"]),
        st.integers(0, 2),  # farmer
        st.integers(0, 2),  # block
        st.booleans(),  # success
        st.integers(0, 10**9),  # stake or reward
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=EVENT_OPS)
def test_block_totals_equal_the_events(shared_conn: Conn, ops: list[tuple[Any, ...]]) -> None:
    conn = shared_conn
    with conn.transaction(force_rollback=True):
        rows = Rows(conn)
        pooler = rows.pooler()
        farmers = [rows.farmer(pooler) for _ in range(3)]
        for farmer in farmers:  # enough KALE for every stake
            rows.ledger(farmer, 10**11)
        successes: set[tuple[str, int, int]] = set()
        totals: dict[int, Counter[str]] = {}
        planted: dict[int, set[int]] = {}
        for kind, who, block, ok, amount in ops:
            values: dict[str, Any] = {}
            if ok and kind == "planting":
                values["stake_amount"] = amount
            if ok and kind == "harvest":
                values["reward_amount"] = amount
            duplicate = ok and (kind, who, block) in successes
            try:
                with conn.transaction():
                    getattr(rows, kind)(
                        farmers[who], pooler, block, "success" if ok else "failed", **values
                    )
            except errors.UniqueViolation:
                assert duplicate
                continue
            assert not duplicate
            if ok:
                successes.add((kind, who, block))
            count = totals.setdefault(block, Counter())
            count[f"{kind}_{'ok' if ok else 'failed'}"] += 1
            if kind == "planting":
                planted.setdefault(block, set()).add(who)
                count["staked"] += amount if ok else 0
            if kind == "harvest":
                count["rewards"] += amount if ok else 0

        for block, count in totals.items():
            assert _totals(conn, pooler, block) == (
                len(planted.get(block, set())),
                count["planting_ok"],
                count["planting_failed"],
                count["work_ok"],
                count["work_failed"],
                count["harvest_ok"],
                count["harvest_failed"],
                count["staked"],
                count["rewards"],
            )
        assert check_consistency(conn) == []


# The check proves agreement; the rebuild restores it -----------------------------------


def test_check_finds_tampering_and_rebuild_repairs_it(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    rows.ledger(farmer, 1_000)
    rows.planting(farmer, pooler, 90, stake_amount=300)
    rows.work(farmer, pooler, 90)
    rows.harvest(farmer, pooler, 90, reward_amount=5_000, stake_amount=300)
    assert check_consistency(db) == []
    assert rebuild_derived_state(db) == 0

    # A superuser can bypass triggers (replica mode); simulate that going wrong.
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE farmers SET current_balance = 1 WHERE id = %s", (farmer,))
        db.execute("UPDATE poolers SET current_farmers = 7 WHERE id = %s", (pooler,))
        db.execute(
            "UPDATE block_operations SET successful_works = 0 WHERE pooler_id = %s", (pooler,)
        )
        db.execute(
            "INSERT INTO harvests (block_index, farmer_id, pooler_id, custodial_public_key, status,"
            " reward_amount, stake_amount, tx_hash, ledger)"
            " SELECT 91, id, pooler_id, custodial_public_key, 'success', 40, 0, repeat('b', 64), 3"
            " FROM farmers WHERE id = %s",
            (farmer,),
        )

    problems = check_consistency(db)
    assert len(problems) == 5, problems
    assert (
        problems[0] == f"farmer {farmer}: current_balance is 1 but its ledger entries sum to 6000"
    )
    assert problems[1] == f"pooler {pooler}: current_farmers is 7 but 1 farmers are active"
    assert problems[2].startswith(f"block 90 of pooler {pooler}: block_operations totals")
    assert (
        problems[3] == f"block 91 of pooler {pooler}: events exist but block_operations has no row"
    )
    assert problems[4].startswith("harvest ") and "never credited" in problems[4]

    assert rebuild_derived_state(db) > 0
    assert check_consistency(db) == []
    assert rows.balance(farmer) == 6_040
    assert _current_farmers(db, pooler) == 1
    assert _totals(db, pooler, 90) == (1, 1, 0, 1, 0, 1, 0, 300, 5_000)
    assert _totals(db, pooler, 91) == (0, 0, 0, 0, 0, 1, 0, 0, 40)
    # The rebuild's permission to write derived columns ended with it.
    with pytest.raises(errors.GeneratedAlways):
        db.execute("UPDATE farmers SET current_balance = 5 WHERE id = %s", (farmer,))


def test_check_reports_a_transaction_whose_trail_disagrees(db: Conn, rows: Rows) -> None:
    tx = rows.transaction("trustline")
    with db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        db.execute("UPDATE transactions SET status = 'submitted' WHERE id = %s", (tx,))
    assert check_consistency(db) == [
        f"transaction {tx}: status is submitted but its last recorded event says prepared"
    ]
