"""The running stack's state file and the data directory's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kalepool.app.runstate import ProcessInfo, RunState, StackLock, StackLockedError
from kalepool.settings import Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(network="devnet", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]


def test_state_round_trips_and_tells_dead_processes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert RunState.load(settings) is None
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(done.stdout)
    state = RunState(
        network="devnet",
        rpc_url="http://127.0.0.1:8000/",
        pool_address="127.0.0.1:50051",
        wallet_address="127.0.0.1:50052",
        started_at=1.0,
        supervisor_pid=os.getpid(),
        processes={"pool": ProcessInfo(pid=dead, role="pool", log="logs/pool.log")},
    )
    state.save(settings)
    loaded = RunState.load(settings)
    assert loaded == state
    assert loaded.alive() == {"supervisor": True, "pool": False}
    RunState.clear(settings)
    assert RunState.load(settings) is None


def test_a_second_holder_of_the_lock_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with StackLock(settings):
        # Another process (flock locks are per open file, so a second process is the test).
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path;"
                "from kalepool.settings import Settings;"
                "from kalepool.app.runstate import StackLock, StackLockedError\n"
                "try:\n"
                f"    s = Settings(data_dir=Path({str(tmp_path)!r}), _env_file=None)\n"
                "    StackLock(s).acquire()\n"
                "except StackLockedError as e:\n"
                "    print(e); sys.exit(3)\n",
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert probe.returncode == 3, probe.stderr
        assert f"pid {os.getpid()}" in probe.stdout
        assert len(probe.stdout.strip().splitlines()) == 1
    # Released: a new holder gets it.
    lock = StackLock(settings)
    lock.acquire()
    lock.release()
    with pytest.raises(StackLockedError), StackLock(settings):
        StackLock(settings).acquire()
