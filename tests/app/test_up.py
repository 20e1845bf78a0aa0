"""`kale-pool up` end to end, through the real processes it starts (devnet, wallet, pool,
two pooler agents), on short blocks, free ports and a temporary data directory.

It farms three complete cycles and exits 0 with its summary; the farmers' web page it
serves (its own process, its URL printed) shows the demo farmers; every reward recorded is
the one the contract returned (each harvest's transaction read back from the chain); the
pool took its fee and the poolers' shares on chain (into wallets `up` funded, the fee
wallet paying the devnet fee account `up` keeps) and says so; the books agree with the
events; nothing it started is left running; a concurrent second
`up` is refused in one line. Then `up --blocks 1` on the same data directory continues:
the same chain, poolers and farmers, nothing registered or recorded twice. No secret (a
custodial seed, the master key, a pooler's API key or fee account key) is anywhere it
must not be: in any file of the data directory but the two meant to hold them, in any
log, in what the services answered or in their metrics (tests/leaks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from stellar_sdk import StrKey, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_server_async import SorobanServerAsync

from kale_devnet import DevnetConfig, DevnetServer, copy_state
from kalepool.app.operator import OperatorClient
from kalepool.app.runstate import RunState
from kalepool.chain import ChainClient, read_account, resolve_chain_config
from kalepool.db.consistency import check_consistency
from kalepool.db.embedded import start_embedded
from kalepool.tls import POOL_CLIENT, WALLET_SERVER, DevPki, channel_credentials
from kalepool.v1 import common_pb2, pool_pb2, wallet_pb2, wallet_pb2_grpc
from tests.leaks import LeakScanner, Secret
from tests.stackkit import (
    KALE_POOL,
    duplicates,
    nothing_left,
    rows,
    settings_for,
    spawn_up,
    up_env,
    wait_running,
)
from tests.waits import until
from wallet_service.keystore import Sealed, parse_master_keys

pytestmark = pytest.mark.slow


def _snapshot(conninfo: str) -> dict[str, Any]:
    """What must not change or double on a rerun."""
    return {
        "poolers": rows(conninfo, "SELECT id, public_key FROM poolers ORDER BY id"),
        "api_keys": rows(conninfo, "SELECT count(*) FROM pooler_api_keys")[0][0],
        "farmers": rows(conninfo, "SELECT id, custodial_public_key FROM farmers ORDER BY id"),
        # farmers' wallets (a pooler's share wallet is made when its first share is due)
        "wallets": rows(
            conninfo, "SELECT count(*) FROM custodial_wallets WHERE purpose = 'farmer'"
        )[0][0],
    }


async def _rewards_match_the_chain(data: Path, conninfo: str, tmp_path: Path) -> int:
    """Each recorded reward equals the return value of its harvest transaction on chain."""
    harvests = rows(
        conninfo, "SELECT tx_hash, reward_amount FROM harvests WHERE status = 'success'"
    )
    copy = tmp_path / "chain.json"  # read a copy: the rerun continues the original
    copy_state(data / "devnet" / "state.json", copy)
    async with DevnetServer(DevnetConfig(port=0, manual=True, state_path=copy)) as devnet:
        rpc = SorobanServerAsync(devnet.url)
        try:
            for tx_hash, reward in harvests:
                got = await rpc.get_transaction(tx_hash)
                assert got.result_meta_xdr is not None, tx_hash
                meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
                assert meta.v4 is not None and meta.v4.soroban_meta is not None
                returned = scval.from_int128(meta.v4.soroban_meta.return_value)
                assert returned == reward, (tx_hash, returned, reward)
        finally:
            await rpc.close()
    return len(harvests)


async def _fees_and_shares_on_chain(data: Path, conninfo: str, tmp_path: Path) -> None:
    """The pool took its fee and the poolers' shares on chain: a fee sweep and a share
    sweep succeeded, the fee wallet pays the operator's devnet fee account `up` keeps
    (which exists and trusts KALE), and each fee and share wallet holds on chain the KALE
    its books say (plus those of its sweeps still pending at the stop that landed)."""
    swept = dict(
        rows(
            conninfo,
            "SELECT part::text, count(*) FROM sweeps WHERE status = 'success'"
            " AND tx_hash IS NOT NULL GROUP BY part",
        )
    )
    assert swept.get("fee", 0) >= 1 and swept.get("share", 0) >= 1, swept
    operator = json.loads((data / "demo" / "fee-account.json").read_text())["address"]
    accounts = rows(
        conninfo,
        "SELECT a.kind::text, a.custodial_public_key, a.payout_address, a.current_balance,"
        " (SELECT coalesce(array_agg(amount), '{}') FROM sweeps s"
        "   WHERE s.account_id = a.id AND s.status = 'pending')"
        " FROM accounts a",
    )
    fee = [a for a in accounts if a[0] == "pool_fee"]
    assert len(fee) == 1 and fee[0][2] == operator, accounts
    assert fee[0][3] > 0, fee
    copy = tmp_path / "chain-fees.json"
    copy_state(data / "devnet" / "state.json", copy)
    async with DevnetServer(DevnetConfig(port=0, manual=True, state_path=copy)) as devnet:
        settings = settings_for(data).model_copy(update={"rpc_url": f"{devnet.url}/"})
        async with ChainClient(await resolve_chain_config(settings)) as chain:
            held = await read_account(chain, operator)
            assert held is not None and held.kale is not None  # exists, trusts KALE
            for kind, address, _, balance, pending in accounts:
                state = await read_account(chain, address)
                assert state is not None and state.kale is not None, (kind, address)
                # Every sum a subset of the pending sweeps can make (grown one sweep at a
                # time: the sums of equal fees coincide, so the set stays small).
                landed = {0}
                for amount in pending:
                    landed |= {done + amount for done in landed}
                assert state.kale.balance - balance in landed, (kind, state, balance, pending)


def _allowed_secret_files(data: Path) -> list[Path]:
    """The files meant to hold a secret (0600): the devnet's master key, each local
    pooler's `pooler.env` (its API key and fee accounts' keys), the devnet operator's fee
    account key."""
    return [
        data / "wallet" / "master.key",
        *data.glob("poolers/*/pooler.env"),
        data / "demo" / "fee-account.json",
    ]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def _secrets(data: Path, conninfo: str) -> list[Secret]:
    """Every secret of the run: the master key, each custodial seed (opened from the
    database with it: every wallet decrypts), each pooler's API key and fee account keys."""
    keyring = parse_master_keys((data / "wallet" / "master.key").read_text())
    found = [Secret(f"master key v{k.version}", k.key) for k in keyring.keys]
    wallets = rows(
        conninfo, "SELECT public_key, ciphertext, nonce, key_id, key_version FROM custodial_wallets"
    )
    for public_key, ciphertext, nonce, key_id, version in wallets:
        sealed = Sealed(bytes(ciphertext), bytes(nonce), key_id, version)
        with keyring.signer(sealed, public_key) as keypair:
            seed = keypair.raw_secret_key()
        found.append(Secret(f"custodial seed of {public_key}", seed, stellar_seed=True))
    for env_path in data.glob("poolers/*/pooler.env"):
        env = _env_file(env_path)
        name = env_path.parent.name
        found.append(Secret(f"API key of {name}", env["KALE_POOL_POOLER_API_KEY"].encode()))
        channels = env.get("KALE_POOL_POOLER_CHANNEL_SECRETS", "")
        for n, channel in enumerate(c for c in channels.split(",") if c):
            seed = StrKey.decode_ed25519_secret_seed(channel)
            found.append(Secret(f"fee account {n} key of {name}", seed, stellar_seed=True))
    operator = json.loads((data / "demo" / "fee-account.json").read_text())["secret"]
    seed = StrKey.decode_ed25519_secret_seed(operator)
    found.append(Secret("the devnet operator's fee account key", seed, stellar_seed=True))
    return found


