"""The supervisor on small real processes: ready by probe, one line for a part that dies,
reverse-order stop with SIGKILL after the grace period, and no orphan when the
supervisor itself is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kalepool.app.observer import RecordingObserver
from kalepool.app.supervisor import Part, PartFailed, Supervisor, last_log_line
from tests.waits import until

ROOT = Path(__file__).resolve().parents[2]


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _service(name: str, marks: Path, *, ignore_sigint: bool = False) -> Part:
    """A part that says it is ready by writing a file, and notes when SIGINT stops it
    (or, deaf to SIGINT, that it got one and went on: `<name>.sigint`)."""
    ready = marks / f"{name}.ready"
    body = f"""
        import pathlib, signal, sys, time
        marks = pathlib.Path({str(marks)!r})
        def stop(*_):
            with open(marks / "stopped", "a") as f:
                f.write({name!r} + "\\n")
            sys.exit(0)
        def deaf(*_):
            (marks / {name + ".sigint"!r}).write_text("got it, going on")
        signal.signal(signal.SIGINT, {"deaf" if ignore_sigint else "stop"})
        print("{name} serving", flush=True)
        pathlib.Path({str(ready)!r}).write_text("ok")
        while True:
            time.sleep(0.05)
    """

    async def probe() -> bool:
        return ready.exists()

    return Part(name=name, role="test", argv=_script(body), env=_env(), probe=probe, stop_grace=5)


async def test_parts_start_when_ready_and_stop_in_reverse_order(tmp_path: Path) -> None:
    observer = RecordingObserver()
    supervisor = Supervisor(tmp_path / "logs", observer)
    for name in ("devnet", "wallet", "pool"):
        child = await supervisor.start(_service(name, tmp_path))
        assert child.running
        assert (tmp_path / f"{name}.ready").exists()
        # Its own session: a Ctrl-C in the terminal reaches the supervisor only.
        assert os.getsid(child.pid) != os.getsid(0)
    await supervisor.stop_all()
    assert (tmp_path / "stopped").read_text().split() == ["pool", "wallet", "devnet"]
    assert all(c.process.returncode == 0 for c in supervisor.children.values())
    assert "pool serving" in (tmp_path / "logs" / "pool.log").read_text()
    messages = [m for _, m in observer.events]
    assert any(m.startswith("pool: ready") for m in messages)


async def test_a_part_that_dies_while_starting_is_named_with_its_last_line(
    tmp_path: Path,
) -> None:
    supervisor = Supervisor(tmp_path / "logs", RecordingObserver())
    part = Part(
        name="wallet",
        role="wallet",
        argv=_script(
            """
            import sys
            print("starting", flush=True)
            print("wallet service: KALE_POOL_MASTER_KEY is not set", file=sys.stderr)
            sys.exit(2)
            """
        ),
        env=_env(),
        probe=lambda: asyncio.sleep(0, result=False),
    )
    with pytest.raises(PartFailed) as failed:
        await supervisor.start(part)
    message = str(failed.value)
    assert message.startswith("wallet stopped by itself (exit code 2)")
    assert "KALE_POOL_MASTER_KEY is not set" in message
    assert "\n" not in message


async def test_a_part_that_exits_later_is_noticed(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", RecordingObserver())
    await supervisor.start(_service("devnet", tmp_path))
    doomed = Part(
        name="pool",
        role="pool",
        argv=_script(
            """
            import sys, time
            time.sleep(0.5)
            print("pool service: database gone", flush=True)
            sys.exit(3)
            """
        ),
        env=_env(),
    )
    await supervisor.start(doomed)
    message = await asyncio.wait_for(supervisor.unexpected_exit(), 30)
    assert message.startswith("pool stopped by itself (exit code 3): pool service: database gone")
    await supervisor.stop_all()
    # A part stopped on request is not an unexpected exit.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(supervisor.unexpected_exit(), 0.5)


async def test_a_part_deaf_to_sigint_is_killed_after_its_grace(tmp_path: Path) -> None:
    observer = RecordingObserver()
    supervisor = Supervisor(tmp_path / "logs", observer)
    part = _service("pooler-1", tmp_path, ignore_sigint=True)
    part.stop_grace = 0.5
    child = await supervisor.start(part)
    await supervisor.stop_all()
    assert child.process.returncode == -signal.SIGKILL
    assert any("killed" in m for _, m in observer.events)


async def test_a_part_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", RecordingObserver())
    part = Part(
        name="pool",
        role="pool",
        argv=_script("import time\nwhile True: time.sleep(0.05)"),
        env=_env(),
        probe=lambda: asyncio.sleep(0, result=False),
        ready_timeout=0.5,
    )
    with pytest.raises(PartFailed, match="pool was not ready after"):
        await supervisor.start(part)
    assert not supervisor.children["pool"].running


def test_last_log_line_reads_only_this_run(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old run: failed badly\n")
    offset = log.stat().st_size
    assert last_log_line(log, offset) == ""
    with log.open("a") as handle:
        handle.write("new run\nlast words\n\n")
    assert last_log_line(log, offset) == "last words"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_parts_die_with_a_supervisor_killed_by_sigkill(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The child's own program writes its pid: it runs, so deathsig armed the signal and
    # exec'd it (the signal survives exec).
    child_program = (
        "import os, pathlib, time\n"
        f"tmp = pathlib.Path({str(pid_file) + '.tmp'!r})\n"
        "tmp.write_text(str(os.getpid()))\n"
        f"tmp.replace({str(pid_file)!r})\n"
        "while True: time.sleep(0.1)\n"
    )
    supervisor = subprocess.Popen(
        _script(
            f"""
            import os, subprocess, sys, time
            child = subprocess.Popen(
                [sys.executable, "-m", "kalepool.app.deathsig", str(os.getpid()),
                 sys.executable, "-c", {child_program!r}],
                start_new_session=True,
            )
            while True:
                time.sleep(0.1)
            """
        ),
        cwd=ROOT,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(child, 0)
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 15
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its supervisor"
            time.sleep(0.05)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_asked_twice_it_kills_without_waiting_out_the_grace(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", RecordingObserver())
    part = _service("pooler-1", tmp_path, ignore_sigint=True)
    part.stop_grace = 3600
    child = await supervisor.start(part)
    stopping = asyncio.create_task(supervisor.stop_all())
    # The part got its SIGINT and goes on: the supervisor now waits out the grace.
    await until(lambda: (tmp_path / "pooler-1.sigint").exists(), 30, what="its SIGINT mark")
    assert not stopping.done() and child.running
    supervisor.hurry()
    await asyncio.wait_for(stopping, 60)
    assert child.process.returncode == -signal.SIGKILL
