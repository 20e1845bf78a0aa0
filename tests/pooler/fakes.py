"""Fakes for the agent's own logic: a chain that says only what a test sets, a pool that
answers as scripted, a submitter whose submissions a test releases. Unit tests only:
the integration tests run the real pool, wallet and devnet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import grpc
from stellar_sdk import Account, Keypair, StrKey, TransactionBuilder, scval

from kalepool import wire
from kalepool.chain import ChainClient, CurrentBlock, LedgerInfo, SignedTx, TxKind
from kalepool.v1 import pooler_pb2, records_pb2
from pooler_agent.agent import PoolerAgent
from pooler_agent.assignment import Assignment
from pooler_agent.block_monitor import BlockMonitor
from pooler_agent.clock import ChainClock
from pooler_agent.journal import WorkJournal
from pooler_agent.pool_client import Backoff, CursorTracker, PoolClient, PoolError
from pooler_agent.work_manager import MinedWork, WorkManager, WorkTiming
from pooler_agent.work_submitter import WorkResult, WorkStatus, WorkSubmitter

BLOCK_SECONDS = 300
PASSPHRASE = "fake network"


class FakeChain:
    """The latest ledger and the farm's current block, as a test sets them."""

    def __init__(self, close_time: int = 1_000_000) -> None:
        self.sequence = 100
        self.close_time = close_time
        self.block = CurrentBlock(
            index=7,
            timestamp=close_time - 100,
            entropy=bytes(32),
            next_block_at=close_time - 100 + BLOCK_SECONDS,
            paused=False,
            block=None,
            ledger=self.sequence,
        )
        self.reads = 0
        self.config = type("Config", (), {"network_passphrase": PASSPHRASE})()

    def opened(self, index: int, seconds_ago: float) -> None:
        """The current block is `index`, opened `seconds_ago` before the latest close."""
        opened = self.close_time - int(seconds_ago)
        self.block = replace(
            self.block, index=index, timestamp=opened, next_block_at=opened + BLOCK_SECONDS
        )

    def close(self, seconds: int = 5) -> None:
        self.sequence += 1
        self.close_time += seconds

    async def latest_ledger(self) -> LedgerInfo:
        self.reads += 1
        return LedgerInfo(self.sequence, self.close_time)

    async def read(self, _client: ChainClient) -> CurrentBlock:
        return replace(self.block, ledger=self.sequence)


def farmer_assignment(block: int, opened: float, cursor: int, farmer: str = "") -> Assignment:
    address = farmer or Keypair.random().public_key
    return Assignment(
        farmer_address=address,
        block_index=block,
        entropy=bytes(range(32)),
        stake_stroops=0,
        plant_ledger=50,
        block_opened_at=opened,
        cursor=cursor,
        farmer_id=f"farmer-{address[:8]}",
    )


@dataclass
class FakePool:
    """PoolerService as scripted: plant refusals, report answers, an assignment queue."""

    timeout: float = 2.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.01, maximum=0.05))
    plant_failures: list[grpc.StatusCode] = field(default_factory=list)  # next plants fail so
    report_failures: list[grpc.StatusCode] = field(default_factory=list)  # next reports fail so
    failing_blocks: set[int] = field(default_factory=set)  # reports of these fail (INTERNAL)
    nobody_planted: int = 0  # the next plants answer that every farmer's plant failed
    plant_holds: int = 0  # the next plants are refused by the pool's contract watch
    plants: list[int] = field(default_factory=list)
    reports: list[tuple[int, list[pooler_pb2.WorkReport]]] = field(default_factory=list)
    answer: Callable[[list[pooler_pb2.WorkReport]], pooler_pb2.ReportWorkResponse] | None = None
    stream: asyncio.Queue[pooler_pb2.Assignment] = field(default_factory=asyncio.Queue)
    planted_farmers: list[str] = field(default_factory=list)

    async def request_plant(
        self, block_index: int, max_farmers: int = 0
    ) -> pooler_pb2.RequestPlantResponse:
        self.plants.append(block_index)
        if self.plant_holds:
            self.plant_holds -= 1
            raise PoolError(
                "RequestPlant",
                grpc.StatusCode.FAILED_PRECONDITION,
                wire.CONTRACT_HOLD_PREFIX + "the farm is paused by its homesteader",
            )
        if self.plant_failures:
            code = self.plant_failures.pop(0)
            raise PoolError("RequestPlant", code, f"block {block_index} cannot be planted now")
        if self.nobody_planted:
            self.nobody_planted -= 1
            return pooler_pb2.RequestPlantResponse(
                block_index=block_index,
                summary=pooler_pb2.PlantSummary(total_requested=1, failed=1),
            )
        return pooler_pb2.RequestPlantResponse(
            block_index=block_index,
            planted=[
                records_pb2.PlantingEvent(farmer_id=f, block_index=block_index)
                for f in self.planted_farmers
            ],
        )

    async def report_work(
        self, block_index: int, reports: list[pooler_pb2.WorkReport]
    ) -> pooler_pb2.ReportWorkResponse:
        self.reports.append((block_index, list(reports)))
        if self.report_failures:
            code = self.report_failures.pop(0)
            raise PoolError("ReportWork", code, "not now")
        if block_index in self.failing_blocks:
            raise PoolError("ReportWork", grpc.StatusCode.INTERNAL, "the pool failed inside")
        if self.answer is not None:
            return self.answer(list(reports))
        return pooler_pb2.ReportWorkResponse(recorded=len(reports))

    async def request_harvest(self, block_index: int) -> pooler_pb2.RequestHarvestResponse:
        return pooler_pb2.RequestHarvestResponse(block_index=block_index)

    async def heartbeat(self, request: Any) -> pooler_pb2.HeartbeatResponse:
        return pooler_pb2.HeartbeatResponse(interval_seconds=30)

    async def assignments(self, cursors: CursorTracker) -> AsyncIterator[pooler_pb2.Assignment]:
        while True:
            message = await self.stream.get()
            cursors.receive(message.cursor)
            yield message

    def reported(self, farmer_id: str) -> list[int]:
        """The statuses reported for a farmer, in order."""
        return [r.status for _, batch in self.reports for r in batch if r.farmer_id == farmer_id]


