"""The chain follower's classification on what the devnet cannot run: a harvest made from
inside another contract's call (real PostgreSQL, the RPC a stand-in answering crafted
events and transactions), and its rules as pure functions.

The direct cases on real devnet transactions (a stranger's harvest recorded once, payments
and the friendbot's mints credited, a transfer of 0) are in `test_deposits.py`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from stellar_sdk import Account, Keypair, TransactionBuilder, scval

from kale_devnet import farm as devnet_farm
from kalepool.chain import Block, ChainClient, Pail
from kalepool.db.reads import Pool, open_pool
from kalepool.db.roles import POOL
from pool_service.books.harvests import HarvestStore
from pool_service.deposits import ChainFollower, harvest_amount, pick_pail
from tests.chain import crafted
from tests.db.rows import Rows
from tests.dbkit import service_conninfo

KALE = 10_000_000


@pytest.fixture
async def pool(db_conninfo: str) -> AsyncIterator[Pool]:
    opened = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=4)
    try:
        yield opened
    finally:
        await opened.close()


def _books(conninfo: str, farmer: UUID) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn:
        harvests = conn.execute(
            "SELECT block_index, reward_amount, stake_amount, tx_hash, pooler_id FROM harvests"
            " WHERE farmer_id = %s ORDER BY block_index",
            (farmer,),
        ).fetchall()
        deposits = conn.execute(
            "SELECT event_id, amount, tx_hash FROM deposits WHERE farmer_id = %s ORDER BY event_id",
            (farmer,),
        ).fetchall()
        balance = conn.execute(
            "SELECT current_balance FROM farmers WHERE id = %s", (farmer,)
        ).fetchone()
    assert balance is not None
    return {"harvests": harvests, "deposits": deposits, "balance": int(balance[0])}


def _payment_from_issuer(to: str) -> str:
    """A classic payment's envelope (its meta touches no contract data)."""
    envelope = (
        TransactionBuilder(Account(crafted.ISSUER, 5), crafted.PASSPHRASE, 100)
        .append_payment_op(to, crafted.config().asset, "2")
        .set_timeout(60)
        .build()
    )
    return str(envelope.to_xdr())


