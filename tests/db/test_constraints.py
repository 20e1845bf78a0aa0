"""Unique keys, secret columns and row shapes the database enforces."""

from __future__ import annotations

import base64
import os
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import errors
from stellar_sdk import StrKey

from .rows import Conn, Rows, account, seed


def _count(conn: Conn, table: str, where: str = "true", params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}".encode(), params).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def farm(rows: Rows) -> tuple[UUID, UUID]:
    """A pooler and one of its farmers."""
    pooler = rows.pooler()
    return pooler, rows.farmer(pooler)


# One success per (farmer, block) ------------------------------------------------

EVENTS = ["planting", "work", "harvest"]


@pytest.mark.parametrize("event", EVENTS)
def test_a_second_success_for_the_same_farmer_and_block_is_refused(
    db: Conn, rows: Rows, farm: tuple[UUID, UUID], event: str
) -> None:
    pooler, farmer = farm
    insert = getattr(rows, event)
    insert(farmer, pooler, 41)

    with pytest.raises(errors.UniqueViolation) as caught:
        insert(farmer, pooler, 41)
    assert caught.value.diag.constraint_name == f"{event}s_one_success"

    table = f"{event}s"
    assert _count(db, table, "status = 'success'") == 1


@pytest.mark.parametrize("event", EVENTS)
def test_failures_may_repeat_and_a_success_may_follow(
    db: Conn, rows: Rows, farm: tuple[UUID, UUID], event: str
) -> None:
    pooler, farmer = farm
    insert = getattr(rows, event)
    for _ in range(3):
        insert(farmer, pooler, 41, status="failed")
    insert(farmer, pooler, 41)
    # The same farmer in other blocks, and other farmers in this block, are free.
    insert(farmer, pooler, 42)
    insert(rows.farmer(pooler), pooler, 41)

    table = f"{event}s"
    assert _count(db, table, "status = 'failed'") == 3
    assert _count(db, table, "status = 'success'") == 3


@pytest.mark.parametrize("event", EVENTS)
def test_a_second_success_is_refused_even_from_another_pooler(
    rows: Rows, farm: tuple[UUID, UUID], event: str
) -> None:
    pooler, farmer = farm
    insert = getattr(rows, event)
    insert(farmer, pooler, 41)
    with pytest.raises(errors.UniqueViolation):
        insert(farmer, rows.pooler(), 41)


@pytest.mark.parametrize("event", EVENTS)
def test_outcomes_must_be_complete(rows: Rows, farm: tuple[UUID, UUID], event: str) -> None:
    pooler, farmer = farm
    insert = getattr(rows, event)
    table = f"{event}s"
    bad_outcomes: list[dict[str, Any]] = [
        {"tx_hash": None},  # success without its transaction
        {"fault": "pooler"},  # success blaming someone
        {"error_message": "but it worked"},
        {"status": "failed", "fault": "none", "error_message": "whose fault?"},
        {"status": "failed", "fault": "chain", "error_message": None},
    ]
    for outcome in bad_outcomes:
        with pytest.raises(errors.CheckViolation) as caught:
            insert(farmer, pooler, 41, **outcome)
        assert caught.value.diag.constraint_name == f"{table}_outcome"


def test_event_values_are_range_checked(rows: Rows, farm: tuple[UUID, UUID]) -> None:
    pooler, farmer = farm
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("planting", {"block_index": -1}, "plantings_block_index_range"),
        ("planting", {"block_index": 2**32}, "plantings_block_index_range"),
        ("planting", {"stake_amount": -1}, "plantings_stake_nonnegative"),
        ("planting", {"tx_hash": "ABC"}, "plantings_tx_hash_format"),
        ("work", {"nonce": 2**64}, "works_nonce_u64"),
        ("work", {"hash": b"\x00" * 31}, "works_hash_length"),
        ("work", {"zeros": 65}, "works_zeros_range"),
        ("work", {"gap": 0}, "works_gap_positive"),
        ("harvest", {"reward_amount": -5}, "harvests_reward_nonnegative"),
    ]
    for event, values, constraint in cases:
        with pytest.raises(errors.CheckViolation) as caught:
            getattr(rows, event)(farmer, pooler, 41, **values)
        assert caught.value.diag.constraint_name == constraint
    # The largest u64 nonce is fine.
    rows.work(farmer, pooler, 41, nonce=2**64 - 1)


def test_events_name_the_farmers_wallet(db: Conn, rows: Rows, farm: tuple[UUID, UUID]) -> None:
    pooler, farmer = farm
    planting = rows.planting(farmer, pooler, 41)
    row = db.execute(
        "SELECT p.custodial_public_key = f.custodial_public_key FROM plantings p"
        " JOIN farmers f ON f.id = p.farmer_id WHERE p.id = %s",
        (planting,),
    ).fetchone()
    assert row == (True,)
    with pytest.raises(errors.CheckViolation, match="does not match farmer"):
        rows.harvest(farmer, pooler, 41, custodial_public_key=account())


# Secrets ----------------------------------------------------------------------


