"""The live view: events detected between polls of a real pool, the pool going away and
coming back, the screen it renders and the plain lines it prints off a terminal."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path

import pytest
from rich.console import Console

from kalepool.amounts import format_kale
from kalepool.app.operator import OperatorClient
from kalepool.app.runstate import RunState
from kalepool.app.tables import short_kale
from kalepool.app.view import (
    EVENT_LOGGER,
    ConsoleView,
    PoolWatch,
    ViewEvent,
    make_view,
    redact,
)
from kalepool.settings import Settings
from tests.pool.conftest import PoolStage, until

from . import cycle
from .conftest import pool_address

SECRET_SEED = "S" + "A" * 55
API_KEY = "kp_" + "x" * 32


def _console(width: int = 150, record: bool = False) -> Console:
    return Console(
        file=io.StringIO(), width=width, color_system=None, record=record, force_terminal=False
    )


def _out(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def _unused_watch() -> PoolWatch:
    def connect() -> OperatorClient:
        raise AssertionError("this test polls nothing")

    return PoolWatch(connect)


def _messages(events: list[ViewEvent]) -> list[str]:
    return [e.message for e in events]


def test_plain_mode_prints_one_line_per_event_and_never_a_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    console = _console()
    view = ConsoleView(_unused_watch(), console, live=False)
    with caplog.at_level(logging.INFO, logger=EVENT_LOGGER):
        view.event("wallet service started on 127.0.0.1:50052")
        view.event(f"pooler rig-1 registered, key {API_KEY}, seed {SECRET_SEED}", level="warning")
        view.event("devnet exited with status 1", level="error")
    lines = _out(console).splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("info    wallet service started on 127.0.0.1:50052")
    assert "warning pooler rig-1 registered, key [redacted], seed [redacted]" in lines[1]
    assert "error   devnet exited with status 1" in lines[2]
    assert SECRET_SEED not in _out(console) and API_KEY not in _out(console)
    # Every event is logged too (the supervisor writes that logger to a file).
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "wallet service started on 127.0.0.1:50052"),
        ("WARNING", "pooler rig-1 registered, key [redacted], seed [redacted]"),
        ("ERROR", "devnet exited with status 1"),
    ]
    assert redact("GBZXN7PIRZGNMHGA7MUUUF4GWPY5AYPV6LY4UV2GL6VJGIQRXFDNMADI") == (
        "GBZXN7PIRZGNMHGA7MUUUF4GWPY5AYPV6LY4UV2GL6VJGIQRXFDNMADI"  # a public key stays
    )


def test_the_screen_before_anything_was_read() -> None:
    console = _console()
    view = ConsoleView(_unused_watch(), console, live=True, network="devnet")
    view.event("starting the devnet")
    console.print(view.render())
    text = _out(console)
    assert "connecting to the pool" in text
    assert "no blocks yet" in text
    assert "starting the devnet" in text


def _watch(settings: Settings, pool: PoolStage) -> PoolWatch:
    # The address is read at each connection: a restarted stage pool listens elsewhere.
    return PoolWatch(lambda: OperatorClient(settings, address=pool_address(pool), timeout=5.0))


async def test_the_view_tells_what_happened_between_polls(
    pool: PoolStage, operator_settings: Settings
) -> None:
    watch = _watch(operator_settings, pool)
    try:
        first = _messages(await watch.poll())
        assert first == [
            f"watching the pool at {pool_address(pool)}: block 0, 0 active poolers,"
            " 0 active farmers"
        ]
        assert watch.reachable and watch.blocks == []
        assert await watch.poll() == []  # nothing happened: nothing told

        pooler_id, key, farmers = await cycle.farmers(pool, 2)
        ok, failing = farmers
        told = _messages(await watch.poll())
        assert f"pooler rig-east registered ({pooler_id})" in told
        for f in farmers:
            assert f"farmer {f.farmer_id[:8]} registered with rig-east (active)" in told

        block = await cycle.plant(pool, key)
        told = _messages(await watch.poll())
        for f in farmers:
            assert (
                f"block {block}: planted farmer {f.farmer_id[:8]} for rig-east, stake 5 KALE"
                in told
            )
        assert watch.blocks[0].block_index == block
        assert watch.blocks[0].opened_at.seconds > 0  # from GetBlock

        zeros = await cycle.work(pool, key, block, fail={failing.farmer_id})
        told = _messages(await watch.poll())
        worked = [m for m in told if "worked farmer" in m]
        assert len(worked) == 1
        assert worked[0].startswith(
            f"block {block}: rig-east worked farmer {ok.farmer_id[:8]}:"
            f" {zeros[ok.farmer_id]} zeros, gap "
        )
        assert (
            f"block {block}: work failed for farmer {failing.farmer_id[:8]}:"
            " miner_failed (pooler): the miner crashed"
        ) in told
        assert [(n.stage, n.farmer_id, n.cause) for n in watch.failures[block]] == [
            ("work", failing.farmer_id, "miner_failed (pooler)")
        ]

        await cycle.open_next(pool, key, block)
        got = await cycle.harvest(pool, key, block)
        reward = got.harvested[0].reward_stroops
        told = _messages(await watch.poll())
        assert f"block {block + 1} opened" in told
        harvested = [m for m in told if "harvested farmer" in m]
        assert harvested == [
            f"block {block}: harvested farmer {ok.farmer_id[:8]}:"
            f" reward {format_kale(reward)} KALE (+5 stake back)"
        ]
        assert sum("planted farmer" in m and f"block {block + 1}:" in m for m in told) == 2
        # Each record is told once.
        assert [m for m in _messages(await watch.poll()) if "block" in m] == []

        # The screen shows the current block, the blocks' cycle, pooler and farmers.
        view = ConsoleView(watch, _console(), live=True, network="devnet")
        for m in told:
            view.event(m)
        console = _console(150, record=True)
        console.print(view.render())
        screen = console.export_text()
        assert f"block {block + 1}" in screen
        assert "recent blocks" in screen and "rig-east" in screen
        assert f"block {block} failures: work: miner_failed (pooler)" in screen
        assert short_kale(reward) in screen  # the blocks table
        assert ok.farmer_id[:8] in screen and failing.farmer_id[:8] in screen
    finally:
        await watch.close()


async def test_an_unreachable_pool_is_shown_and_the_view_reconnects(
    pool: PoolStage, operator_settings: Settings
) -> None:
    watch = _watch(operator_settings, pool)
    try:
        await watch.poll()
        address = pool_address(pool)
        assert pool.server is not None
        await pool.server.stop(0)
        told = await watch.poll()
        assert len(told) == 1 and told[0].level == "error"
        assert told[0].message.startswith(f"pool unreachable at {address} (unavailable: ")
        assert told[0].message.endswith("; retrying")
        assert watch.reachable is False and watch.stats is not None  # last figures kept
        assert await watch.poll() == []  # told once per outage

        view = ConsoleView(watch, _console(), live=True)
        console = _console(150, record=True)
        console.print(view.render())
        screen = console.export_text()
        assert f"pool unreachable at {address}" in screen and "figures below are" in screen

        await pool.start()  # back (on another port: the watch reads it anew)
        back = _messages(await watch.poll())
        assert len(back) == 1 and back[0].startswith(
            f"pool reachable again at {pool_address(pool)}"
        )
        assert watch.reachable is True and watch.problem == ""
    finally:
        await watch.close()


async def test_a_refusal_is_told_once_with_its_message(
    pool: PoolStage, operator_settings: Settings
) -> None:
    # A certificate that is not the operator's: the pool refuses every PoolService call.
    assert pool.server is not None

    def as_pooler() -> OperatorClient:
        client = OperatorClient(operator_settings, address=pool_address(pool))
        client.pool = pool.operator("rig-1")
        return client

    watch = PoolWatch(as_pooler)
    try:
        told = await watch.poll()
        assert len(told) == 1 and told[0].level == "error"
        assert told[0].message.startswith("pool refused: permission_denied: ")
        assert await watch.poll() == []
        assert watch.reachable is None  # reached, but nothing read
    finally:
        await watch.close()


async def test_run_polls_until_stopped_printing_plain_lines(
    pool: PoolStage, operator_settings: Settings
) -> None:
    console = _console()
    view = ConsoleView(
        _watch(operator_settings, pool),
        console,
        live=False,
        poll_seconds=0.25,
        full_every_seconds=0.25,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop))

    async def said(text: str) -> bool:
        return text in _out(console)

    await until(lambda: said("watching the pool at"))
    view.event("pooler agent rig-east started")
    pooler_id, _, _ = await cycle.farmers(pool, 1)
    await until(lambda: said(f"pooler rig-east registered ({pooler_id})"))
    stop.set()
    await asyncio.wait_for(task, 10)
    lines = _out(console).splitlines()
    assert sum("pooler agent rig-east started" in line for line in lines) == 1
    assert all(line[:8].count(":") == 2 for line in lines)  # one timestamped line each


async def test_live_mode_draws_on_a_terminal(operator_settings_offline: Settings) -> None:
    """On a terminal the view draws its screen (a Live) and ends when stopped; the pool
    being absent is shown, not raised."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    watch = PoolWatch(lambda: OperatorClient(operator_settings_offline, address="127.0.0.1:9"))
    view = ConsoleView(watch, console, live=True, poll_seconds=0.25)

    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop))

    async def down() -> bool:
        return watch.reachable is False

    await until(down)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert "pool unreachable at 127.0.0.1:9" in out.getvalue()