async def _answers(data: Path, state: RunState, farmers: int) -> list[tuple[str, bytes]]:
    """What the running stack serves, as bytes: the operator's PoolService reads, the
    wallet's GetWallet for each farmer (as the pool calls it), each part's metrics."""
    got: list[tuple[str, bytes]] = []
    page = common_pb2.Pagination(page_size=100)
    async with OperatorClient(settings_for(data), address=state.pool_address, timeout=30) as op:
        listing = pool_pb2.ListFarmersResponse()

        async def all_registered() -> bool:
            nonlocal listing
            listing = await op.pool.ListFarmers(pool_pb2.ListFarmersRequest(pagination=page))
            return len(listing.farmers) == farmers

        await until(all_registered, 300, what="every demo farmer registered", poll=1)
        got.append(("PoolService.ListFarmers", listing.SerializeToString()))
        poolers = await op.pool.ListPoolers(pool_pb2.ListPoolersRequest(pagination=page))
        got.append(("PoolService.ListPoolers", poolers.SerializeToString()))
        for pooler in poolers.poolers:
            stats = await op.pool.GetPoolerStats(
                pool_pb2.GetPoolerStatsRequest(pooler_id=pooler.pooler_id)
            )
            got.append(("PoolService.GetPoolerStats", stats.SerializeToString()))
        totals = await op.pool.GetPoolStats(pool_pb2.GetPoolStatsRequest())
        got.append(("PoolService.GetPoolStats", totals.SerializeToString()))
        blocks = await op.pool.ListBlocks(pool_pb2.ListBlocksRequest(pagination=page))
        got.append(("PoolService.ListBlocks", blocks.SerializeToString()))
    pki = DevPki(data / "certs")
    async with grpc.aio.secure_channel(
        state.wallet_address,
        channel_credentials(pki.client(POOL_CLIENT), pki.ca_pem),
        options=[("grpc.ssl_target_name_override", WALLET_SERVER)],
    ) as channel:
        wallet = wallet_pb2_grpc.WalletServiceStub(channel)
        for farmer in listing.farmers:
            answer = await wallet.GetWallet(
                wallet_pb2.GetWalletRequest(public_key=farmer.custodial_address), timeout=30
            )
            got.append(("WalletService.GetWallet", answer.SerializeToString()))
    for part, url in state.metrics.items():
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=30) as page_:
            got.append((f"{part} metrics", await asyncio.to_thread(page_.read)))
    # The farmers' web page (its own process, HTTPS with the development CA) shows the
    # demo farmers in the pool view.
    assert state.web_url.startswith("https://127.0.0.1:"), state.web_url
    context = ssl.create_default_context(cafile=str(data / "certs" / "ca.pem"))
    opened = await asyncio.to_thread(
        urllib.request.urlopen, state.web_url + "api/pool", timeout=30, context=context
    )
    with opened as page_:
        raw = await asyncio.to_thread(page_.read)
    view = json.loads(raw)
    assert sum(p["current_farmers"] for p in view["poolers"]) == farmers, view
    assert view["farmers_active"] == farmers, view
    got.append(("farmers' web page /api/pool", raw))
    assert len(state.metrics) >= 2  # the pool's and the wallet's
    return got


