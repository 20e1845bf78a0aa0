"""Small things a newcomer runs into: the devnet's port in the RPC URL, a private data
directory whatever the umask, quiet gRPC C-core, where `kale-pool` is after `make run`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kalepool.app.stack import base_env, settings_env
from kalepool.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env from the repository


def test_the_devnet_port_carries_into_the_rpc_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().rpc_url == "http://127.0.0.1:8000/"
    monkeypatch.setenv("KALE_POOL_DEVNET_PORT", "9123")
    assert load_settings().rpc_url == "http://127.0.0.1:9123/"
    # An explicit RPC URL still wins.
    monkeypatch.setenv("KALE_POOL_RPC_URL", "http://10.0.0.2:8000/")
    assert load_settings().rpc_url == "http://10.0.0.2:8000/"


def test_short_devnet_blocks_get_enough_ledgers() -> None:
    assert load_settings().devnet_block_seconds == 60
    assert load_settings().ledger_seconds() == 2  # 30 ledgers a block
    assert load_settings(devnet_block_seconds=20).ledger_seconds() == 1
    assert load_settings(devnet_block_seconds=300).ledger_seconds() == 5
    assert load_settings(devnet_block_seconds=300, devnet_ledger_seconds=3).ledger_seconds() == 3


def test_the_data_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    (root / "certs").mkdir()
    os.chmod(root / "certs", 0o777)
    old = os.umask(0)
    try:
        layout = load_settings(data_dir=root).layout()
        layout.ensure()
    finally:
        os.umask(old)
    for path in (layout.certs, layout.logs, layout.devnet_state.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    mode = stat.S_IMODE(layout.root.stat().st_mode)
    if os.geteuid() == 0:
        # As root, the embedded PostgreSQL's own user must traverse it: r-x kept, never w.
        assert mode & 0o7022 == 0 and mode & 0o700 == 0o700
    else:
        assert mode == 0o700


def test_children_get_the_effective_settings_and_quiet_grpc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KALE_POOL_DATABASE_URL", "postgresql://stale/db")
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    env = base_env()
    assert env["GRPC_VERBOSITY"] == "NONE"
    assert not any(k.startswith(ENV_PREFIX) or k == "DATABASE_URL" for k in env)
    settings = load_settings(
        data_dir=tmp_path, master_key="c2VjcmV0", devnet_port=9001, mining_threads=2
    )
    exported = settings_env(settings)
    assert exported["KALE_POOL_MASTER_KEY"] == "c2VjcmV0"
    assert exported["KALE_POOL_RPC_URL"] == "http://127.0.0.1:9001/"
    for key, value in exported.items():
        monkeypatch.setenv(key, value)
    assert Settings(_env_file=None) == settings  # type: ignore[call-arg]


def test_the_cli_silences_grpc_before_importing_it() -> None:
    code = (
        "import os, sys\n"
        "os.environ.pop('GRPC_VERBOSITY', None)\n"
        "from kalepool.app import cli\n"
        "before = 'grpc' in sys.modules\n"
        "sys.argv = ['kale-pool', '--version']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(before, os.environ.get('GRPC_VERBOSITY'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split()[-2:] == ["False", "NONE"]


# A process with a live gRPC channel that forks: gRPC's C core logs its fork notices.
_FORK_WITH_GRPC = """
import os, grpc
channel = grpc.insecure_channel("127.0.0.1:1")
try:
    grpc.channel_ready_future(channel).result(timeout=0.3)
except grpc.FutureTimeoutError:
    pass
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print("done")
"""


def test_the_environment_children_get_keeps_grpc_core_off_the_terminal() -> None:
    noisy = subprocess.run(
        [sys.executable, "-c", _FORK_WITH_GRPC],
        capture_output=True,
        text=True,
        env={**base_env(), "GRPC_VERBOSITY": "INFO"},
        check=True,
    )
    assert re.search(r"^[IWE]\d{4} ", noisy.stderr, re.M), "no C-core line to silence"
    quiet = subprocess.run(
        [sys.executable, "-c", _FORK_WITH_GRPC],
        capture_output=True,
        text=True,
        env=base_env(),
        check=True,
    )
    assert quiet.stderr == "" and quiet.stdout == "done\n"


def test_the_readme_says_where_kale_pool_is_after_make_run() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^VENV := \.venv$", makefile, re.M)
    # `make run` leaves kale-pool in .venv/bin, not on PATH: the README says so.
    assert ".venv/bin/kale-pool --help" in readme
    assert "source .venv/bin/activate" in readme
    assert "$(BIN)/kale-pool up $(ARGS)" in makefile
