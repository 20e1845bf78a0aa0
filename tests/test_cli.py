"""The installed `kale-pool` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    return subprocess.run(
        [KALE_POOL, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wallet_health(certs: Path, port: int) -> str:
    """Health of the wallet service as the operator sees it (only the operator's
    certificate may ask)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "operator-key.pem").read_bytes(),
        certificate_chain=(certs / "operator.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kalepool.v1.WalletService"), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no inherited kale-pool settings, data under tmp."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KALE_POOL_") and k != "DATABASE_URL"
    }
    clean["KALE_POOL_DATA_DIR"] = str(tmp_path / "data")
    return clean


def test_help_lists_the_commands(env: dict[str, str]) -> None:
    result = run("--help", env=env)
    assert result.returncode == 0, result.stderr
    for command in ("up", "status", "check", "db", "config", "pooler", "farmer"):
        assert command in result.stdout


def test_version(env: dict[str, str]) -> None:
    from kalepool import __version__

    result = run("--version", env=env)
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_bad_setting_stops_with_one_clear_line(env: dict[str, str]) -> None:
    result = run("config", "show", env={**env, "KALE_POOL_METRICS_PORT": "abc"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("kale-pool: configuration error: KALE_POOL_METRICS_PORT")
    assert "Traceback" not in result.stderr


def test_missing_required_setting_off_devnet(env: dict[str, str]) -> None:
    result = run("--network", "mainnet", "config", "show", env=env)
    assert result.returncode == 2
    assert "KALE_POOL_RPC_URL is required on mainnet" in result.stderr


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    secret_env = {
        **env,
        "DATABASE_URL": "postgresql://pool:s3cret-pw@127.0.0.1/db",
        "KALE_POOL_MASTER_KEY": "bWFzdGVyLWtleS1ub3QtdG8tYmUtcHJpbnRlZA==",
    }
    result = run("config", "show", env=secret_env)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "bWFzdGVyLWtleS" not in result.stdout + result.stderr
    # the URL stays readable (scheme, role, host), its password does not
    assert "DATABASE_URL=postgresql://pool:***@127.0.0.1/db" in result.stdout.splitlines()
    assert "KALE_POOL_MASTER_KEY=***" in result.stdout.splitlines()


def test_data_dir_flag_wins_over_environment(env: dict[str, str], tmp_path: Path) -> None:
    result = run("--data-dir", str(tmp_path / "flag"), "config", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert f"KALE_POOL_DATA_DIR={tmp_path / 'flag'}" in result.stdout.splitlines()


@pytest.mark.slow
def test_db_migrate_is_idempotent_and_check_agrees(env: dict[str, str]) -> None:
    first = run("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001" in first.stderr
    second = run("db", "migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stderr
    listing = run("db", "status", env={**env, "COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    assert "pending" not in listing.stdout
    assert "applied" in listing.stdout
    check = run("check", env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    assert "agree" in check.stderr


def test_db_help_lists_backup_and_restore(env: dict[str, str]) -> None:
    result = run("db", "--help", env=env)
    assert result.returncode == 0, result.stderr
    for command in ("migrate", "status", "backup", "restore"):
        assert command in result.stdout


@pytest.mark.slow
def test_db_backup_then_restore_into_a_new_embedded_database(
    env: dict[str, str], db: Any, db_conninfo: str, tmp_path: Path
) -> None:
    """Back up a database with books through DATABASE_URL; restore it into the embedded
    server of a fresh data directory; a second restore there is refused in one line."""
    from tests.db.rows import fill_books

    fill_books(db)
    backup = tmp_path / "pool.dump"
    made = run("db", "backup", str(backup), env={**env, "DATABASE_URL": db_conninfo})
    assert made.returncode == 0, made.stderr
    assert f"backup written: {backup}" in made.stderr
    assert "pool.farmers 3" in made.stderr
    assert "custodial keys sealed under master key master v1 (1)" in made.stderr
    restored = run("db", "restore", str(backup), env=env)
    assert restored.returncode == 0, restored.stderr
    assert "pool.farmers 3" in restored.stderr
    assert "agree with the event tables" in restored.stderr
    check = run("check", "--offline", env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    again = run("db", "restore", str(backup), env=env)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0] and "--force" in lines[0], again.stderr


def _free_ports_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "KALE_POOL_DEVNET_PORT": "0",
        "KALE_POOL_WALLET_LISTEN": "127.0.0.1:0",
        "KALE_POOL_POOL_LISTEN": "127.0.0.1:0",
        "KALE_POOL_METRICS_PORT": "0",
        "KALE_POOL_WEB_LISTEN": "127.0.0.1:0",
        "COLUMNS": "200",
    }


def _web_json(url: str, ca: Path) -> Any:
    """A GET of the farmers' web page's API, trusting the development CA alone."""
    import json
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=30, context=context) as response:
        return json.loads(response.read())


def _read_until(proc: subprocess.Popen[str], marker: str, seconds: float = 180) -> str:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            break
    return "".join(seen)


def _stack(env: dict[str, str]) -> Any:
    from kalepool.app.runstate import RunState
    from kalepool.settings import Settings

    settings = Settings(data_dir=Path(env["KALE_POOL_DATA_DIR"]), _env_file=None)  # type: ignore[call-arg]
    return RunState.load(settings)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)


def test_a_bad_network_flag_is_one_line(env: dict[str, str]) -> None:
    result = run("--network", "moonnet", "status", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kale-pool: configuration error: KALE_POOL_NETWORK: Input should be 'devnet',"
        " 'testnet' or 'mainnet' (got 'moonnet')"
    )


def test_the_devnet_port_reaches_every_command(env: dict[str, str]) -> None:
    result = run("config", "show", env={**env, "KALE_POOL_DEVNET_PORT": "9123"})
    assert "KALE_POOL_RPC_URL=http://127.0.0.1:9123/" in result.stdout.splitlines()


def test_check_and_status_on_a_fresh_data_dir_create_nothing(env: dict[str, str]) -> None:
    data = Path(env["KALE_POOL_DATA_DIR"])
    check = run("check", env=env)
    assert check.returncode == 1
    assert check.stderr.strip().splitlines() == [
        f"kale-pool: nothing has run here yet: {data} holds no database (kale-pool up creates it)"
    ]
    status = run("status", env={**env, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"kale-pool up is not running on {data}"
    assert "none yet" in status.stdout
    assert not (data / "postgres").exists()


def test_up_refuses_options_that_cannot_work_in_one_line(env: dict[str, str]) -> None:
    result = run("up", "--no-demo", "--blocks", "2", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "kale-pool: --blocks counts farmed blocks: it needs the demo (drop --no-demo)"
    ]
    result = run(
        "--network", "mainnet", "up", env={**env, "KALE_POOL_RPC_URL": "https://x.example"}
    )
    assert result.returncode == 1
    assert "the demo needs a friendbot" in result.stderr


@pytest.mark.slow
def test_up_no_demo_serves_the_operator_and_stops_on_ctrl_c(env: dict[str, str]) -> None:
    """The bare pool: services only. The operator's commands work against it."""
    assert KALE_POOL is not None
    env = _free_ports_env(env)
    data = Path(env["KALE_POOL_DATA_DIR"])
    proc = subprocess.Popen(
        [KALE_POOL, "up", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _read_until(proc, "Ctrl-C stops everything")
        assert "Ctrl-C stops everything" in output, output
        for part in ("devnet: ready", "wallet: ready", "pool: ready"):
            assert part in output, output
        assert "pooler-1" not in output  # --no-demo: no poolers, no farmers
        state = _stack(env)
        assert state is not None and set(state.processes) == {"devnet", "wallet", "pool", "web"}
        certs = data / "certs"
        for name in ("ca", "pool-service", "wallet-service", "pool-client", "operator"):
            assert (certs / f"{name}.pem").is_file(), name
        # The wallet service answers health over mTLS, to the operator, in its own process.
        assert wallet_health(certs, int(state.wallet_address.rsplit(":", 1)[1])) == "SERVING"
        # The operator adds a pooler: registered, certificate, API key shown once.
        added = run("pooler", "add", "rig-7", env=env)
        assert added.returncode == 0, added.stderr
        assert "its API key was issued now" in added.stdout, added.stdout
        key_lines = [
            line
            for line in added.stdout.splitlines()
            if line.startswith("KALE_POOL_POOLER_API_KEY=")
        ]
        assert len(key_lines) == 1, added.stdout
        api_key = key_lines[0].split("=", 1)[1]
        assert api_key.startswith("kp_"), api_key
        bundle = data / "poolers" / "rig-7"
        assert (bundle / "pooler.env").stat().st_mode & 0o077 == 0
        assert f"KALE_POOL_POOLER_API_KEY={api_key}" in (bundle / "pooler.env").read_text()
        assert (bundle / "certs" / "rig-7.pem").is_file()
        secrets = (bundle / "pooler.env").read_text().split("CHANNEL_SECRETS=")[1].split()[0]
        assert all(secret not in added.stdout for secret in secrets.split(","))
        pooler_id = added.stdout.split("id ", 1)[1].split(",", 1)[0]
        # A farmer for it, and its funding on the devnet.
        from stellar_sdk import Keypair

        farmer = run(
            "farmer",
            "add",
            "--pooler",
            pooler_id,
            "--payout",
            Keypair.random().public_key,
            "--stake-bps",
            "5000",
            env=env,
        )
        assert farmer.returncode == 0, farmer.stderr
        assert "custodial address: G" in farmer.stdout
        farmer_id = farmer.stdout.split("farmer ", 1)[1].split(" ", 1)[0]
        funded = run("farmer", "fund", farmer_id, "--kale", "5", env=env)
        assert funded.returncode == 0, funded.stderr
        assert "is funded and active" in funded.stdout and "5 KALE paid" in funded.stdout
        # The farmers' web page, its own process, shows them over HTTPS (the dev CA).
        assert f"farmers' web page: {state.web_url}" in output, output
        assert state.web_url.startswith("https://127.0.0.1:")
        assert state.processes["web"].address == state.web_url
        view = _web_json(state.web_url + "api/pool", certs / "ca.pem")
        [rig] = [p for p in view["poolers"] if p["name"] == "rig-7"]
        assert rig["current_farmers"] == 1 and view["farmers_active"] == 1, view
        # ...and those calls show in the pool's own metrics endpoint.
        import urllib.request

        with urllib.request.urlopen(state.metrics["pool"], timeout=10) as r:
            metrics = r.read().decode()
        assert 'method="RegisterPooler",service="kalepool.v1.PoolService"' in metrics
        # A second command finds what `up` left: the processes, the pool's poolers.
        status = run("status", env=env)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"kale-pool up is running on {data}"), status.stdout
        assert "rig-7" in status.stdout and "schema current" in status.stdout
        assert f"farmers' web page: {state.web_url}" in status.stdout, status.stdout
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output + rest
        assert rest.index("web: stopping") < rest.index("pool: stopping")
        assert rest.index("pool: stopping") < rest.index("wallet: stopping")
        assert rest.index("wallet: stopping") < rest.index("devnet: stopping")
        assert rest.rstrip().endswith("stopped")
        _wait_gone([p.pid for p in state.processes.values()])
        assert _stack(env) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_killed_up_leaves_nothing_holding_its_ports(env: dict[str, str]) -> None:
    assert KALE_POOL is not None
    env = _free_ports_env(env)
    data = Path(env["KALE_POOL_DATA_DIR"])
    proc = subprocess.Popen(
        [KALE_POOL, "up", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _read_until(proc, "Ctrl-C stops everything")
        assert "Ctrl-C stops everything" in output, output
        state = _stack(env)
        assert state is not None
        proc.kill()  # SIGKILL: the supervisor runs no clean-up at all
        proc.wait()
        _wait_gone([p.pid for p in state.processes.values()])
        from kalepool.app.probes import port_taken, split_address

        for address in (state.pool_address, state.wallet_address):
            assert port_taken(*split_address(address)) is None, address
        status = run("status", env=env)
        assert "stopped without cleaning up" in status.stdout.splitlines()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # The embedded PostgreSQL (a unix socket, no port) outlives a SIGKILL: stop it.
        from kalepool.db.embedded import stop_embedded

        stop_embedded(data / "postgres")


@pytest.mark.slow
def test_up_on_a_taken_port_says_so_in_one_line(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("up", env={**env, "KALE_POOL_DEVNET_PORT": str(port)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot start the devnet on 127.0.0.1:{port}" in lines[0]
    assert "KALE_POOL_DEVNET_PORT" in lines[0]


@pytest.mark.slow
def test_a_part_that_dies_stops_everything_with_exit_1(env: dict[str, str]) -> None:
    assert KALE_POOL is not None
    env = _free_ports_env(env)
    proc = subprocess.Popen(
        [KALE_POOL, "up", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = _read_until(proc, "Ctrl-C stops everything")
        assert "Ctrl-C stops everything" in output, output
        state = _stack(env)
        assert state is not None
        os.kill(state.processes["wallet"].pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, output + rest
        assert "wallet stopped by itself (signal 9)" in rest, rest
        assert "pool: stopping" in rest and "devnet: stopping" in rest
        _wait_gone([p.pid for p in state.processes.values()])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
