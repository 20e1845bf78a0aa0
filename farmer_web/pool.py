"""What the web page asks of the pool: PoolService over mTLS as `farmer-web`.

Only the RPCs the pool admits `farmer-web` to (`pool_service.server.FARMER_WEB_RPCS`) are
called here: reads, ConfirmFunding, and the three farmer actions (join, payout, leave),
each forwarded with the farmer's own signature of the action (the pool refuses them
without it). Answers become plain JSON-ready dictionaries. Amounts travel as decimal
strings of stroops (JavaScript numbers lose stroops past 2^53) beside their exact KALE
text.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from kalepool import wire
from kalepool.amounts import exact_kale
from kalepool.tls import POOL_SERVER, Identity, channel_credentials
from kalepool.v1 import common_pb2, pool_pb2, pool_pb2_grpc, records_pb2

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
        self._pool_name: str | None = None

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

    # --- one farmer ---------------------------------------------------------------------

    async def pool_name(self) -> str:
        """The `pool:` line of action messages: the network passphrase (read once)."""
        if self._pool_name is None:
            stats = await self.stub.GetPoolStats(
                pool_pb2.GetPoolStatsRequest(last_blocks=1), timeout=self.timeout
            )
            self._pool_name = stats.network_passphrase
        return self._pool_name

    async def farmer(self, farmer_id: str) -> pool_pb2.Farmer | None:
        """The farmer, or None when the pool knows no such farmer."""
        try:
            got = await self.stub.GetFarmer(
                pool_pb2.GetFarmerRequest(farmer_id=farmer_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return got.farmer

    async def balance(self, farmer_id: str) -> pool_pb2.GetFarmerBalanceResponse:
        return await self.stub.GetFarmerBalance(
            pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer_id), timeout=self.timeout
        )

    async def confirm_funding(self, farmer_id: str) -> pool_pb2.ConfirmFundingResponse:
        return await self.stub.ConfirmFunding(
            pool_pb2.ConfirmFundingRequest(farmer_id=farmer_id), timeout=self.timeout
        )

    async def blocks(self, farmer_id: str, limit: int) -> list[dict[str, Any]]:
        """The farmer's newest `limit` blocks (ListFarmerBlocks), newest first."""
        got = await self.stub.ListFarmerBlocks(
            pool_pb2.ListFarmerBlocksRequest(
                farmer_id=farmer_id, pagination=common_pb2.Pagination(page_size=limit)
            ),
            timeout=self.timeout,
        )
        return [
            {
                "block": b.block_index,
                "planted": b.planted,
                "stake": amount(b.stake_stroops),
                "worked": b.worked,
                "zeros": b.zeros,
                "harvested": b.harvested,
                "reward": amount(b.reward_stroops),
                "compensation": amount(b.compensation_stroops),
                "fees": amount(b.fees_stroops),
                "failure": b.failure or None,
            }
            for b in got.blocks
        ]

    async def ledger(self, farmer_id: str, limit: int) -> list[dict[str, Any]]:
        """The farmer's newest `limit` ledger entries, newest first."""
        got = await self.stub.ListFarmerLedger(
            pool_pb2.ListFarmerLedgerRequest(
                farmer_id=farmer_id, pagination=common_pb2.Pagination(page_size=limit)
            ),
            timeout=self.timeout,
        )
        return [
            {
                "kind": _label(records_pb2.LedgerEntryKind, e.kind, "LEDGER_ENTRY_KIND_"),
                "amount": amount(e.amount_stroops),
                "balance_after": amount(e.balance_after_stroops),
                "block": e.block_index or None,
                "tx_hash": e.tx_hash or None,
                "time": _time(e.created_at, e.HasField("created_at")),
            }
            for e in got.entries
        ]

    async def payouts(self, farmer_id: str, limit: int) -> list[dict[str, Any]]:
        """The farmer's newest `limit` payouts, newest first."""
        got = await self.stub.ListPayouts(
            pool_pb2.ListPayoutsRequest(
                farmer_id=farmer_id, pagination=common_pb2.Pagination(page_size=limit)
            ),
            timeout=self.timeout,
        )
        return [payout_view(p) for p in got.payouts]

    # --- the farmer's signed actions --------------------------------------------------

    async def register(
        self, pooler_id: str, payout_address: str, stake_bps: int, signed: Signed
    ) -> pool_pb2.RegisterFarmerResponse:
        """RegisterFarmer with the farmer's signed join (its nonce keys retries)."""
        return await self.stub.RegisterFarmer(
            pool_pb2.RegisterFarmerRequest(
                pooler_id=pooler_id,
                payout_address=payout_address,
                stake_bps=stake_bps,
                idempotency_key=f"web-join:{signed.nonce}",
                farmer_signature=signed.proto(),
            ),
            timeout=self.timeout,
        )

    async def request_payout(
        self, farmer_id: str, amount_stroops: int, signed: Signed
    ) -> pool_pb2.RequestPayoutResponse:
        return await self.stub.RequestPayout(
            pool_pb2.RequestPayoutRequest(
                farmer_id=farmer_id,
                amount_stroops=amount_stroops,
                idempotency_key=f"web-payout:{signed.nonce}",
                farmer_signature=signed.proto(),
            ),
            timeout=self.timeout,
        )

    async def leave(self, farmer_id: str, signed: Signed) -> pool_pb2.LeavePoolResponse:
        return await self.stub.LeavePool(
            pool_pb2.LeavePoolRequest(farmer_id=farmer_id, farmer_signature=signed.proto()),
            timeout=self.timeout,
        )


@dataclass(frozen=True, slots=True)
class Signed:
    """A farmer's signed action message, as forwarded to the pool."""

    message: str
    signature: bytes
    nonce: str

    def proto(self) -> pool_pb2.FarmerSignature:
        return pool_pb2.FarmerSignature(message=self.message, signature=self.signature)


def farmer_status(farmer: pool_pb2.Farmer) -> str:
    """A farmer's status as the API writes it (`pending_funding`, `active`, ...)."""
    return _label(common_pb2.FarmerStatus, farmer.status, "FARMER_STATUS_")


def payout_view(p: records_pb2.Payout) -> dict[str, Any]:
    """A payout as the API gives it."""
    return {
        "payout_id": p.payout_id,
        "amount": amount(p.amount_stroops),
        "status": _label(common_pb2.TxStatus, p.transaction.status, "TX_STATUS_"),
        "tx_hash": p.transaction.tx_hash or None,
        "created_at": _time(p.requested_at, p.HasField("requested_at")),
        "failure": p.failure.message if p.HasField("failure") else None,
    }
