"""What the web page reads from the pool: PoolService over mTLS as `farmer-web`.

Only the read RPCs the pool admits `farmer-web` to (`pool_service.server.FARMER_WEB_RPCS`)
are called here; the answers become plain JSON-ready dictionaries. Amounts travel as
decimal strings of stroops (JavaScript numbers lose stroops past 2^53) beside their
exact KALE text.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from kalepool import wire
from kalepool.amounts import exact_kale
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import common_pb2, pool_pb2, pool_pb2_grpc

RECENT_BLOCKS = 20
"""Blocks the pool view lists, newest first."""
PARTICIPATION_BLOCKS = 100
"""Blocks a pooler's participation counts over."""
MAX_FARMERS_SHOWN = 100
"""Farmers of one payout address /api/me shows."""


def _label(enum: Any, value: int, prefix: str) -> str:
    """An enum value as a short lowercase word (`BLOCK_STATUS_HARVESTED` -> `harvested`)."""
    name: str = enum.Name(value) if value in enum.values() else f"{prefix}UNKNOWN"
    return name.removeprefix(prefix).lower()


def amount(stroops: int) -> dict[str, str]:
    """An amount as the API gives it: stroops (a decimal string) and exact KALE."""
    return {"stroops": str(stroops), "kale": exact_kale(stroops)}


def _time(stamp: Any, present: bool) -> str | None:
    when = wire.when(stamp) if present else None
    return when.isoformat() if when is not None else None


class PoolReader:
    """A PoolService channel presenting the `farmer-web` certificate. The pool view is
    kept `view_seconds` so a busy page costs the pool a few calls a second at most."""

    def __init__(
        self,
        address: str,
        identity: Identity,
        ca_pem: bytes,
        *,
        server_name: str = POOL_SERVER,
        view_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.channel = grpc.aio.secure_channel(
            address,
            channel_credentials(identity, ca_pem),
            options=[("grpc.ssl_target_name_override", server_name)],
        )
        self.stub = pool_pb2_grpc.PoolServiceStub(self.channel)
        self.view_seconds = view_seconds
        self.timeout = timeout_seconds
        self._view: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self.channel.close()

    async def pool_view(self) -> dict[str, Any]:
        """Poolers (name, capacity, participation) and recent blocks, as /api/pool gives."""
        async with self._lock:
            if self._view is not None and time.monotonic() - self._view[0] < self.view_seconds:
                return self._view[1]
            view = await self._read_view()
            self._view = (time.monotonic(), view)
            return view

    async def _read_view(self) -> dict[str, Any]:
        t = self.timeout
        stats = await self.stub.GetPoolStats(pool_pb2.GetPoolStatsRequest(), timeout=t)
        listed = await self.stub.ListPoolers(
            pool_pb2.ListPoolersRequest(
                pagination=common_pb2.Pagination(page_size=100),
                status=common_pb2.POOLER_STATUS_ACTIVE,
            ),
            timeout=t,
        )
        poolers = []
        for pooler in listed.poolers:
            ps = await self.stub.GetPoolerStats(
                pool_pb2.GetPoolerStatsRequest(
                    pooler_id=pooler.pooler_id, last_blocks=PARTICIPATION_BLOCKS
                ),
                timeout=t,
            )
            poolers.append(
                {
                    "pooler_id": pooler.pooler_id,
                    "name": pooler.name,
                    "max_farmers": pooler.max_farmers,
                    "current_farmers": pooler.current_farmers,
                    "capacity": ps.capacity,
                    "hashes_per_second": ps.hashes_per_second,
                    "participation": {
                        "blocks": ps.blocks,
                        "plants_succeeded": ps.counts.plants_succeeded,
                        "plants_failed": ps.counts.plants_failed,
                        "works_succeeded": ps.counts.works_succeeded,
                        "works_failed": ps.counts.works_failed,
                        "harvests_succeeded": ps.counts.harvests_succeeded,
                        "harvests_failed": ps.counts.harvests_failed,
                        "rewards": amount(ps.total_reward_stroops),
                    },
                }
            )
        blocks = await self.stub.ListBlocks(
            pool_pb2.ListBlocksRequest(pagination=common_pb2.Pagination(page_size=RECENT_BLOCKS)),
            timeout=t,
        )
        return {
            "current_block_index": stats.current_block_index,
            "farmers_active": stats.farmers_active,
            "poolers": poolers,
            "blocks": [
                {
                    "block_index": b.block_index,
                    "status": _label(pool_pb2.BlockStatus, b.status, "BLOCK_STATUS_"),
                    "opened_at": _time(b.opened_at, b.HasField("opened_at")),
                    "farmers": b.total_farmers,
                    "planted": b.counts.plants_succeeded,
                    "worked": b.counts.works_succeeded,
                    "harvested": b.counts.harvests_succeeded,
                    "staked": amount(b.total_staked_stroops),
                    "rewards": amount(b.total_reward_stroops),
                    "best_zeros": b.best_zeros,
                }
                for b in blocks.blocks
            ],
        }

    async def farmers_of(self, payout_address: str) -> list[dict[str, Any]]:
        """The farmers paying out to `payout_address`: balance, stake and status."""
        t = self.timeout
        listed = await self.stub.ListFarmers(
            pool_pb2.ListFarmersRequest(
                pagination=common_pb2.Pagination(page_size=MAX_FARMERS_SHOWN),
                payout_address=payout_address,
            ),
            timeout=t,
        )
        farmers = []
        for farmer in listed.farmers:
            balance = await self.stub.GetFarmerBalance(
                pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer.farmer_id), timeout=t
            )
            farmers.append(
                {
                    "farmer_id": farmer.farmer_id,
                    "pooler_id": farmer.pooler_id,
                    "custodial_address": farmer.custodial_address,
                    "status": _label(common_pb2.FarmerStatus, farmer.status, "FARMER_STATUS_"),
                    "stake_bps": farmer.stake_bps,
                    "balance": amount(balance.balance_stroops),
                    "available": amount(balance.available_stroops),
                    "staked": amount(balance.staked_stroops),
                    "rewards": amount(balance.total_reward_stroops),
                    "paid_out": amount(balance.total_paid_out_stroops),
                }
            )
        return farmers
