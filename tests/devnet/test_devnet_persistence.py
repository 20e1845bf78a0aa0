"""--state: the chain survives a restart, answers as before, and refuses damaged files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from stellar_sdk import Asset, Keypair, scval
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus
from stellar_sdk.soroban_server_async import SorobanServerAsync

from kale_devnet import DevnetServer, persist
from kale_devnet.persist import StateFileError

from .kit import KALE, Kit, devnet_config, mine

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


async def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    config = devnet_config(state_path=state)
    async with DevnetServer(config) as server, aiohttp.ClientSession() as http:
        kit = Kit(server, http)
        farmer = await kit.new_account(trust=True, kale=20 * KALE)
        pooler, other = await kit.new_accounts(2)
        planted = await kit.plant(farmer, 5 * KALE)
        await kit.close()
        nonce, digest, _ = mine(0, bytes(32), farmer.public_key, 2)
        worked = await kit.work(pooler, farmer.public_key, digest, nonce)
        assert worked.status == GetTransactionStatus.SUCCESS
        # A transaction still queued at shutdown applies after the restart.
        queued = (
            (await kit.builder(other))
            .append_payment_op(pooler.public_key, Asset.native(), "1")
            .build()
        )
        queued.sign(other)
        assert (await kit.send(queued)).status == SendTransactionStatus.PENDING
        latest = await kit.rpc.get_latest_ledger()
        balances = await kit.balances(farmer.public_key)
        pail = await kit.pail(farmer.public_key, 0)
        block = await kit.block(0)
        instance = await kit.farm_instance()
        events = await kit.rpc.get_events(start_ledger=2)
        await kit.aclose()
    assert state.exists() and not state.with_name(state.name + ".tmp").exists()
    assert json.loads(state.read_text())["latest"] == latest.sequence

    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        again = await kit.rpc.get_latest_ledger()
        assert (again.sequence, again.id, again.close_time) == (
            latest.sequence,
            latest.id,
            latest.close_time,
        )
        assert await kit.balances(farmer.public_key) == balances
        assert await kit.pail(farmer.public_key, 0) == pail
        assert await kit.block(0) == block
        assert await kit.farm_instance() == instance
        old = await kit.rpc.get_transaction(planted.transaction_hash)
        assert (
            old.status == GetTransactionStatus.SUCCESS
            and old.result_meta_xdr == planted.result_meta_xdr
        )
        assert (await kit.rpc.get_events(start_ledger=2)).events == events.events
        # The queue survived: a resend is a duplicate, and the next close applies it once.
        assert (await kit.send(queued)).status == SendTransactionStatus.DUPLICATE
        closed = await kit.close()
        assert (
            closed["applied"] == [queued.hash_hex()] and closed["sequence"] == latest.sequence + 1
        )
        # The farm keeps farming: a second block opens and the pail is harvested.
        await kit.advance(300)
        await kit.plant(pooler, 0)
        harvested = await kit.harvest(pooler, farmer.public_key, 0)
        assert harvested.status == GetTransactionStatus.SUCCESS
        await kit.aclose()


async def test_damaged_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "chain.json"
    state.write_text("{not json")
    with pytest.raises(StateFileError):
        DevnetServer(devnet_config(state_path=state))
    state.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StateFileError, match="not a kale-pool devnet state"):
        DevnetServer(devnet_config(state_path=state))
    assert json.loads(state.read_text()) == {"format": "something else"}  # left as it was
    assert scval  # keep the import used


async def test_a_reported_ledger_survives_sigkill(tmp_path: Path) -> None:
    """`kale-pool devnet --state` killed (SIGKILL, no clean-up) while ledgers close every
    second: every ledger it reported closed, and the transaction in it, is there after
    the restart; what was journaled since the last snapshot is replayed."""
    state = tmp_path / "devnet.json"

    async def start() -> tuple[asyncio.subprocess.Process, str]:
        assert KALE_POOL is not None
        proc = await asyncio.create_subprocess_exec(
            *[KALE_POOL, "devnet", "--port", "0", "--ledger-seconds", "1"],
            *["--block-seconds", "60", "--state", str(state)],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        return proc, first.rsplit(" ", 1)[-1].strip()

    proc, url = await start()
    funded: list[tuple[str, str]] = []  # (address, the hash of its friendbot transaction)
    try:
        rpc = SorobanServerAsync(url)
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                address = Keypair.random().public_key
                async with http.get(f"{url}/friendbot", params={"addr": address}) as r:
                    assert r.status == 200, await r.text()
                    funded.append((address, (await r.json())["hash"]))
        reported = (await rpc.get_latest_ledger()).sequence
        got = await rpc.get_transaction(funded[-1][1])
        assert got.status == GetTransactionStatus.SUCCESS
        reported = max(reported, (await rpc.get_latest_ledger()).sequence)
        await rpc.close()
        assert persist.journals(state), "the closes since the start are journaled"
    finally:
        proc.kill()  # SIGKILL: no last snapshot
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    proc, url = await start()
    try:
        rpc = SorobanServerAsync(url)
        assert (await rpc.get_latest_ledger()).sequence >= reported
        for address, tx_hash in funded:
            assert (await rpc.get_transaction(tx_hash)).status == GetTransactionStatus.SUCCESS
            assert (await rpc.load_account(address)).sequence > 0
        await rpc.close()
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    assert not persist.journals(state), "a clean stop leaves one snapshot, no journal"


async def test_journal_is_compacted(tmp_path: Path) -> None:
    """Each close appends to the journal; once it outgrows the snapshot a new snapshot
    replaces it: the journal stays within the snapshot's size however long the chain
    runs, and the chain reloads the same."""
    state = tmp_path / "chain.json"
    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        payer, payee = await kit.new_accounts(2)
        seen: set[int] = set()
        for _ in range(60):
            tx = (
                (await kit.builder(payer))
                .append_payment_op(payee.public_key, Asset.native(), "1")
                .build()
            )
            tx.sign(payer)
            await kit.submit(tx)
            found = persist.journals(state)
            seen.update(found)
            journal_bytes = sum(_size(p) for p in found.values())
            # the last line may end past the snapshot's size; a background snapshot
            # may still be writing the older journal's replacement
            assert journal_bytes <= 3 * state.stat().st_size, (journal_bytes, found)
            assert len(found) <= 2, found
        assert len(seen) >= 3, f"the journal was never compacted: {sorted(seen)}"
        latest = await kit.rpc.get_latest_ledger()
        balances = (await kit.balances(payer.public_key), await kit.balances(payee.public_key))
        await kit.aclose()
    async with (
        DevnetServer(devnet_config(state_path=state)) as server,
        aiohttp.ClientSession() as http,
    ):
        kit = Kit(server, http)
        assert (await kit.rpc.get_latest_ledger()).id == latest.id
        assert (
            await kit.balances(payer.public_key),
            await kit.balances(payee.public_key),
        ) == balances
        await kit.aclose()


async def test_journal_replay_skips_a_torn_last_line_and_refuses_damage(tmp_path: Path) -> None:
    """A last journal line cut short (a crash mid-write, never reported) is skipped; a
    damaged line before it is refused."""
    state = tmp_path / "chain.json"
    server = DevnetServer(devnet_config(state_path=state))
    before = server.chain.latest.seq
    server.close_ledger(journal=False)
    server.save()  # snapshot at before + 1
    server.close_ledger()  # journaled: before + 2
    (journal,) = persist.journals(state).values()
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"latest": 9')  # torn, never fsynced
    assert persist.load(devnet_config(), state).latest.seq == before + 2
    journal.write_bytes(b'{"latest": 9\n' + good)
    with pytest.raises(StateFileError, match="damaged at line 1"):
        persist.load(devnet_config(), state)


def test_a_copy_holds_what_was_only_journaled(tmp_path: Path) -> None:
    """`copy_state` takes the journals with the snapshot: a devnet loaded from the copy
    of a state left by a crash (snapshot + journal) has every ledger the original closed."""
    state = tmp_path / "chain.json"
    server = DevnetServer(devnet_config(state_path=state))
    server.close_ledger(journal=False)
    server.save()
    server.close_ledger()
    server.close_ledger()  # two closes only in the journal, as after a SIGKILL
    closed = server.chain.latest.seq
    assert persist.journals(state)
    copy = tmp_path / "elsewhere" / "copy.json"
    persist.copy_state(state, copy)
    assert persist.load(devnet_config(), copy).latest.seq == closed
    # The snapshot alone would have lost them: what the copy had to take.
    alone = tmp_path / "alone.json"
    shutil.copyfile(state, alone)
    assert persist.load(devnet_config(), alone).latest.seq < closed


def _size(path: Path) -> int:
    """A file's size; 0 once gone (a background snapshot deletes the journals it covers)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def test_a_failed_journal_write_leaves_no_half_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk) raises, leaves the journal as it was, and what it
    held goes into the next line: the reload has every change."""
    state = tmp_path / "chain.json"
    server = DevnetServer(devnet_config(state_path=state))
    server.chain.set_farm_paused(True)  # an entry changed, not yet journaled

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        server.close_ledger()
    monkeypatch.undo()
    (journal,) = persist.journals(state).values()
    assert journal.read_bytes() == b""
    server.close_ledger()
    reloaded = persist.load(devnet_config(), state)
    assert reloaded.farm_paused() and reloaded.latest.seq == server.chain.latest.seq
