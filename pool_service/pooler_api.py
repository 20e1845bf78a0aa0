"""PoolerService: what the pooler agents call. Every call first resolves the pooler from
its API key and its certificate together (`pool_service.auth`); a pooler acts on its own
farmers only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kalepool import wire
from kalepool.grpc_server import InvalidArgument, NotFound
from kalepool.request_checks import check_uuid
from kalepool.v1 import common_pb2, pooler_pb2, pooler_pb2_grpc
from pool_service import convert
from pool_service.auth import Authenticator
from pool_service.books.enums import EventStatus
from pool_service.books.poolers import Heartbeat
from pool_service.chain_view import ChainView
from pool_service.feed import AssignmentFeed
from pool_service.harvesting import Harvester
from pool_service.planting import Planter
from pool_service.work import WorkReports

HEARTBEAT_SECONDS = 30
# At most one heartbeat of a pooler is written this often; the rest are only answered.
HEARTBEAT_WRITE_SECONDS = 5.0
MAX_AGENT_VERSION = 64
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class PoolerApi(pooler_pb2_grpc.PoolerServiceServicer):
    """kalepool.v1.PoolerService."""

    def __init__(
        self,
        auth: Authenticator,
        planter: Planter,
        feed: AssignmentFeed,
        works: WorkReports,
        harvester: Harvester,
        view: ChainView,
    ) -> None:
        self.auth = auth
        self.planter = planter
        self.feed = feed
        self.works = works
        self.harvester = harvester
        self.view = view

    async def RequestPlant(
        self, request: pooler_pb2.RequestPlantRequest, context: Any
    ) -> pooler_pb2.RequestPlantResponse:
        pooler = await self.auth.pooler(context)
        return await self.planter.request(
            pooler, request.block_index, request.max_farmers, when_sent=request.answer_when_sent
        )

    async def StreamAssignments(
        self, request: pooler_pb2.StreamAssignmentsRequest, context: Any
    ) -> AsyncIterator[pooler_pb2.StreamAssignmentsResponse]:
        caller = await self.auth.caller(context)
        # Re-checked while open: disabling the pooler or revoking its certificate or key
        # ends the stream within `pooler_auth_recheck_seconds`.
        stream = self.feed.stream(caller.pooler.id, request.after_cursor)
        async for message in self.auth.guard(caller, stream):
            yield message

    async def GetAssignments(
        self, request: pooler_pb2.GetAssignmentsRequest, context: Any
    ) -> pooler_pb2.GetAssignmentsResponse:
        pooler = await self.auth.pooler(context)
        block_index = request.block_index or await self.view.current_index()
        if not await self.feed.plantings.block_known(pooler.id, block_index):
            raise NotFound(f"this pooler has no record of block {block_index}")
        rows = [
            r
            for r in await self.feed.plantings.plantings(pooler.id, block_index)
            if r.status == EventStatus.SUCCESS
        ]
        found = [await self.feed.assignment(r) for r in rows]
        return pooler_pb2.GetAssignmentsResponse(
            block_index=block_index, assignments=[a for a in found if a is not None]
        )

    async def ReportWork(
        self, request: pooler_pb2.ReportWorkRequest, context: Any
    ) -> pooler_pb2.ReportWorkResponse:
        pooler = await self.auth.pooler(context)
        return await self.works.report(pooler, request)

    async def RequestHarvest(
        self, request: pooler_pb2.RequestHarvestRequest, context: Any
    ) -> pooler_pb2.RequestHarvestResponse:
        pooler = await self.auth.pooler(context)
        farmer_ids = [check_uuid("farmer_ids", f) for f in request.farmer_ids]
        return await self.harvester.request(pooler, request.block_index, farmer_ids)

    async def Heartbeat(
        self, request: pooler_pb2.HeartbeatRequest, context: Any
    ) -> pooler_pb2.HeartbeatResponse:
        pooler = await self.auth.pooler(context)
        await self.auth.poolers.record_heartbeat(
            pooler.id, check_heartbeat(request), HEARTBEAT_WRITE_SECONDS
        )
        current = (await self.view.plantable()).current
        opened, due = convert.block_times(current)
        response = pooler_pb2.HeartbeatResponse(
            current_block_index=current.index,
            interval_seconds=HEARTBEAT_SECONDS,
            status=common_pb2.POOLER_STATUS_ACTIVE,
            active_farmers=pooler.current_farmers,
            current_block_opened_at=opened,
            next_block_due_at=due,
        )
        response.server_time.CopyFrom(wire.now())
        return response


def check_heartbeat(request: pooler_pb2.HeartbeatRequest) -> Heartbeat:
    """The heartbeat's figures, refused when a column cannot hold them."""
    version = request.agent_version.strip()
    if len(version) > MAX_AGENT_VERSION or not version.isprintable():
        raise InvalidArgument(
            f"agent_version must be at most {MAX_AGENT_VERSION} printable characters"
        )
    for name in ("capacity", "threads", "mining_farmers"):
        if getattr(request, name) > INT32_MAX:
            raise InvalidArgument(f"{name} must be at most {INT32_MAX}")
    for name in ("hashes_per_second", "last_cursor"):
        if getattr(request, name) > INT64_MAX:
            raise InvalidArgument(f"{name} must be at most {INT64_MAX}")
    for name in ("cpu_percent", "memory_percent"):
        if getattr(request, name) > 100:
            raise InvalidArgument(f"{name} must be a percentage, at most 100")
    return Heartbeat(
        capacity=request.capacity,
        hashes_per_second=request.hashes_per_second,
        threads=request.threads,
        mining_farmers=request.mining_farmers,
        agent_version=version,
        block_index=request.observed_block_index,
        last_cursor=request.last_cursor,
        # proto3 cannot tell 0 from unset: an agent that measures nothing sends 0, which
        # no rule fires on.
        cpu_percent=request.cpu_percent,
        memory_percent=request.memory_percent,
    )