async def test_up_farms_continues_without_duplicating_and_refuses_a_second(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    proc = await spawn_up(data, "--poolers", "2", "--farmers", "10", "--blocks", "3")
    assert proc.stdout is not None
    output = asyncio.create_task(proc.stdout.read())
    try:
        state = await wait_running(data, proc, poolers=2)
        # A second `up` on the same data directory: one line, nothing started.
        assert KALE_POOL is not None
        second = await asyncio.to_thread(
            subprocess.run,
            [KALE_POOL, "up"],
            env=up_env(data),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert second.stdout == ""
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "kale-pool up is already running on" in lines[0], lines
        answers = await _answers(data, state, farmers=10)
        await asyncio.wait_for(proc.wait(), 900)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (await output).decode()
    assert proc.returncode == 0, text
    assert "farmed blocks" in text and "3 of 3 blocks farmed" in text, text
    assert f"farmers' web page: {state.web_url}" in text, text
    assert "Traceback" not in text
    await nothing_left(state, data)

    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert await _rewards_match_the_chain(data, conninfo, tmp_path) >= 1
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        before = _snapshot(conninfo)
        assert len(before["poolers"]) == 2 and len(before["farmers"]) == 10
        assert before["wallets"] == 10
        assert duplicates(conninfo) == []
        secrets = _secrets(data, conninfo)
    finally:
        await asyncio.to_thread(server.release)
    assert len(secrets) >= 1 + 10 + 2  # the master key, ten seeds, two API keys at least

    # Again on the same data directory: it continues, duplicating nothing.
    again = await spawn_up(data, "--poolers", "2", "--farmers", "10", "--blocks", "1")
    out, _ = await asyncio.wait_for(again.communicate(), 600)
    rerun = out.decode()
    assert again.returncode == 0, rerun
    assert "found again" in rerun and "registered (" not in rerun, rerun
    assert "1 of 1 blocks farmed" in rerun
    # The fee and the shares the pool took (swept on chain), as the summary reports them.
    taken = re.search(r"taken so far: pool fee ([\d.,]+) KALE .* shares ([\d.,]+) KALE", rerun)
    assert taken is not None and "0" not in (taken[1], taken[2]), rerun
    server = await asyncio.to_thread(start_embedded, data / "postgres")
    try:
        conninfo = server.conninfo
        assert _snapshot(conninfo) == before  # same poolers, keys, farmers and wallets
        assert duplicates(conninfo) == []
        with psycopg.connect(conninfo) as conn:
            assert check_consistency(conn) == []
        await _rewards_match_the_chain(data, conninfo, tmp_path)
        await _fees_and_shares_on_chain(data, conninfo, tmp_path)
    finally:
        await asyncio.to_thread(server.release)
    # The stack is stopped: `kale-pool check` proves the books against its saved chain.
    assert KALE_POOL is not None
    check = await asyncio.to_thread(
        subprocess.run,
        [KALE_POOL, "check"],
        env=up_env(data),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "the books agree with the chain" in check.stderr, check.stderr

    # No secret anywhere it must not be: every file of the data directory (the database's
    # pages, the logs, the chain, the journals) read as bytes, but the two files meant to
    # hold keys; what the services answered; what the commands printed.
    scanner = LeakScanner(secrets)
    leaks = scanner.scan_tree(data, allowed=_allowed_secret_files(data))
    for where, answer in answers:
        leaks += scanner.scan_bytes(answer, where)
    for where, printed in (("up", text), ("up again", rerun), ("check", check.stderr)):
        leaks += scanner.scan_text(printed, f"the output of {where}")
    assert leaks == [], "\n".join(map(str, leaks))
    assert any((data / "logs").glob("*.log"))  # the logs were there to be scanned


def test_on_a_terminal_up_draws_the_live_view_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Under a pseudo-terminal (as a person runs it) `up` hands the screen to the live view
    once its parts run, and a Ctrl-C typed into it stops everything with exit 0."""
    import fcntl
    import pty
    import struct
    import termios

    assert KALE_POOL is not None
    env = up_env(tmp_path / "data", TERM="xterm-256color")
    env.pop("COLUMNS", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: kale-pool up on the terminal
        os.execve(KALE_POOL, [KALE_POOL, "up", "--no-demo", "--block-seconds", "20"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen = b""

    def read_until(marker: bytes, seconds: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while marker not in screen:
            assert time.monotonic() < deadline, screen.decode(errors="replace")[-3000:]
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"Ctrl-C stops everything", 180)
        # The live screen: its event panel and the current block's line, drawn in place.
        read_until(b"events", 60)
        read_until(b"block ", 60)
        assert b"\x1b[" in screen  # cursor movements and colours: a live screen, not lines
        os.write(fd, b"\x03")  # Ctrl-C, as typed
        read_until(b"stopped", 120)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, screen.decode(errors="replace")[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
