"""A PostgreSQL restart under running wallet and pool servers costs no call: their
connection pools check a connection before handing it out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stellar_sdk import Keypair

from kalepool.db.embedded import restart_embedded, start_embedded, stop_embedded
from kalepool.db.migrate import apply_migrations
from kalepool.tls import DevPki
from kalepool.v1 import pool_pb2, wallet_pb2

from .conftest import pool_stage


async def test_calls_succeed_right_after_a_postgresql_restart(pki: DevPki, tmp_path: Path) -> None:
    # Its own server: the session's shared one is not restarted under other tests.
    server = await asyncio.to_thread(start_embedded, tmp_path / "pg")
    try:
        await asyncio.to_thread(apply_migrations, server.conninfo)
        async with pool_stage(server.conninfo, pki) as pool:
            pooler, _ = await pool.register_pooler()
            farmer = await pool.funded_farmer(pooler.pooler_id)
            # Every pooled connection of both services is open and idle now.
            assert await asyncio.to_thread(restart_embedded, server.pgdata)

            op = pool.operator()
            after, _ = await pool.register_pooler("after-restart")
            made = await op.RegisterFarmer(  # the pool, then the wallet (CreateWallet)
                pool_pb2.RegisterFarmerRequest(
                    pooler_id=after.pooler_id, payout_address=Keypair.random().public_key
                )
            )
            wallet = await pool.wallet.stub.GetWallet(
                wallet_pb2.GetWalletRequest(public_key=made.custodial_address)
            )
            assert wallet.wallet.owner_id == made.farmer.farmer_id
            got = await op.GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=farmer.farmer_id))
            assert got.farmer.custodial_address == farmer.custodial_address
    finally:
        # The handle only stops the postmaster it started; the restarted one is stopped
        # by its data directory.
        await asyncio.to_thread(stop_embedded, server.pgdata)
        await asyncio.to_thread(server.release)