def _wallet_with_secret(rows: Rows, secret: Any, nonce: bytes | None = None) -> UUID:
    return rows.wallet(ciphertext=secret, nonce=nonce or os.urandom(12))


def test_secret_columns_accept_ciphertext(db: Conn, rows: Rows) -> None:
    wallet = _wallet_with_secret(rows, os.urandom(72), os.urandom(24))
    row = db.execute(
        "SELECT pg_typeof(ciphertext)::text FROM custodial_wallets WHERE id = %s", (wallet,)
    )
    assert row.fetchone() == ("bytea",)


def test_farmers_hold_no_secret_columns(db: Conn) -> None:
    columns = {
        name
        for (name,) in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'farmers'"
        ).fetchall()
    }
    assert "custodial_public_key" in columns
    assert not columns & {"secret_ciphertext", "secret_nonce", "key_id", "key_version"}


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(lambda s, raw: s, id="seed-as-text"),
        pytest.param(lambda s, raw: s.encode(), id="seed-as-bytes"),
        pytest.param(lambda s, raw: raw.hex().encode(), id="raw-seed-as-hex"),
        pytest.param(lambda s, raw: base64.b64encode(raw + os.urandom(16)), id="base64"),
        pytest.param(lambda s, raw: os.urandom(8) + s.encode() + os.urandom(8), id="seed-inside"),
        pytest.param(lambda s, raw: raw + raw[:15], id="raw-seed-padded"),
    ],
)
def test_secret_columns_refuse_plaintext(db: Conn, rows: Rows, plaintext: Any) -> None:
    raw = os.urandom(32)
    secret = StrKey.encode_ed25519_secret_seed(raw)
    value = plaintext(secret, raw)
    with pytest.raises(errors.CheckViolation) as caught:
        _wallet_with_secret(rows, value)
    assert caught.value.diag.constraint_name in {
        "custodial_wallets_not_plaintext",
        "custodial_wallets_ciphertext_length",
    }
    # The refusal never echoes the value back.
    assert secret not in str(caught.value)
    assert _count(db, "custodial_wallets") == 0


def test_a_raw_unencrypted_seed_is_too_short_to_be_ciphertext(rows: Rows) -> None:
    with pytest.raises(errors.CheckViolation) as caught:
        _wallet_with_secret(rows, os.urandom(32))
    assert caught.value.diag.constraint_name == "custodial_wallets_ciphertext_length"


def test_nonce_rules(rows: Rows) -> None:
    with pytest.raises(errors.CheckViolation) as caught:
        _wallet_with_secret(rows, os.urandom(48), os.urandom(16))
    assert caught.value.diag.constraint_name == "custodial_wallets_nonce_length"

    nonce = os.urandom(12)
    _wallet_with_secret(rows, os.urandom(48), nonce)
    with pytest.raises(errors.UniqueViolation) as unique:
        _wallet_with_secret(rows, os.urandom(48), nonce)
    assert unique.value.diag.constraint_name == "custodial_wallets_nonce_unique"
    # The same nonce under another key version is a different key: allowed.
    rows.wallet(nonce=nonce, key_version=2)


def test_wallet_fields(rows: Rows) -> None:
    owner, key = uuid4(), account()
    rows.wallet(owner_id=owner, public_key=key)
    cases: list[tuple[dict[str, Any], type[psycopg.Error], str]] = [
        ({"owner_id": owner}, errors.UniqueViolation, "custodial_wallets_owner_id_key"),
        ({"public_key": key}, errors.UniqueViolation, "custodial_wallets_public_key_key"),
        ({"public_key": seed()}, errors.CheckViolation, "custodial_wallets_public_key_format"),
        ({"key_version": 0}, errors.CheckViolation, "custodial_wallets_key_version_positive"),
        ({"key_id": "bad key"}, errors.CheckViolation, "custodial_wallets_key_id_format"),
    ]
    for values, error, constraint in cases:
        with pytest.raises(error) as caught:
            rows.wallet(**values)
        assert caught.value.diag.constraint_name == constraint


def test_farmer_fields(rows: Rows) -> None:
    pooler = rows.pooler()
    key = account()
    rows.farmer(pooler, custodial_public_key=key)
    cases: list[tuple[dict[str, Any], type[psycopg.Error], str]] = [
        ({"custodial_public_key": key}, errors.UniqueViolation, "farmers_custodial_public_key_key"),
        (
            {"custodial_public_key": seed()},
            errors.CheckViolation,
            "farmers_custodial_public_key_format",
        ),
        (
            {"payout_address": "not-an-address"},
            errors.CheckViolation,
            "farmers_payout_address_format",
        ),
        ({"stake_bps": 10001}, errors.CheckViolation, "farmers_stake_bps_range"),
        ({"stake_bps": -1}, errors.CheckViolation, "farmers_stake_bps_range"),
    ]
    for values, error, constraint in cases:
        with pytest.raises(error) as caught:
            rows.farmer(pooler, **values)
        assert caught.value.diag.constraint_name == constraint
    same = account()
    with pytest.raises(errors.CheckViolation) as caught:
        rows.farmer(pooler, custodial_public_key=same, payout_address=same)
    assert caught.value.diag.constraint_name == "farmers_payout_not_custodial"
    # Contract and muxed payout addresses are fine.
    rows.farmer(pooler, payout_address=StrKey.encode_contract(os.urandom(32)))
    rows.farmer(pooler, payout_address="M" + "A" * 68)


