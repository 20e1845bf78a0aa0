"""The harvest loop's judgements and reads (unit).

The verdict on a pail's work the pass records from the chain is the one place whose fault
a failed work is: a failure the pooler reported keeps its party (the chain only confirms
it), a plant the pool recorded after the block's work window is the pool's, and only a
pail with nothing reported is the pooler's. The farm's view is read once per pass, and
"has the chain follower read past now" once, after all the answers that need it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from stellar_sdk import Keypair

from kalepool.chain import LedgerInfo
from kalepool.chain import Pail as ChainPail
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, wallet_pb2
from pool_service import harvesting
from pool_service.books.harvests import HarvestStore, Pail
from pool_service.books.works import Unreported, WorkStore
from pool_service.chain_view import ChainView
from pool_service.harvesting import Harvester, observed_verdict
from pool_service.wallet import WalletClient

FARMER = uuid.uuid4()
ADDRESS = "G" + "A" * 55


def _unreported(**values: Any) -> Unreported:
    return Unreported(FARMER, uuid.uuid4(), 41, ADDRESS, 900, **values)


def _pail(worked: bool) -> ChainPail:
    return ChainPail(ADDRESS, 41, 900, 7 if worked else None, 50, 5 if worked else None)


IDLE = _pail(False)


@pytest.mark.parametrize(
    ("reported", "late", "fault"),
    [
        (None, False, "pooler"),  # nothing reported: the pooler's
        ("pooler", False, "pooler"),
        ("chain", False, "chain"),  # the chain only confirms the failure reported
        ("pool", False, "pool"),
        ("farmer", False, "farmer"),
        (None, True, "pool"),  # the plant was recorded after the work window
        ("pooler", True, "pool"),  # a WORK_LATE the pooler blamed on itself included
    ],
)
@pytest.mark.parametrize("pail", [IDLE, None])
def test_a_failed_works_verdict_keeps_the_party_reported_unless_the_plant_came_late(
    reported: str | None, late: bool, fault: str, pail: ChainPail | None
) -> None:
    u = _unreported(
        recorded_late=late,
        reported_fault=reported,
        reported_code="WORK_LATE" if reported else None,
        reported_message="the block moved on" if reported else None,
    )
    work = observed_verdict(u, pail, follower_knows=True)
    assert work is not None and work.observed_on_chain
    assert (work.status, work.fault) == ("failed", fault)
    assert work.error_code == ("WORK_MISSING" if pail else "PAIL_MISSING")
    message = work.error_message or ""
    if late:
        assert "after the block's work window" in message
    elif reported:
        assert "confirming the failure the pooler reported (WORK_LATE" in message
        assert "the block moved on" in message


def test_a_worked_pail_is_a_success_and_a_gone_one_waits_for_the_follower() -> None:
    late = _unreported(recorded_late=True, reported_fault="chain", reported_code="X")
    worked = observed_verdict(late, _pail(True), follower_knows=False)
    assert worked is not None and (worked.status, worked.fault, worked.zeros, worked.gap) == (
        "success",
        "none",
        5,
        7,
    )
    assert observed_verdict(_unreported(), None, follower_knows=False) is None


# --- reads per pass ---------------------------------------------------------------------


class _Chain:
    def __init__(self) -> None:
        self.latest_reads = 0
        self.config = type("C", (), {"block_seconds": 300})()

    async def latest_ledger(self) -> LedgerInfo:
        self.latest_reads += 1
        return LedgerInfo(sequence=1000, close_time=0)


class _View:
    def __init__(self) -> None:
        self.chain = _Chain()
        self.views = 0
        self.block_seconds = 300

    async def plantable(self, *, fresh: bool = False) -> Any:
        self.views += 1
        current = type("Current", (), {"index": 50})()
        return type("P", (), {"current": current, "latest_ledger": 1000})()


class _Store:
    def __init__(self, unreported: list[Unreported]) -> None:
        self.follower_reads = 0
        self.recorded: list[tuple[Pail, str]] = []
        self.observed: list[Any] = []
        self._unreported = unreported

    async def follower_ledger(self) -> int:
        self.follower_reads += 1
        return 2000  # past the latest ledger

    async def record(self, pail: Pail, *, status: str, **rest: Any) -> None:
        self.recorded.append((pail, status))

    async def unreported(self, *args: Any, **kwargs: Any) -> list[Unreported]:
        return self._unreported

    async def record_observed(self, u: Unreported, work: Any) -> None:
        self.observed.append(work)

    async def pails(self, *args: Any, **kwargs: Any) -> list[Pail]:
        return []


class _Missing:
    async def Harvest(self, request: wallet_pb2.HarvestRequest, **options: Any) -> Any:
        out = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_REJECTED)
        out.failure.code = common_pb2.FAILURE_CODE_PAIL_MISSING
        out.failure.fault = common_pb2.FAULT_PARTY_POOL
        out.failure.message = "gone"
        return wallet_pb2.HarvestResponse(outcome=out)


def _harvester(store: _Store, view: _View, tmp_path: Path) -> Harvester:
    wallet = cast(WalletClient, type("W", (), {"stub": _Missing()})())
    settings = Settings(network="devnet", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    return Harvester(
        cast(HarvestStore, store), cast(WorkStore, store), wallet, cast(ChainView, view), settings
    )


async def test_pails_found_gone_ask_the_follower_once_per_pass(tmp_path: Path) -> None:
    store, view = _Store([]), _View()
    pails = [Pail(uuid.uuid4(), uuid.uuid4(), 41, ADDRESS, 50) for _ in range(5)]
    done = await _harvester(store, view, tmp_path).harvest(pails)
    assert (view.chain.latest_reads, store.follower_reads) == (1, 1)
    assert [status for _, status in store.recorded] == ["failed"] * 5 and not done.pending


async def test_a_pass_reads_the_farm_once_and_the_follower_only_for_a_gone_pail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreported = [_unreported() for _ in range(3)]

    async def idle_pails(chain: Any, keys: Any) -> dict[Any, ChainPail | None]:
        return {k: IDLE for k in keys}

    monkeypatch.setattr(harvesting, "read_pails", idle_pails)
    store, view = _Store(unreported), _View()
    await _harvester(store, view, tmp_path).run_once()
    # One view of the farm (current block and latest ledger), no follower question.
    assert (view.views, view.chain.latest_reads, store.follower_reads) == (1, 0, 0)
    assert len(store.observed) == 3

    async def gone_pails(chain: Any, keys: Any) -> dict[Any, ChainPail | None]:
        return dict.fromkeys(keys)

    monkeypatch.setattr(harvesting, "read_pails", gone_pails)
    store, view = _Store(unreported), _View()
    await _harvester(store, view, tmp_path).run_once()
    assert (view.views, view.chain.latest_reads, store.follower_reads) == (1, 1, 1)
    assert [w.error_code for w in store.observed] == ["PAIL_MISSING"] * 3


# --- pages of the loop --------------------------------------------------------------------


class _PagedStore(_Store):
    """Worked pails not yet harvested, read a page (`limit`) at a time, oldest first."""

    def __init__(self, pails: list[Pail]) -> None:
        super().__init__([])
        self.left = list(pails)
        self.limits: list[int] = []

    async def pails(self, *args: Any, limit: int = 200, **kwargs: Any) -> list[Pail]:
        self.limits.append(limit)
        return self.left[:limit]

    async def record(self, pail: Pail, *, status: str, **rest: Any) -> None:
        await super().record(pail, status=status)
        if status == "success":
            self.left.remove(pail)


class _Harvests:
    """Harvests every pail but those of `stuck` farmers (answered pending)."""

    def __init__(self, stuck: set[str]) -> None:
        self.stuck = stuck
        self.asked = 0

    async def Harvest(self, request: wallet_pb2.HarvestRequest, **options: Any) -> Any:
        self.asked += 1
        if request.farmer_address in self.stuck:
            out = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_PENDING)
            return wallet_pb2.HarvestResponse(outcome=out)
        out = wallet_pb2.TransactionOutcome(status=common_pb2.TX_STATUS_SUCCESS, ledger=9)
        return wallet_pb2.HarvestResponse(outcome=out, reward_stroops=1)


def _paged(store: _PagedStore, stub: _Harvests, tmp_path: Path, size: int) -> Harvester:
    harvester = _harvester(store, _View(), tmp_path)
    harvester.wallet = cast(WalletClient, type("W", (), {"stub": stub})())
    harvester.settings = harvester.settings.model_copy(update={"max_harvest_batch_size": size})
    return harvester


def _addressed(n: int) -> list[Pail]:
    return [Pail(uuid.uuid4(), uuid.uuid4(), 41, Keypair.random().public_key, 0) for _ in range(n)]


async def test_a_pass_harvests_every_page_not_only_the_first(tmp_path: Path) -> None:
    pails = _addressed(25)
    store, stub = _PagedStore(pails), _Harvests(set())
    await _paged(store, stub, tmp_path, 10).run_once()
    # Pages of 10, 10 and 5: every pail harvested once in one pass.
    assert store.limits == [10, 10, 10] and not store.left and stub.asked == 25
    assert [s for _, s in store.recorded] == ["success"] * 25


async def test_a_page_where_nothing_settles_ends_the_pass(tmp_path: Path) -> None:
    pails = _addressed(12)
    stuck = {p.custodial_public_key for p in pails[:10]}
    store, stub = _PagedStore(pails), _Harvests(stuck)
    await _paged(store, stub, tmp_path, 10).run_once()
    # The first page settles nothing: the pass stops there (the next pass asks again).
    assert store.limits == [10] and stub.asked == 10 and len(store.left) == 12
    stub.stuck = set()
    await _paged(store, stub, tmp_path, 10).run_once()
    assert not store.left and stub.asked == 22
