"""Two wallet servers on one database (replicas), racing on one idempotency key: one
transaction is stored and sent, the loser of the race replays it instead of failing."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import psycopg
from stellar_sdk import Keypair

from kalepool.chain import current_block, kale_balance, read_account, read_pail
from kalepool.settings import Settings
from kalepool.tls import POOL_CLIENT, WALLET_SERVER, DevPki, channel_credentials
from kalepool.v1 import common_pb2, wallet_pb2, wallet_pb2_grpc
from wallet_service.server import start_wallet_for, start_wallet_server

from .conftest import wallet_stage
from .test_wallet_service import KALE, funded_wallet, until


async def test_replicas_racing_on_one_key_send_one_transaction(
    db_conninfo: str, pki: DevPki
) -> None:
    async with wallet_stage(db_conninfo, pki, block_seconds=3600) as ws:
        other = await start_wallet_server(
            address="127.0.0.1:0",
            conninfo=ws.service_conninfo,
            keyring=ws.keyring,
            chain=ws.chain,
            identity=pki.server(WALLET_SERVER),
            ca_pem=pki.ca_pem,
        )
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{other.port}",
            channel_credentials(pki.client(POOL_CLIENT), pki.ca_pem),
            options=[("grpc.ssl_target_name_override", WALLET_SERVER)],
        )
        try:
            second = wallet_pb2_grpc.WalletServiceStub(channel)
            farmer = await funded_wallet(ws, kale=10 * KALE)
            sequence = (await read_account(ws.chain, farmer)).sequence  # type: ignore[union-attr]
            block = (await current_block(ws.chain)).index
            request = wallet_pb2.PlantRequest(
                idempotency_key=f"plant:race:{block}",
                farmer_address=farmer,
                block_index=block,
                stake_stroops=KALE,
            )
            # Both replicas look the key up, find nothing, build and sign; their inserts
            # wait behind a lock until both are there, then one stores its envelope first.
            async with await psycopg.AsyncConnection.connect(db_conninfo) as blocker:
                await blocker.execute("LOCK TABLE transactions IN SHARE MODE")
                calls = [
                    asyncio.ensure_future(ws.stub.Plant(request)),
                    asyncio.ensure_future(second.Plant(request)),
                ]

                async def both_inserting() -> bool:
                    cur = await blocker.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted"
                        " AND relation = 'transactions'::regclass"
                    )
                    found = await cur.fetchone()
                    return found is not None and found[0] == 2

                await until(both_inserting)
                await blocker.commit()
            answers = await asyncio.gather(*calls)

            assert all(a.outcome.status == common_pb2.TX_STATUS_SUCCESS for a in answers), answers
            assert answers[0].outcome.tx_hash == answers[1].outcome.tx_hash
            assert sorted(a.outcome.replayed for a in answers) == [False, True]
            assert {(a.block_index, a.plant_ledger) for a in answers} == {
                (block, answers[0].outcome.ledger)
            }
            async with await psycopg.AsyncConnection.connect(db_conninfo) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM transactions WHERE idempotency_key = %s",
                    (request.idempotency_key,),
                )
                assert await cur.fetchone() == (1,)
            pail = await read_pail(ws.chain, farmer, block)
            assert pail is not None and pail.stake == KALE
            assert await kale_balance(ws.chain, farmer) == 9 * KALE
            after = await read_account(ws.chain, farmer)
            assert after is not None and after.sequence == sequence + 1  # one applied
        finally:
            await channel.close()
            await other.stop(0)


async def test_the_wallet_bounds_its_queries_by_the_statement_timeout(
    db_conninfo: str, tmp_path: Path
) -> None:
    async with wallet_stage(db_conninfo, DevPki(tmp_path / "certs")) as ws:
        settings = Settings(
            network="devnet",
            rpc_url=ws.stage.server.url,
            data_dir=tmp_path,
            wallet_listen="127.0.0.1:0",
            master_key="".join(["A"] * 43) + "=",
            db_timeout_seconds=7,
            _env_file=None,
        )
        async with AsyncExitStack() as stack:
            server = await start_wallet_for(settings, ws.service_conninfo, stack)
            async with server.pool.connection() as conn:
                cur = await conn.execute("SHOW statement_timeout")
                assert await cur.fetchone() == ("7s",)
            made = await server.service.CreateWallet(
                wallet_pb2.CreateWalletRequest(
                    owner_id=str(uuid.uuid4()), payout_address=Keypair.random().public_key
                ),
                None,
            )
            assert made.created
