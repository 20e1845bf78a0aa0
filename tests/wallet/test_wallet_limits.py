"""WalletService callers are rate limited through the database: two wallet servers on one
database count a caller together."""

from __future__ import annotations

import grpc

from kalepool.limits import RATE_LIMITED
from kalepool.tls import POOL_CLIENT
from kalepool.v1 import wallet_pb2, wallet_pb2_grpc
from tests.pool.test_pooler_auth import code_of
from wallet_service.server import SERVICE_NAME

from .conftest import WalletStage


async def test_two_wallet_servers_share_a_callers_bucket(wallet: WalletStage) -> None:
    await wallet.server.stop(0)
    first = await wallet.start(calls_per_minute=4)
    first_stub = wallet.stub
    second = await wallet.start(calls_per_minute=4)
    second_stub = wallet.stub
    try:
        before = RATE_LIMITED.labels(SERVICE_NAME, "wallet_caller")._value.get()
        ask = wallet_pb2.GetTransactionRequest(tx_hash="00" * 32)
        codes = [
            (await code_of((first_stub, second_stub)[i % 2].GetTransaction(ask)))[0]
            for i in range(6)
        ]
        # Four answers in all (NOT_FOUND: no such transaction), then both refuse.
        assert codes == [grpc.StatusCode.NOT_FOUND] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        code, message = await code_of(second_stub.GetTransaction(ask))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert message == (
            f"caller {POOL_CLIENT!r} exceeded 4 requests a minute; slow down and retry"
        )
        assert RATE_LIMITED.labels(SERVICE_NAME, "wallet_caller")._value.get() == before + 3
    finally:
        await first.stop(0)
        wallet.server = second


async def test_the_default_allows_the_pools_bursts(wallet: WalletStage) -> None:
    # The default (30000 a minute) lets the pool plant thousands of farmers in a block.
    stub = wallet_pb2_grpc.WalletServiceStub(wallet.channel(POOL_CLIENT))
    ask = wallet_pb2.GetTransactionRequest(tx_hash="00" * 32)
    for _ in range(50):
        code, _ = await code_of(stub.GetTransaction(ask))
        assert code is grpc.StatusCode.NOT_FOUND
