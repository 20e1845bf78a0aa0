"""`kale-pool pooler` as a pooler runs it (a real subprocess): one-line errors for what
is missing; on a terminal (a pseudo-terminal here), the live view while it plants, works
and stops on Ctrl-C, with every log line in its log file; and an agent killed (SIGKILL)
after sending work, whose restart reports that work from its journal."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import psycopg
import pytest
from stellar_sdk import Keypair

from kalepool.chain import current_block, read_account
from pooler_agent.journal import WorkJournal
from tests.pool.conftest import KALE, PoolStage, until
from tests.wallet.conftest import Closer

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


def _env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    env["KALE_POOL_DATA_DIR"] = str(data_dir)
    env.update({f"KALE_POOL_{k.upper()}": v for k, v in settings.items()})
    return env


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert KALE_POOL is not None
    return subprocess.run(
        [KALE_POOL, "pooler"], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "KALE_POOL_POOLER_API_KEY is required"),
        ({"pooler_api_key": "k"}, "KALE_POOL_POOLER_CHANNEL_SECRETS"),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets": "SDONOTSHOWTHISVALUE"},
            "channel account 1: not a valid secret key",
        ),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets_file": "/nonexistent/channels"},
            "KALE_POOL_POOLER_CHANNEL_SECRETS_FILE: cannot read",
        ),
        (
            {"pooler_api_key": "k", "pooler_channel_secrets": Keypair.random().secret},
            "the pooler's certificate is missing",
        ),
    ],
)
def test_what_is_missing_is_named_in_one_line(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    done = _run(_env(tmp_path, **settings))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "SDONOTSHOWTHISVALUE" not in done.stderr + done.stdout


def _certs(pool: PoolStage, data_dir: Path) -> None:
    """The pooler's client certificate and the pool's CA, where the command looks."""
    certs = data_dir / "certs"
    certs.mkdir(parents=True)
    pool.pki.client("pooler")
    for name in ("pooler.pem", "pooler-key.pem", "ca.pem"):
        shutil.copy(pool.pki.directory / name, certs / name)


def _pooler_env(
    pool: PoolStage, data_dir: Path, key: str, channel: Keypair, **more: str
) -> dict[str, str]:
    assert pool.server is not None
    return _env(
        data_dir,
        network="devnet",
        rpc_url=pool.stage.server.url,
        pool_address=f"127.0.0.1:{pool.server.port}",
        pooler_api_key=key,
        pooler_channel_secrets=channel.secret,
        pooler_submit_margin_seconds="0",
        block_poll_interval_seconds="0.1",
        mining_threads="1",
        **more,
    )


async def _works(pool: PoolStage, block: int) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(pool.conninfo) as conn:
        cur = await conn.execute(
            "SELECT status::text, tx_hash FROM works WHERE block_index = %s", (block,)
        )
        return [(str(s), str(h)) for s, h in await cur.fetchall()]


async def test_on_a_terminal_the_command_shows_the_live_view_and_logs_to_its_file(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    pooler, key = await pool.register_pooler("rig-cli", certificate="pooler")
    await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    channel = (await pool.stage.accounts(1))[0]
    _certs(pool, tmp_path)
    env = _pooler_env(pool, tmp_path, key, channel, work_delay_seconds="0")
    env["TERM"] = "xterm-256color"
    assert KALE_POOL is not None
    terminal, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shown = bytearray()
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the child side closed
            chunk = b""
        if not chunk:
            loop.remove_reader(terminal)
        shown.extend(chunk)

    loop.add_reader(terminal, read)
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL, "pooler", env=env, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    try:

        async def worked() -> bool:
            return len(await _works(pool, 0)) == 1 and b"landed" in shown

        await until(worked, 40)
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        loop.remove_reader(terminal)
        os.close(terminal)
    assert proc.returncode == 0, shown.decode(errors="replace")[-2000:]
    screen = shown.decode(errors="replace")
    for part in ("kale-pool pooler", "hash rate", "work deadline in", "recent events"):
        assert part in screen, part
    logged = (tmp_path / "logs" / "pooler-pooler.log").read_text()
    assert (
        "planted" in logged and "reported 1 results" in logged and "pooler agent stopped" in logged
    )
    for text in (screen, logged):
        assert key not in text and channel.secret not in text
    assert (tmp_path / "pooler" / "pooler-cursor.json").is_file()


async def test_work_sent_by_an_agent_killed_before_reporting_is_reported_after_its_restart(
    pool: PoolStage, tmp_path: Path
) -> None:
    await pool.start(rate_limit_requests_per_minute=100_000)
    pooler, key = await pool.register_pooler("rig-killed", certificate="pooler")
    farmer = await pool.funded_farmer(pooler.pooler_id, kale=2 * KALE)
    channel = (await pool.stage.accounts(1))[0]
    sequence = (await read_account(pool.chain, channel.public_key)).sequence  # type: ignore[union-attr]
    _certs(pool, tmp_path)
    # Mining would run to the end of the hour-long block.
    env = _pooler_env(pool, tmp_path, key, channel, work_delay_seconds="3000")
    journal = tmp_path / "pooler" / "pooler-journal.jsonl"
    block = await current_block(pool.chain)
    assert KALE_POOL is not None
    closer: Closer | None = None
    with (tmp_path / "first.log").open("wb") as out:
        first = await asyncio.create_subprocess_exec(
            KALE_POOL, "pooler", env=env, stdout=out, stderr=out
        )
    try:

        async def planted() -> bool:
            return await pool.count("plantings") == 1

        await until(planted, 40)
        # Ledgers stop; the next one is past the block's end: the agent ends mining and
        # sends the work, which waits in the queue for a ledger that does not come.
        await pool.wallet.closer.stop()
        latest = await pool.chain.latest_ledger()
        await pool.stage.advance(max(block.next_block_at - latest.close_time, 0))
        await pool.stage.close()

        async def sent() -> bool:
            info = await pool.stage.info()
            return info["pending_transactions"] == 1 and journal.is_file()

        await until(sent, 40)
        first.kill()  # SIGKILL: no report, no cleanup
        await asyncio.wait_for(first.wait(), 10)
        assert first.returncode == -signal.SIGKILL
        (entry,) = WorkJournal(journal).unreported
        assert entry.assignment.farmer_id == farmer.farmer_id
        assert await _works(pool, block.index) == []

        # The chain goes on (the work applies), and the agent starts again.
        closer = Closer(pool.stage)
        with (tmp_path / "second.log").open("wb") as out:
            second = await asyncio.create_subprocess_exec(
                KALE_POOL, "pooler", env=env, stdout=out, stderr=out
            )
        try:

            async def reported() -> bool:
                return await _works(pool, block.index) == [("success", entry.tx_hash)]

            await until(reported, 40)
        finally:
            second.send_signal(signal.SIGINT)
            await asyncio.wait_for(second.wait(), 30)
        assert second.returncode == 0, (tmp_path / "second.log").read_text()[-2000:]
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        if closer is not None:
            await closer.stop()
    # Its entry left the journal; the work was sent once (one sequence number used).
    assert WorkJournal(journal).unreported == []
    after = await read_account(pool.chain, channel.public_key)
    assert after is not None and after.sequence == sequence + 1
    logs = (tmp_path / "second.log").read_text()
    assert "sent before a restart" in logs and key not in logs and channel.secret not in logs
