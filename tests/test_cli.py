"""The installed `kale-pool` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    """Health of the wallet service as the pool sees it (pool-client certificate)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "pool-client-key.pem").read_bytes(),
        certificate_chain=(certs / "pool-client.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="kalepool.v1.WalletService"), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def register_pooler(certs: Path, port: int) -> str:
    """RegisterPooler as the operator; the pooler's one-time API key."""
    import grpc
    from stellar_sdk import Keypair

    from kalepool.v1 import pool_pb2, pool_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "operator-key.pem").read_bytes(),
        certificate_chain=(certs / "operator.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        reply = pool_pb2_grpc.PoolServiceStub(channel).RegisterPooler(
            pool_pb2.RegisterPoolerRequest(
                name="rig-1", public_key=Keypair.random().public_key, max_farmers=5
            ),
            timeout=30,
        )
    assert reply.pooler.name == "rig-1"
    assert reply.api_key
    return str(reply.api_key)


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
    for command in ("up", "status", "check", "db", "config"):
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
    assert "DATABASE_URL=**********" in result.stdout.splitlines()


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


@pytest.mark.slow
def test_up_starts_what_exists_and_stops_on_ctrl_c(env: dict[str, str]) -> None:
    assert KALE_POOL is not None
    wallet_port = free_port()
    pool_port = free_port()
    metrics_port = free_port()
    proc = subprocess.Popen(
        [KALE_POOL, "up"],
        env={
            **env,
            "KALE_POOL_DEVNET_PORT": "0",
            "KALE_POOL_WALLET_LISTEN": f"127.0.0.1:{wallet_port}",
            "KALE_POOL_METRICS_PORT": str(metrics_port),
            "KALE_POOL_POOL_LISTEN": f"127.0.0.1:{pool_port}",
            "COLUMNS": "200",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(seen)
        assert "Ctrl-C stops everything" in output, output
        assert "database" in output
        assert "migrations" in output
        certs = Path(env["KALE_POOL_DATA_DIR"]) / "certs"
        for name in ("ca", "pool-service", "wallet-service", "pool-client", "operator"):
            assert (certs / f"{name}.pem").is_file(), name
        # The wallet service answers the pool's certificate over mTLS.
        assert "wallet_service │ running" in output, output
        assert wallet_health(certs, wallet_port) == "SERVING"
        # An operator registers a pooler on the pool service, as with grpcurl.
        assert "pool_service   │ running" in output, output
        register_pooler(certs, pool_port)
        # ...and those calls show in the metrics the deployment exposes.
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'kalepool_grpc_requests_total{code="OK",method="Check"' in metrics, metrics[-2000:]
        assert 'method="RegisterPooler",service="kalepool.v1.PoolService"' in metrics
        # A second command finds what `up` left in the data directory.
        status = run("status", env={**env, "COLUMNS": "200"})
        assert status.returncode == 0, status.stderr
        assert "schema current" in status.stdout, status.stdout
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output + rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_up_on_a_taken_port_says_so_in_one_line(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("up", env={**env, "KALE_POOL_DEVNET_PORT": str(port)})
    assert result.returncode == 1
    assert f"cannot start the devnet on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
