"""The live view of `kale-pool pooler`: what one snapshot draws, the view refreshing from
the agent, and where log lines go while it holds the terminal."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import cast

from rich.console import Console
from stellar_sdk import Keypair

from pooler_agent.agent import AgentSnapshot, AgentStats, FarmerState, PoolerAgent
from pooler_agent.view import Event, LiveView, RecentEvents, log_to_file, render, showing_events

MINING = Keypair.random().public_key
LANDED = Keypair.random().public_key


def _snapshot(**changes: object) -> AgentSnapshot:
    values: dict[str, object] = {
        "hashes_per_second": 1_500_000.0,
        "threads": 4,
        "capacity": 50,
        "mining_farmers": 1,
        "block_index": 31_337,
        "block_opened_at": 1_000_000.0,
        "seconds_to_work_deadline": 100.0,
        "seconds_to_next_block": 118.0,
        "farmers": (
            FarmerState(MINING, 31_337, 7, 2_500_000, "mining"),
            FarmerState(LANDED, 31_337, 9, 40_000_000, "landed"),
        ),
        "following": 1,
        "stats": AgentStats(submitted=3, succeeded=2, failed=1, plant_requests=2),
    }
    values.update(changes)
    return AgentSnapshot(**values)  # type: ignore[arg-type]


def _text(renderable: object, width: int = 100) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_a_snapshot_draws_rate_farmers_block_deadline_works_and_events() -> None:
    events = [
        Event(1_700_000_000.0, logging.INFO, "block 31337 opened"),
        Event(1_700_000_001.0, logging.WARNING, "plant in block 31338 refused"),
    ]
    text = _text(render(_snapshot(), events))
    assert "kale-pool pooler" in text and "block 31337" in text
    assert "hash rate 1.50 MH/s" in text and "farmers mining 1/50" in text
    assert "work deadline in 1m 40s" in text and "next block in 1m 58s" in text
    assert "works sent 3  landed 2  failed 1" in text and "following 1" in text
    for address, zeros, hashes, state in (
        (MINING, 7, "2.5 M", "mining"),
        (LANDED, 9, "40.0 M", "landed"),
    ):
        (row,) = [line for line in text.splitlines() if address[:6] in line]
        assert f" {zeros} " in row and hashes in row and state in row
    assert "block 31337 opened" in text and "plant in block 31338 refused" in text
    # Narrow terminals still get every part.
    narrow = _text(render(_snapshot(), events), width=60)
    assert "hash rate" in narrow and "recent events" in narrow


def test_an_agent_with_nothing_yet_draws_too() -> None:
    text = _text(
        render(
            _snapshot(
                farmers=(),
                block_index=None,
                seconds_to_work_deadline=None,
                seconds_to_next_block=-3.0,
                hashes_per_second=0.0,
                stats=AgentStats(),
            )
        )
    )
    assert "no assignment yet" in text and "nothing yet" in text
    assert "block ?" in text and "next block in now" in text and "0 H/s" in text


class _Agent:
    def __init__(self) -> None:
        self.calls = 0
        self.redrawn = asyncio.Event()

    def snapshot(self) -> AgentSnapshot:
        self.calls += 1
        if self.calls >= 5:
            self.redrawn.set()
        return _snapshot(stats=AgentStats(submitted=self.calls))


async def test_the_live_view_redraws_from_fresh_snapshots_until_cancelled() -> None:
    agent = _Agent()
    out = io.StringIO()
    console = Console(width=100, file=out, force_terminal=True, color_system=None)
    view = LiveView(cast(PoolerAgent, agent), console=console, refresh_per_second=50)
    task = asyncio.create_task(view.run())

    await asyncio.wait_for(agent.redrawn.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert "hash rate 1.50 MH/s" in out.getvalue()


def test_log_lines_go_to_the_file_and_to_the_view_instead_of_the_terminal(
    tmp_path: Path,
) -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler(io.StringIO())
    root.addHandler(terminal)
    level = root.level
    root.setLevel(logging.INFO)
    events = RecentEvents(size=2)
    path = tmp_path / "logs" / "pooler-rig.log"
    try:
        with log_to_file(path, "info"), showing_events(events):
            assert terminal not in root.handlers
            for n in range(3):
                logging.getLogger("pooler_agent.test").info("event %d", n)
        assert terminal in root.handlers and events not in root.handlers
    finally:
        root.removeHandler(terminal)
        root.setLevel(level)
    assert [e.message for e in events.events] == ["event 1", "event 2"]
    logged = path.read_text()
    assert all(f"pooler_agent.test: event {n}" in logged for n in range(3))
    stream = terminal.stream
    assert isinstance(stream, io.StringIO) and stream.getvalue() == ""
