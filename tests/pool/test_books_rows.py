"""The books' rows (on real PostgreSQL): each enum of `pool_service.books.enums` is its
database type, label for label; a row read holds enum members, NULL stays None; a
one-column answer of another type than asked is refused, never passed on."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
import pytest

from kalepool.chain import Fault
from kalepool.db.reads import Pool, fetch_all, fetch_value, open_pool
from kalepool.db.roles import POOL
from pool_service.books.enums import (
    CompensationKind,
    EventStatus,
    FarmerState,
    FarmerStatus,
    LedgerKind,
    PayoutStatus,
)
from pool_service.books.farmers import FARMER_STATE_SQL
from tests.dbkit import service_conninfo


@pytest.fixture
async def pool(db_conninfo: str) -> AsyncIterator[Pool]:
    pool = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("event_status", EventStatus),
        ("fault_party", Fault),
        ("farmer_status", FarmerStatus),
        ("payout_status", PayoutStatus),
        ("ledger_kind", LedgerKind),
        ("compensation_type", CompensationKind),
    ],
)
def test_each_enum_is_its_database_type(
    db: psycopg.Connection[tuple[object, ...]], type_name: str, kind: type[enum.StrEnum]
) -> None:
    labels = [r[0] for r in db.execute(f"SELECT unnest(enum_range(NULL::{type_name}))::text")]
    assert sorted(labels) == sorted(m.value for m in kind)


def test_every_farmer_state_has_its_condition() -> None:
    assert set(FARMER_STATE_SQL) == set(FarmerState)


@dataclass(frozen=True)
class _Row:
    status: EventStatus
    fault: Fault | None
    note: str | None


async def test_rows_hold_enum_members_and_null_stays_none(pool: Pool) -> None:
    rows = await fetch_all(
        pool,
        _Row,
        "SELECT * FROM (VALUES ('success', 'pooler', 'x'), ('failed', NULL, NULL))"
        " v(status, fault, note)",
    )
    assert rows == [
        _Row(EventStatus.SUCCESS, Fault.POOLER, "x"),
        _Row(EventStatus.FAILED, None, None),
    ]
    assert [type(r.status) for r in rows] == [EventStatus, EventStatus]
    assert type(rows[0].fault) is Fault


async def test_a_value_of_another_type_is_refused(pool: Pool) -> None:
    assert await fetch_value(pool, int, "SELECT count(*) FROM farmers") == 0
    assert await fetch_value(pool, int, "SELECT NULL::bigint") is None
    with pytest.raises(TypeError, match="Decimal, not int"):
        await fetch_value(pool, int, "SELECT coalesce(sum(current_balance), 0) FROM farmers")


async def test_an_enum_member_goes_into_a_query_as_its_label(pool: Pool) -> None:
    got = await fetch_value(pool, str, "SELECT %s::fault_party::text", (Fault.POOLER,))
    assert got == "pooler"
