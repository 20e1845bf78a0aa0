"""The assignment model: the proto converter, its checks, the chain clock and work timing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from stellar_sdk import Keypair

from kalepool.v1 import pooler_pb2
from pooler_agent.assignment import Assignment
from pooler_agent.clock import ChainClock
from pooler_agent.work_manager import WorkTiming

FARMER = Keypair.random().public_key
ENTROPY = bytes(range(32))


def wire(**fields: object) -> pooler_pb2.Assignment:
    message = pooler_pb2.Assignment(
        cursor=41,
        planting_id="p-1",
        farmer_id="f-1",
        farmer_address=FARMER,
        block_index=37,
        entropy=ENTROPY,
        stake_stroops=5_000_000,
        plant_ledger=1234,
    )
    message.block_opened_at.seconds = 1_700_000_000
    message.work_deadline.seconds = 1_700_000_300
    message.work_deadline.nanos = 500_000_000
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def test_proto_assignment_converts_field_by_field_and_back() -> None:
    a = Assignment.from_proto(wire())
    assert a == Assignment(
        farmer_address=FARMER,
        block_index=37,
        entropy=ENTROPY,
        stake_stroops=5_000_000,
        plant_ledger=1234,
        block_opened_at=1_700_000_000,
        work_deadline=1_700_000_300.5,
        cursor=41,
        planting_id="p-1",
        farmer_id="f-1",
    )
    assert a.key == (FARMER, 37)
    assert a.farmer_bytes == Keypair.from_public_key(FARMER).raw_public_key()
    assert Assignment.from_proto(a.to_proto()) == a
    message = wire()
    message.ClearField("work_deadline")
    assert Assignment.from_proto(message).work_deadline is None


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"entropy": b"short"}, "entropy must be 32 bytes"),
        ({"farmer_address": "GNOTANADDRESS"}, "not a Stellar account"),
        ({"stake_stroops": -1}, "negative stake"),
    ],
)
def test_malformed_assignments_are_refused(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Assignment.from_proto(wire(**fields))


def test_an_assignment_needs_its_block_opening_time() -> None:
    message = wire()
    message.ClearField("block_opened_at")
    with pytest.raises(ValueError, match="no block_opened_at"):
        Assignment.from_proto(message)
    message = wire()
    message.work_deadline.seconds = 1_600_000_000
    with pytest.raises(ValueError, match="deadline is not after"):
        Assignment.from_proto(message)


def test_chain_clock_follows_ledgers_not_the_machine() -> None:
    wall = [100.0]
    clock = ChainClock(wall=lambda: wall[0])
    assert not clock.synced
    with pytest.raises(RuntimeError):
        clock.now()
    clock.observe(10, 5_000)
    wall[0] = 102.5
    assert clock.now() == 5_002.5
    clock.observe(10, 5_000)  # a later sighting of the same ledger moves nothing
    assert clock.now() == 5_002.5
    clock.observe(11, 5_001)  # a new ledger re-anchors the estimate
    assert clock.now() == 5_001 and clock.seconds_until(5_011) == 10


def test_mining_ends_at_the_work_delay_clamped_before_the_next_block() -> None:
    a = Assignment.from_proto(wire())
    opened = a.block_opened_at
    timing = WorkTiming(block_seconds=300, work_delay_seconds=282, submit_margin_seconds=10)
    assert timing.mining_ends_at(replace(a, work_deadline=None)) == opened + 282
    # A delay past the end of the block is clamped to leave the margin for the submission.
    late = WorkTiming(block_seconds=300, work_delay_seconds=299, submit_margin_seconds=10)
    assert late.mining_ends_at(replace(a, work_deadline=None)) == opened + 290
    # The pool's own deadline, when earlier, wins.
    assert late.mining_ends_at(replace(a, work_deadline=opened + 250)) == opened + 240
    with pytest.raises(ValueError):
        WorkTiming(block_seconds=0, work_delay_seconds=1)