async def test_a_harvest_made_inside_another_contracts_call_is_a_harvest_not_a_deposit(
    db_conninfo: str, pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        rows = Rows(conn)
        pooler = rows.pooler()
        farmer = rows.farmer(pooler)
        address = conn.execute(
            "SELECT custodial_public_key FROM farmers WHERE id = %s", (farmer,)
        ).fetchone()[0]  # type: ignore[index]
        rows.planting(farmer, pooler, 41, stake_amount=3 * KALE)
        # The follower ran before (its first start is another test's).
        conn.execute(
            "INSERT INTO chain_cursors (name, cursor, ledger) VALUES ('kale-events', NULL, 0)"
        )

    # A router contract harvests the farmer's pail of block 41 (reward 10 KALE on a stake
    # of 3) and sends 1 KALE of its own in the same transaction; the issuer pays 2 KALE;
    # someone transfers 0.
    routed = crafted.router_call("harvest_all", scval.to_address(address), scval.to_uint32(41))
    t1 = crafted.tx_hash_of(routed)
    worked = devnet_farm.Pail(100, 7, 3 * KALE, 6)
    meta = crafted.meta_v4(crafted.nested_harvest(address, 41, worked, planter=address))
    paid = _payment_from_issuer(address)
    t2 = crafted.tx_hash_of(paid)
    t3 = "ab" * 32
    rpc = crafted.StubRpc(
        [
            crafted.token_event("mint", address, 13 * KALE, t1, ledger=150, tx=1, index=0),
            crafted.token_event("transfer", address, KALE, t1, ledger=150, tx=1, index=1),
            crafted.token_event("mint", address, 2 * KALE, t2, ledger=151, tx=1),
            crafted.token_event("transfer", address, 0, t3, ledger=152, tx=1),
        ],
        {
            t1: crafted.answer(t1, routed, meta.to_xdr(), ledger=150),
            t2: crafted.answer(t2, paid, crafted.meta_v4([]).to_xdr(), ledger=151),
        },
        latest=160,
    )
    follower = ChainFollower(pool, ChainClient(crafted.config(), rpc=rpc), HarvestStore(pool))  # type: ignore[arg-type]
    assert await follower.run_once() == 3  # the transfer of 0 is passed over
    books = _books(db_conninfo, farmer)
    assert books["harvests"] == [(41, 10 * KALE, 3 * KALE, t1, pooler)]
    assert [(d[1], d[2]) for d in books["deposits"]] == [(KALE, t1), (2 * KALE, t2)]
    assert books["balance"] == 16 * KALE - 3 * KALE  # the planting's stake was debited
    # Read again from the start (a rewound cursor), nothing changes.
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        conn.execute("UPDATE chain_cursors SET cursor = NULL, ledger = 0")
    await follower.run_once()
    assert _books(db_conninfo, farmer) == books

    # A mint whose transaction cannot be read now stops the page: never a deposit.
    later = crafted.router_call("harvest_all", scval.to_address(address), scval.to_uint32(43))
    t4 = crafted.tx_hash_of(later)
    rpc.latest = 200
    rpc.events.append(crafted.token_event("mint", address, 4 * KALE, t4, ledger=195, tx=2))
    assert await follower.run_once() == 0  # the RPC does not know it yet
    rpc.transactions[t4] = crafted.answer(t4, later, "AAAA", ledger=195)
    assert await follower.run_once() == 0  # its meta does not decode
    assert _books(db_conninfo, farmer) == books
    meta = crafted.meta_v4(crafted.nested_harvest(address, 43, devnet_farm.Pail(180, 3, KALE, 5)))
    rpc.transactions[t4] = crafted.answer(t4, later, meta.to_xdr(), ledger=195)
    assert await follower.run_once() == 1
    now = _books(db_conninfo, farmer)
    assert now["harvests"][1:] == [(43, 3 * KALE, KALE, t4, pooler)]
    assert now["deposits"] == books["deposits"]

    # One still unreadable long after its event is left to `kale-pool check`, loudly.
    rpc.latest = 400
    t5 = "ef" * 32
    rpc.events.append(crafted.token_event("mint", address, 5 * KALE, t5, ledger=250, tx=1))
    with caplog.at_level(logging.ERROR, logger="pool_service.deposits"):
        assert await follower.run_once() == 1
    assert _books(db_conninfo, farmer) == now
    assert any(t5 in r.getMessage() and "kale-pool check" in r.getMessage() for r in caplog.records)


def _block(index: int) -> Block:
    return Block(
        index=index,
        timestamp=0,
        min_gap=1,
        min_stake=0,
        min_zeros=1,
        max_gap=20,
        max_stake=10 * KALE,
        max_zeros=9,
        entropy=bytes(32),
        staked_total=KALE,
        normalized_total=3 * 10 * KALE,
    )


def test_several_pails_of_one_farmer_harvested_at_once_are_told_apart_by_amount() -> None:
    farmer = Keypair.random().public_key
    small, big, twin = (
        Pail(farmer, 41, 100, 5, KALE, 4),
        Pail(farmer, 44, 400, 9, 6 * KALE, 8),
        Pail(farmer, 45, 500, 5, KALE, 4),
    )
    expected = {p.index: harvest_amount(p, _block(p.index)) for p in (small, big, twin)}
    assert all(isinstance(a, int) and a > 0 for a in expected.values())
    amounts = {i: a for i, a in expected.items() if a is not None}
    assert amounts[41] != amounts[44]
    # Each mint is the pail whose harvest mints that much, whatever order they come in.
    assert pick_pail(amounts[44], [small, big], amounts, set()) == big
    assert pick_pail(amounts[41], [small, big], amounts, {44}) == small
    # Two pails minting alike: each mint records one, a mint seen again finds both taken.
    same = amounts[41]
    assert amounts[45] == same
    assert pick_pail(same, [twin, small], amounts, set()) == small
    assert pick_pail(same, [twin, small], amounts, {41}) == twin
    assert pick_pail(same, [twin, small], amounts, {41, 45}) == small
    # A mint no pail's harvest explains is nobody's.
    assert pick_pail(same + 1, [small, big], amounts, set()) is None
    # A pail never worked mints nothing computable.
    assert harvest_amount(Pail(farmer, 46, 600, None, KALE, None), _block(46)) is None