@pytest.fixture
def operator_settings_offline(tmp_path: Path) -> Settings:
    from kalepool.tls import OPERATOR, DevPki

    settings = Settings(network="devnet", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    DevPki(settings.layout().certs).client(OPERATOR)
    return settings


def test_make_view_is_live_on_a_terminal_only(operator_settings_offline: Settings) -> None:
    state = RunState(
        network="devnet",
        rpc_url="",
        pool_address="127.0.0.1:9",
        wallet_address="127.0.0.1:9",
        started_at=0.0,
        supervisor_pid=os.getpid(),
    )
    on_terminal = make_view(operator_settings_offline, state, Console(force_terminal=True))
    in_a_pipe = make_view(operator_settings_offline, state, Console(file=io.StringIO()))
    assert isinstance(on_terminal, ConsoleView) and on_terminal.live
    assert isinstance(in_a_pipe, ConsoleView) and not in_a_pipe.live
    assert in_a_pipe.network == "devnet"


async def test_a_view_that_cannot_even_connect_says_so_once() -> None:
    tries = 0

    def connect() -> OperatorClient:
        nonlocal tries
        tries += 1
        raise RuntimeError("no operator certificate")

    console = _console()
    view = ConsoleView(PoolWatch(connect), console, live=False, poll_seconds=0.25)
    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop))

    async def tried_thrice() -> bool:
        return tries >= 3

    await until(tried_thrice)
    stop.set()
    await asyncio.wait_for(task, 10)
    lines = _out(console).splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "no operator certificate" in lines[0]
