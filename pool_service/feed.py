"""The assignment feed: one live stream per pooler, resumable by cursor.

A cursor is the id of the successful `plantings` row behind an assignment. Rows of one
pooler are inserted under a lock held until commit, so their ids become visible in
increasing order and "everything after cursor N" never skips a row that commits late.
A stream sends every such row whose block is still the chain's current one (or newer),
then waits to be woken by a new plant (in this process) or for the poll interval
(plants made by another replica), and sends what is new.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import UUID

from kalepool import wire
from kalepool.grpc_server import Aborted, OutOfRange
from kalepool.v1 import pooler_pb2
from pool_service.books.plantings import PlantingRow, PlantingStore
from pool_service.chain_view import ChainView


class Subscriber:
    """One open stream: woken on new assignments, told when a newer stream replaced it."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.replaced = False


class Feeds:
    """The open stream of each pooler (one at a time: a newer one replaces the older)."""

    def __init__(self) -> None:
        self._open: dict[UUID, Subscriber] = {}

    def attach(self, pooler_id: UUID) -> Subscriber:
        old = self._open.get(pooler_id)
        if old is not None:
            old.replaced = True
            old.wake.set()
        sub = self._open[pooler_id] = Subscriber()
        return sub

    def detach(self, pooler_id: UUID, sub: Subscriber) -> None:
        if self._open.get(pooler_id) is sub:
            del self._open[pooler_id]

    def notify(self, pooler_id: UUID) -> None:
        sub = self._open.get(pooler_id)
        if sub is not None:
            sub.wake.set()

    def connected(self, pooler_id: UUID) -> bool:
        return pooler_id in self._open


class AssignmentFeed:
    """Builds assignments from plantings and serves the stream."""

    def __init__(
        self, plantings: PlantingStore, view: ChainView, feeds: Feeds, poll_seconds: float = 1.0
    ) -> None:
        self.plantings = plantings
        self.view = view
        self.feeds = feeds
        self.poll_seconds = poll_seconds

    async def assignment(self, row: PlantingRow) -> pooler_pb2.Assignment | None:
        """The assignment of a successful planting; None when its block left the chain."""
        block = await self.view.block(row.block_index)
        if block is None:
            return None
        return pooler_pb2.Assignment(
            cursor=row.id,
            planting_id=str(row.id),
            farmer_id=str(row.farmer_id),
            farmer_address=row.custodial_public_key,
            block_index=row.block_index,
            entropy=block.entropy,
            stake_stroops=row.stake_amount,
            plant_ledger=row.ledger or 0,
            block_opened_at=wire.epoch(block.timestamp),
            # From then on anyone's plant may open the next block and end this one.
            work_deadline=wire.epoch(block.timestamp + self.view.block_seconds),
        )

    async def stream(
        self, pooler_id: UUID, after_cursor: int
    ) -> AsyncIterator[pooler_pb2.StreamAssignmentsResponse]:
        last = await self.plantings.last_cursor(pooler_id)
        if after_cursor > last:
            raise OutOfRange(
                f"cursor {after_cursor} was never issued (the latest is {last}); start again from 0"
            )
        sub = self.feeds.attach(pooler_id)
        cursor = after_cursor
        try:
            while True:
                if sub.replaced:
                    raise Aborted("a newer assignment stream of this pooler replaced this one")
                sub.wake.clear()  # before reading: a plant landing meanwhile wakes us again
                current = await self.view.current_index()
                rows = await self.plantings.assignments_after(pooler_id, cursor, current)
                for row in rows:
                    assignment = await self.assignment(row)
                    cursor = row.id
                    if assignment is not None:
                        yield pooler_pb2.StreamAssignmentsResponse(assignment=assignment)
                if rows:
                    continue  # a full page may have more behind it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wake.wait(), self.poll_seconds)
        finally:
            self.feeds.detach(pooler_id, sub)