class FakeChannels:
    def __init__(self) -> None:
        self.held: list[tuple[str, float]] = []

    def hold(self, address: str, until: float) -> None:
        self.held.append((address, until))


def signed(max_time: int, payer: Keypair | None = None) -> SignedTx:
    """A signed `work` envelope (never sent anywhere), paid by `payer` or a fresh account."""
    payer = payer or Keypair.random()
    envelope = (
        TransactionBuilder(Account(payer.public_key, 1), PASSPHRASE, 100)
        .append_invoke_contract_function_op(
            StrKey.encode_contract(bytes(32)),
            "work",
            [scval.to_address(Keypair.random().public_key), scval.to_bytes(bytes(32))],
        )
        .add_time_bounds(0, max_time)
        .build()
    )
    envelope.sign(payer)
    tx = SignedTx.from_envelope(envelope.to_xdr(), PASSPHRASE)
    assert tx.kind is TxKind.WORK
    return tx


class FakeSubmitter:
    """Submissions wait until the test releases them; `settle` answers from a script."""

    def __init__(self, max_time: int = 1_000_060) -> None:
        self.client = FakeChain()
        self.channels = FakeChannels()
        self.record: Any = None
        self.submitted: list[MinedWork] = []
        self.release = asyncio.Event()
        self.release.set()
        self.status = WorkStatus.SUCCESS
        self.max_time = max_time
        self.settles: list[tuple[WorkStatus, bool]] = []  # what settle answers, in turn
        self.followed: list[WorkResult] = []

    async def submit(self, mined: MinedWork) -> WorkResult:
        self.submitted.append(mined)
        base = WorkResult(
            mined.assignment,
            WorkStatus.FAILED,
            mined.nonce,
            mined.hash,
            mined.zeros,
            mined.hashes,
        )
        if not mined.sendable:
            return replace(base, message=f"not sent: {mined.cancelled}")
        tx = signed(self.max_time)
        if self.record is not None:
            await self.record(mined, tx)
        await self.release.wait()
        if self.status is WorkStatus.SUCCESS:
            return replace(base, status=WorkStatus.SUCCESS, gap=3, tx_hash=tx.hash, ledger=120)
        return replace(base, status=self.status, tx_hash=tx.hash, envelope=tx)

    async def settle(self, result: WorkResult) -> tuple[WorkResult, bool]:
        self.followed.append(result)
        status, final = self.settles.pop(0) if self.settles else (WorkStatus.SUCCESS, True)
        if status is WorkStatus.SUCCESS:
            return replace(result, status=status, gap=3, ledger=120), True
        return replace(result, status=status), final


def make_agent(
    chain: FakeChain,
    pool: FakePool,
    submitter: FakeSubmitter,
    cursors: CursorTracker,
    *,
    journal: WorkJournal | None = None,
    min_work_window: float = 30.0,
    target_zeros: int | None = None,
) -> PoolerAgent:
    """An agent on fakes: the chain's clock is exactly the latest close time."""
    clock = ChainClock(wall=lambda: 0.0)
    manager = WorkManager(
        WorkTiming(block_seconds=BLOCK_SECONDS, work_delay_seconds=282, submit_margin_seconds=10),
        clock,
        capacity=4,
        threads=1,
        target_zeros=target_zeros,
    )
    monitor = BlockMonitor(cast(ChainClient, chain), interval=0.01, clock=clock, reader=chain.read)
    return PoolerAgent(
        pool=cast(PoolClient, pool),
        monitor=monitor,
        manager=manager,
        submitter=cast(WorkSubmitter, submitter),
        cursors=cursors,
        journal=journal,
        heartbeat_seconds=30.0,
        report_linger=0.01,
        min_work_window=min_work_window,
        follow_backoff=Backoff(initial=0.01, maximum=0.05),
    )
