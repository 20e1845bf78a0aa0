"""Rate limits shared through the database: the buckets themselves (one atomic UPSERT
each), a pooler's calls and an operator's counted together by two pool servers on one
database, and a flood of wrong keys refused before its keys are looked up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kalepool.db.reads import Pool, open_pool
from kalepool.db.roles import POOL
from kalepool.limits import RATE_LIMITED, Limit, RateLimits
from kalepool.tls import OPERATOR, POOL_SERVER, channel_credentials
from kalepool.v1 import pool_pb2, pool_pb2_grpc, pooler_pb2, pooler_pb2_grpc
from pool_service.server import POOL_SERVICE, POOLER_SERVICE, PoolServer
from tests.dbkit import service_conninfo
from tests.waits import until

from .conftest import PoolStage
from .test_pooler_auth import bearer, code_of


@pytest.fixture
async def pool_db(db_conninfo: str) -> AsyncIterator[Pool]:
    """The pool's own connection pool, as its role."""
    pool = await open_pool(service_conninfo(db_conninfo, POOL), role=POOL, max_size=8)
    try:
        yield pool
    finally:
        await pool.close()


def refusals(service: str, kind: str) -> float:
    value: float = RATE_LIMITED.labels(service, kind)._value.get()
    return value


def channel_to(pool: PoolStage, server: PoolServer, client: str) -> grpc.aio.Channel:
    ch = grpc.aio.secure_channel(
        f"127.0.0.1:{server.port}",
        channel_credentials(pool.pki.client(client), pool.pki.ca_pem),
        options=[("grpc.ssl_target_name_override", POOL_SERVER)],
    )
    pool.channels.append(ch)
    return ch


async def test_a_bucket_gives_its_burst_at_once_even_to_racing_takers(pool_db: Pool) -> None:
    limits = RateLimits(pool_db, "test")
    limit = Limit("pooler", 10)
    taken = await asyncio.gather(*(limits.take(limit, "p1") for _ in range(25)))
    assert sum(taken) == 10  # the UPSERT is atomic: no token is handed out twice
    assert await limits.spent(limit, "p1")
    # Another subject, and another kind of the same subject, have buckets of their own.
    assert await limits.take(limit, "p2")
    assert await limits.take(Limit("operator", 10), "p1")
    assert not await limits.spent(limit, "p2")


async def test_a_bucket_refills_with_time(pool_db: Pool) -> None:
    limits = RateLimits(pool_db, "test")
    limit = Limit("pooler", 120)  # two a second
    while await limits.take(limit, "p"):
        pass
    before = refusals("test", "pooler")
    await limits.admit(limit, "other", "other")  # admits while tokens are left
    with pytest.raises(Exception, match="p exceeded 120 requests a minute"):
        await limits.admit(limit, "p", "p")
    assert refusals("test", "pooler") == before + 1

    async def refilled() -> bool:
        return not await limits.spent(limit, "p")

    await until(refilled, 5, what="a token to refill")
    assert await limits.take(limit, "p")


async def test_two_servers_share_a_poolers_bucket(pool: PoolStage) -> None:
    limits: dict[str, Any] = {"rate_limit_requests_per_minute": 4}
    await pool.start(**limits)
    replica = await pool.start_replica(**limits)
    _, key = await pool.register_pooler("rig-1")
    assert pool.server is not None
    stubs = [
        pooler_pb2_grpc.PoolerServiceStub(channel_to(pool, server, "rig-1"))
        for server in (pool.server, replica)
    ]
    beat = pooler_pb2.HeartbeatRequest()
    before = refusals(POOLER_SERVICE, "pooler")
    codes = [
        (await code_of(stubs[i % 2].Heartbeat(beat, metadata=bearer(key))))[0] for i in range(6)
    ]
    # Four calls in all, whichever replica served them; then both refuse.
    assert codes == [grpc.StatusCode.OK] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    code, message = await code_of(stubs[1].Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeded 4 requests a minute" in message and key not in message
    assert refusals(POOLER_SERVICE, "pooler") == before + 3


async def test_two_servers_share_an_operators_bucket(pool: PoolStage) -> None:
    limits: dict[str, Any] = {"rate_limit_operator_per_minute": 5}
    await pool.start(**limits)
    replica = await pool.start_replica(**limits)
    assert pool.server is not None
    stubs = [
        pool_pb2_grpc.PoolServiceStub(channel_to(pool, server, OPERATOR))
        for server in (pool.server, replica)
    ]
    before = refusals(POOL_SERVICE, "operator")
    listing = pool_pb2.ListPoolersRequest()
    codes = [(await code_of(stubs[i % 2].ListPoolers(listing)))[0] for i in range(7)]
    assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    _, message = await code_of(stubs[0].ListPoolers(listing))
    assert message == "caller 'operator' exceeded 5 requests a minute; slow down and retry"
    assert refusals(POOL_SERVICE, "operator") == before + 3


async def test_a_flood_of_wrong_keys_is_refused_before_any_key_lookup(pool: PoolStage) -> None:
    server = await pool.start(rate_limit_failed_auth_per_minute=5)
    _, key = await pool.register_pooler()
    # Count the key lookups the real store makes (a spy that calls through).
    store = server.pooler_api.auth.poolers
    real = store.pooler_by_key
    lookups = 0

    async def counted(key_hash: str) -> Any:
        nonlocal lookups
        lookups += 1
        return await real(key_hash)

    store.pooler_by_key = counted  # type: ignore[method-assign]
    flooder = pool.pooler("rig-flood")
    beat = pooler_pb2.HeartbeatRequest()
    before = refusals(POOLER_SERVICE, "failed_auth")
    codes = [
        (await code_of(flooder.Heartbeat(beat, metadata=bearer(f"kp_guess_{i}"))))[0]
        for i in range(300)
    ]
    assert (
        codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 295
    )
    assert lookups == 5  # the other 295 never reached the key lookup
    assert refusals(POOLER_SERVICE, "failed_auth") == before + 295
    # Even the right key waits now on that certificate: it is the certificate that failed.
    code, message = await code_of(flooder.Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "refused attempts" in message
    assert lookups == 5
    # Missing keys and service identities count as failures too, per certificate.
    other = pool.pooler("rig-other")
    for _ in range(5):
        code, _ = await code_of(other.Heartbeat(beat))
        assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _ = await code_of(other.Heartbeat(beat))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The pooler's own certificate is served as ever.
    code, _ = await code_of(pool.pooler().Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.OK
