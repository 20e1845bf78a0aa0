"""PoolerService credentials: the pooler's API key plus a certificate of the pool's CA
registered for that pooler (tests/pool/test_pooler_identity.py: which certificate)."""

from __future__ import annotations

import grpc

from kalepool.v1 import common_pb2, pool_pb2, pooler_pb2

from .conftest import PoolStage


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_keys_decide_who_the_pooler_is(pool: PoolStage) -> None:
    pooler, key = await pool.register_pooler("rig-1", max_farmers=3)
    stub = pool.pooler("rig-1")
    beat = pooler_pb2.HeartbeatRequest(capacity=3)
    ok = await stub.Heartbeat(beat, metadata=bearer(key))
    assert ok.status == common_pb2.POOLER_STATUS_ACTIVE and ok.interval_seconds > 0

    for metadata in [(), bearer("kp_wrong"), (("authorization", key),), bearer("")]:
        code, message = await code_of(stub.Heartbeat(beat, metadata=metadata))
        assert code is grpc.StatusCode.UNAUTHENTICATED, (metadata, code)
        assert key not in message

    # Only the pooler's own certificate works with its key; the service identities never.
    code, _ = await code_of(pool.pooler("another-machine").Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    code, _ = await code_of(pool.pooler("operator").Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.PERMISSION_DENIED

    # Rotation revokes the old key at once.
    op = pool.operator()
    rotated = await op.RotatePoolerApiKey(
        pool_pb2.RotatePoolerApiKeyRequest(pooler_id=pooler.pooler_id)
    )
    code, _ = await code_of(stub.Heartbeat(beat, metadata=bearer(key)))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _ = await code_of(stub.Heartbeat(beat, metadata=bearer(rotated.api_key)))
    assert code is grpc.StatusCode.OK

    # A disabled pooler may do nothing.
    await op.UpdatePooler(
        pool_pb2.UpdatePoolerRequest(
            pooler_id=pooler.pooler_id, status=common_pb2.POOLER_STATUS_DISABLED
        )
    )
    code, message = await code_of(
        stub.RequestPlant(
            pooler_pb2.RequestPlantRequest(block_index=0), metadata=bearer(rotated.api_key)
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED and "disabled" in message


async def test_rate_limit_answers_resource_exhausted(pool: PoolStage) -> None:
    await pool.start(rate_limit_requests_per_minute=3)
    _, key = await pool.register_pooler()
    _, other_key = await pool.register_pooler("rig-b")
    stub = pool.pooler()
    beat = pooler_pb2.HeartbeatRequest()
    codes = [(await code_of(stub.Heartbeat(beat, metadata=bearer(key))))[0] for _ in range(4)]
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # The limit is per pooler.
    code, _ = await code_of(stub.Heartbeat(beat, metadata=bearer(other_key)))
    assert code is grpc.StatusCode.OK
