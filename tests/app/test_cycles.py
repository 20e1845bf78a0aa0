"""A block's cycle judged from the pool's GetBlock answer: complete, attributed or not."""

from __future__ import annotations

from kalepool.app.cycles import assess, failure_lines, summary_table
from kalepool.v1 import common_pb2, pool_pb2, records_pb2

OK = records_pb2.EVENT_STATUS_SUCCEEDED
FAILED = records_pb2.EVENT_STATUS_FAILED


def _block(
    status: pool_pb2.BlockStatus.ValueType,
    plantings: list[tuple[str, int]],
    works: list[tuple[str, int, int]] = (),  # type: ignore[assignment]
    harvests: list[tuple[str, int, int]] = (),  # type: ignore[assignment]
    fault: common_pb2.FaultParty.ValueType = common_pb2.FAULT_PARTY_POOLER,
) -> pool_pb2.GetBlockResponse:
    def failure(status: int) -> common_pb2.Failure | None:
        if status != FAILED:
            return None
        return common_pb2.Failure(
            fault=fault, code=common_pb2.FAILURE_CODE_WORK_LATE, message="too late"
        )

    return pool_pb2.GetBlockResponse(
        block=pool_pb2.BlockSummary(block_index=7, status=status),
        plantings=[
            records_pb2.PlantingEvent(block_index=7, farmer_id=f, status=s, failure=failure(s))
            for f, s in plantings
        ],
        works=[
            records_pb2.WorkEvent(block_index=7, farmer_id=f, status=s, zeros=z, failure=failure(s))
            for f, s, z in works
        ],
        harvests=[
            records_pb2.HarvestEvent(
                block_index=7, farmer_id=f, status=s, reward_stroops=r, failure=failure(s)
            )
            for f, s, r in harvests
        ],
    )


def test_every_farmer_planted_worked_and_harvested() -> None:
    outcome = assess(
        _block(
            pool_pb2.BLOCK_STATUS_COMPLETED,
            [("a", OK), ("b", OK)],
            [("a", OK, 5), ("b", OK, 7)],
            [("a", OK, 10), ("b", OK, 30)],
        )
    )
    assert (outcome.planted, outcome.worked, outcome.harvested) == (2, 2, 2)
    assert outcome.best_zeros == 7 and outcome.reward_stroops == 40
    assert outcome.settled and outcome.accepted and not outcome.failures


def test_a_work_failure_with_its_party_is_accepted() -> None:
    outcome = assess(
        _block(
            pool_pb2.BLOCK_STATUS_COMPLETED,
            [("a", OK), ("b", OK), ("c", FAILED)],
            [("a", OK, 5), ("b", FAILED, 0)],
            [("a", OK, 10)],
        )
    )
    assert outcome.accepted
    assert [(f.farmer_id, f.stage, f.fault, f.cause) for f in outcome.failures] == [
        ("c", "plant", "pooler", "work_late (pooler)"),
        ("b", "work", "pooler", "work_late (pooler)"),
    ]
    assert "block 7 work failed for farmer b: work_late (pooler): too late" in (
        failure_lines([outcome])
    )


def test_a_planted_farmer_without_work_is_not_complete() -> None:
    block = _block(
        pool_pb2.BLOCK_STATUS_COMPLETED, [("a", OK), ("b", OK)], [("a", OK, 5)], [("a", OK, 1)]
    )
    outcome = assess(block)
    assert outcome.unresolved == ["b"] and not outcome.settled and not outcome.accepted
    # At the end of the run it stays against the run, named.
    final = assess(block, final=True)
    assert not final.accepted
    assert failure_lines([final]) == ["block 7: farmer b has no recorded outcome"]


def test_a_block_still_harvesting_waits_for_its_harvests() -> None:
    block = _block(
        pool_pb2.BLOCK_STATUS_HARVESTING,
        [("a", OK)],
        [("a", OK, 5)],
        [("a", FAILED, 0)],
        fault=common_pb2.FAULT_PARTY_POOL,
    )
    assert not assess(block).settled  # the pool still retries the harvest
    final = assess(block, final=True)
    assert final.failures[0].stage == "harvest" and final.failures[0].fault == "pool"


def test_a_failure_without_a_party_is_not_accepted() -> None:
    outcome = assess(
        _block(
            pool_pb2.BLOCK_STATUS_FAILED,
            [("a", OK)],
            [("a", FAILED, 0)],
            fault=common_pb2.FAULT_PARTY_UNSPECIFIED,
        )
    )
    assert outcome.settled and not outcome.accepted
    assert outcome.failures[0].fault == "unattributed"
    assert failure_lines([outcome]) == [
        "block 7 work failed for farmer a: work_late (unattributed): too late"
    ]


def test_a_record_that_is_nobodys_fault_is_no_outcome() -> None:
    """Nobody's fault (a harvest asked too early, tried again) is not a failure, in the
    summary's lines as in the verdict: the farmer's outcome is the next try's."""
    block = _block(
        pool_pb2.BLOCK_STATUS_COMPLETED,
        [("a", OK), ("b", OK)],
        [("a", OK, 5), ("b", OK, 6)],
        [("a", OK, 10), ("b", FAILED, 0)],
        fault=common_pb2.FAULT_PARTY_NONE,
    )
    outcome = assess(block)
    assert outcome.failures == [] and outcome.unresolved == ["b"]
    assert not outcome.settled  # b's harvest is still to come
    final = assess(block, final=True)
    assert not final.accepted and final.failures == []
    assert failure_lines([final]) == ["block 7: farmer b has no recorded outcome"]
    # Its next try harvested it: the block is complete and accepted.
    block.harvests.add(block_index=7, farmer_id="b", status=OK, reward_stroops=20)
    again = assess(block)
    assert again.settled and again.accepted and again.harvested == 2
    assert again.reward_stroops == 30 and failure_lines([again]) == []


def test_the_summary_table_has_a_row_per_block() -> None:
    block = _block(
        pool_pb2.BLOCK_STATUS_COMPLETED, [("a", OK)], [("a", OK, 6)], [("a", OK, 25_000_000)]
    )
    outcome = assess(block)
    table = summary_table([outcome])
    assert table.row_count == 1
    headers = [str(c.header).replace("\n", " ") for c in table.columns]
    for column in ("block", "planted", "worked", "harvested", "best zeros", "reward KALE"):
        assert column in headers