def test_api_keys_are_stored_hashed_and_unique(db: Conn, rows: Rows) -> None:
    pooler = rows.pooler()
    digest = os.urandom(32)
    insert = "INSERT INTO pooler_api_keys (pooler_id, key_hash, key_prefix) VALUES (%s, %s, %s)"
    db.execute(insert, (pooler, digest, "kp_ab12"))
    with pytest.raises(errors.UniqueViolation):
        db.execute(insert, (rows.pooler(), digest, "kp_cd34"))
    with pytest.raises(errors.CheckViolation) as caught:
        db.execute(insert, (pooler, b"kp_live_0123456789abcdef", "kp_ef56"))
    assert caught.value.diag.constraint_name == "pooler_api_keys_key_hash_length"


# Transactions --------------------------------------------------------------------


def test_transaction_keys_are_unique(db: Conn, rows: Rows) -> None:
    tx = rows.transaction("trustline")
    row = db.execute(
        "SELECT idempotency_key, tx_hash, source_account, sequence_number FROM transactions"
        " WHERE id = %s",
        (tx,),
    ).fetchone()
    assert row is not None
    key, tx_hash_, source, sequence = row
    for values, constraint in [
        ({"idempotency_key": key}, "transactions_idempotency_key_key"),
        ({"tx_hash": tx_hash_}, "transactions_tx_hash_key"),
        (
            {"source_account": source, "sequence_number": sequence},
            "transactions_source_sequence_live",
        ),
    ]:
        with pytest.raises(errors.UniqueViolation) as caught:
            rows.transaction("trustline", **values)
        assert caught.value.diag.constraint_name == constraint

    # Once the envelope expired unsent, its sequence number may be used again.
    db.execute("UPDATE transactions SET status = 'expired' WHERE id = %s", (tx,))
    rows.transaction("trustline", source_account=source, sequence_number=sequence)


def test_transactions_need_time_bounds_and_shape(rows: Rows) -> None:
    pooler = rows.pooler()
    farmer = rows.farmer(pooler)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("trustline", {"max_time": 0}, "transactions_time_bounds"),
        ("trustline", {"min_time": 20, "max_time": 10}, "transactions_time_bounds"),
        ("trustline", {"tx_hash": "A" * 64}, "transactions_tx_hash_format"),
        ("trustline", {"envelope_xdr": "not base64!"}, "transactions_envelope_base64"),
        ("trustline", {"sequence_number": 0}, "transactions_sequence_positive"),
        ("plant", {"farmer_id": farmer}, "transactions_farm_call_shape"),
        ("payout", {"farmer_id": farmer}, "transactions_payout_shape"),
        ("trustline", {"status": "success"}, "transactions_success_has_ledger"),
    ]
    for kind, values, constraint in cases:
        with pytest.raises(errors.CheckViolation) as caught:
            rows.transaction(kind, **values)
        assert caught.value.diag.constraint_name == constraint
    rows.transaction("plant", farmer_id=farmer, block_index=41)


# Ledger ------------------------------------------------------------------------


def test_nothing_is_credited_twice(db: Conn, rows: Rows, farm: tuple[UUID, UUID]) -> None:
    pooler, farmer = farm
    harvest = rows.harvest(farmer, pooler, 41, reward_amount=500, stake_amount=20)
    compensation = rows.compensation(farmer, pooler, 41, amount=70)
    rows.ledger(farmer, 70, kind="compensation", compensation_id=compensation)

    with pytest.raises(errors.UniqueViolation):
        rows.ledger(farmer, 520, kind="harvest", harvest_id=harvest)
    with pytest.raises(errors.UniqueViolation):
        rows.ledger(farmer, 70, kind="compensation", compensation_id=compensation)
    with pytest.raises(errors.UniqueViolation) as caught:
        rows.compensation(farmer, pooler, 41, amount=70)
    assert caught.value.diag.constraint_name == "pooler_compensations_once"
    assert rows.balance(farmer) == 590


def test_compensation_status_view(db: Conn, rows: Rows, farm: tuple[UUID, UUID]) -> None:
    pooler, farmer = farm
    paid = rows.compensation(farmer, pooler, 41, amount=70)
    unpaid = rows.compensation(
        farmer, pooler, 42, amount=30, compensation_type="plant_failure", owed_by="pool"
    )
    rows.ledger(farmer, 70, kind="compensation", compensation_id=paid)
    status: dict[int, bool] = dict(
        db.execute("SELECT id, is_paid FROM compensation_status").fetchall()
    )
    assert status == {paid: True, unpaid: False}
    with pytest.raises(errors.CheckViolation):
        rows.compensation(farmer, pooler, 43, owed_by="farmer")
