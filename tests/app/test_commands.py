"""The everyday commands, run as a user runs them (the installed `kale-pool`, a real
subprocess) against a real pool: tables, CSV equal to the API's figures, payouts,
leaving, and one-line errors."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from stellar_sdk import Keypair

from kalepool.app.poolers import PoolerBundle
from kalepool.app.runstate import RunState
from kalepool.app.tables import block_row, farmer_row, short_kale
from kalepool.chain import kale_balance
from kalepool.settings import Settings
from kalepool.v1 import common_pb2, pool_pb2
from tests.pool.conftest import KALE, PoolStage

from . import cycle

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def rows(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.out)))


async def kale_pool(
    settings: Settings, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> Ran:
    """`kale-pool --data-dir DIR ARGS...` in a subprocess (the pool runs in this event
    loop, so the wait must not block it), with `stdin` piped in and `env` added."""
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    environ["COLUMNS"] = "220"  # rich's width off a terminal
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        KALE_POOL,
        "--data-dir",
        str(settings.data_dir),
        *args,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(None if stdin is None else stdin.encode()), 120
    )
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def _line(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


async def test_blocks_farmers_and_poolers_as_tables_and_csv(
    pool: PoolStage, operator_settings: Settings
) -> None:
    ran = await kale_pool(operator_settings, "blocks")
    assert (ran.code, ran.out.strip()) == (0, "the pool has taken part in no block yet")
    assert (await kale_pool(operator_settings, "poolers")).out.strip() == "no poolers yet"

    pooler_id, key, (_, failing) = await cycle.farmers(pool, 2)
    block = await cycle.farm_block(pool, key, fail={failing.farmer_id})
    op = pool.operator()

    # blocks: the table, then CSV with exactly the API's figures.
    ran = await kale_pool(operator_settings, "blocks", "--last", "5")
    assert ran.code == 0, ran.err
    row = _line(ran.out, "completed")
    assert row.split()[0] == str(block)
    assert "1 ✗1" in row  # worked: one, one failed
    assert f"block {block} failures: work: miner_failed (pooler)" in ran.out
    assert "active" in next(
        line for line in ran.out.splitlines() if line.split()[:1] == [str(block + 1)]
    )
    listed = await op.ListBlocks(pool_pb2.ListBlocksRequest())
    assert short_kale(listed.blocks[1].total_reward_stroops) in row
    ran = await kale_pool(operator_settings, "blocks", "--csv")
    assert ran.code == 0, ran.err
    detail = {
        b.block_index: (await op.GetBlock(pool_pb2.GetBlockRequest(block_index=b.block_index)))
        for b in listed.blocks
    }
    expected = [
        {k: str(v) for k, v in block_row(detail[b.block_index].block).items()}
        for b in listed.blocks
    ]
    assert ran.rows() == expected
    assert (await kale_pool(operator_settings, "blocks", "--last", "1", "--csv")).rows() == (
        expected[:1]
    )

    # farmers: balances in KALE; CSV in stroops; filters.
    ran = await kale_pool(operator_settings, "farmers")
    assert ran.code == 0, ran.err
    farmers = (await op.ListFarmers(pool_pb2.ListFarmersRequest())).farmers
    for f in farmers:
        line = _line(ran.out, f.farmer_id)
        assert "rig-east" in line and "active" in line and "50%" in line
        assert short_kale(f.balance_stroops) in line
    ran = await kale_pool(operator_settings, "farmers", "--status", "active", "--csv")
    assert ran.rows() == [{k: str(v) for k, v in farmer_row(f).items()} for f in farmers]
    ran = await kale_pool(operator_settings, "farmers", "--status", "departed")
    assert (ran.code, ran.out.strip()) == (0, "no farmers match")
    ran = await kale_pool(operator_settings, "farmers", "--pooler", pooler_id, "--csv")
    assert len(ran.rows()) == 2

    # poolers: the pooler with its works and rewards.
    ran = await kale_pool(operator_settings, "poolers")
    assert ran.code == 0, ran.err
    line = _line(ran.out, pooler_id)
    stats = await op.GetPoolerStats(pool_pb2.GetPoolerStatsRequest(pooler_id=pooler_id))
    assert "rig-east" in line and "2/10" in line
    assert short_kale(stats.total_reward_stroops) in line
    rows = (await kale_pool(operator_settings, "poolers", "--csv")).rows()
    assert [(r["pooler_id"], r["total_reward_stroops"], r["works_failed"]) for r in rows] == [
        (pooler_id, str(stats.total_reward_stroops), str(stats.counts.works_failed))
    ]


async def test_pooler_add_shows_the_api_key_only_when_it_issues_it(
    pool: PoolStage, operator_settings: Settings
) -> None:
    args = ("pooler", "add", "rig-north", "--public-key", Keypair.random().public_key)
    bundle = PoolerBundle.of(operator_settings, "rig-north")
    first = await kale_pool(operator_settings, *args)
    assert first.code == 0, first.err
    key = bundle.read_env()["KALE_POOL_POOLER_API_KEY"]
    assert key.startswith("kp_")
    assert first.out.count(key) == 1  # issued now: shown, once
    assert f"KALE_POOL_POOLER_API_KEY={key}" in first.out.splitlines()
    assert "shown below this once" in first.out

    again = await kale_pool(operator_settings, *args)  # the same pooler, its key on file
    assert again.code == 0, again.err
    assert "already registered" in again.out
    assert key not in again.out + again.err
    assert f"its API key is in {bundle.env_file} (0600), not shown again" in again.out
    assert "KALE_POOL_POOLER_API_KEY=… (issued before: see the file)" in again.out
    assert bundle.read_env()["KALE_POOL_POOLER_API_KEY"] == key  # nothing rotated

    # The key lost: a new one is issued, and shown this once.
    bundle.env_file.unlink()
    rotated = await kale_pool(operator_settings, *args)
    assert rotated.code == 0, rotated.err
    new_key = bundle.read_env()["KALE_POOL_POOLER_API_KEY"]
    assert new_key != key and rotated.out.count(new_key) == 1


async def test_payout_and_leave_tell_the_outcome(
    pool: PoolStage, operator_settings: Settings
) -> None:
    pooler, _ = await pool.register_pooler("rig-west")
    dest = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, kale=10 * KALE, payout_address=dest.public_key
    )
    fid = farmer.farmer_id

    ran = await kale_pool(operator_settings, "farmer", "payout", fid, "--amount", "1.5")
    assert ran.code == 0, ran.err
    assert f"of 1.5 KALE to {dest.public_key}: success in ledger " in ran.out
    assert await kale_balance(pool.chain, dest.public_key) == 15 * KALE // 10
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=fid))
    assert got.farmer.balance_stroops == 85 * KALE // 10

    # Asking again with the same key pays nothing more.
    paid = await kale_pool(operator_settings, "farmer", "payout", fid, "--key", "k1")
    again = await kale_pool(operator_settings, "farmer", "payout", fid, "--key", "k1")
    assert paid.code == again.code == 0 and paid.out == again.out
    assert "of 8.5 KALE" in paid.out
    assert await kale_balance(pool.chain, dest.public_key) == 10 * KALE

    # Refusals and bad input: one line, non-zero, nothing moved.
    ran = await kale_pool(operator_settings, "farmer", "payout", fid, "--amount", "1")
    assert ran.code == 1 and ran.out == ""
    assert ran.err.count("\n") == 1 and "would overdraw it (failed_precondition)" in ran.err
    ran = await kale_pool(operator_settings, "farmer", "payout", fid, "--amount", "1.00000001")
    assert ran.code == 2 and ran.err.count("\n") == 1 and "more than 7 decimals" in ran.err
    ran = await kale_pool(operator_settings, "farmer", "payout", "not-an-id")
    assert ran.code == 1 and ran.err.count("\n") == 1
    assert ran.err.startswith("kale-pool: farmer_id") and "(invalid_argument)" in ran.err
    assert await kale_balance(pool.chain, dest.public_key) == 10 * KALE

    # Leaving with nothing left to harvest: paid out and merged at once.
    ran = await kale_pool(operator_settings, "farmer", "leave", fid)
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"farmer {fid} departed")
    got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=fid))
    assert got.farmer.status == common_pb2.FARMER_STATUS_DEPARTED
    ran = await kale_pool(operator_settings, "farmer", "leave", fid)
    assert ran.code == 0 and ran.out.startswith(f"farmer {fid} departed")


async def test_payout_address_moves_on_the_farmers_signature_only(
    pool: PoolStage, operator_settings: Settings
) -> None:
    pooler, _ = await pool.register_pooler("rig-south")
    current, new, newer, stranger = (Keypair.random() for _ in range(4))
    farmer = await pool.funded_farmer(pooler.pooler_id, payout_address=current.public_key)
    fid = farmer.farmer_id

    async def payout_of() -> str:
        got = await pool.operator().GetFarmer(pool_pb2.GetFarmerRequest(farmer_id=fid))
        return got.farmer.payout_address

    # Step 1 prints the challenge; the farmer signs its text elsewhere; step 2 hands it in.
    asked = await kale_pool(operator_settings, "farmer", "payout-address", fid, new.public_key)
    assert asked.code == 0, asked.err
    head, _, rest = asked.out.partition("\n\n")
    message, _, tail = rest.partition("\n\n")
    challenge = head.split()[1].rstrip(",")
    assert f"signed by {current.public_key}" in head and f"--challenge {challenge}" in tail
    assert new.public_key in message and "nonce: " in message
    wrong = base64.b64encode(stranger.sign_message(message)).decode()
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, new.public_key,
        "--challenge", challenge, "--signature", wrong,
    )  # fmt: skip
    assert ran.code == 1 and ran.err.count("\n") == 1 and "(permission_denied)" in ran.err
    assert await payout_of() == current.public_key
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, new.public_key,
        "--challenge", challenge, "--signature", "abc",
    )  # fmt: skip
    assert ran.code == 2 and "--signature" in ran.err
    right = base64.b64encode(current.sign_message(message)).decode()
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, new.public_key,
        "--challenge", challenge, "--signature", right,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"pays out to {new.public_key} now (was {current.public_key})" in ran.out
    assert await payout_of() == new.public_key

    # The devnet shortcut: the secret from stdin or the environment, never shown.
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, newer.public_key, "--secret-stdin",
        stdin=stranger.secret + "\n",
    )  # fmt: skip
    assert ran.code == 2 and f"{new.public_key} must sign" in ran.err
    assert stranger.secret not in ran.out + ran.err
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, newer.public_key, "--secret-stdin",
        stdin=new.secret + "\n",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert new.secret not in ran.out + ran.err
    assert await payout_of() == newer.public_key
    ran = await kale_pool(
        operator_settings, "farmer", "payout-address", fid, current.public_key,
        "--secret-env", "PAYOUT_SECRET", env={"PAYOUT_SECRET": newer.secret},
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert newer.secret not in ran.out + ran.err
    assert await payout_of() == current.public_key


async def test_leaving_waits_for_the_harvest(pool: PoolStage, operator_settings: Settings) -> None:
    pooler, key = await pool.register_pooler("rig-north")
    dest = await pool.stage.account(trust=True)
    farmer = await pool.funded_farmer(
        pooler.pooler_id, stake_bps=5000, kale=10 * KALE, payout_address=dest.public_key
    )
    # Another farmer stays: its plant opens the next block (a leaving farmer is not planted).
    await pool.funded_farmer(pooler.pooler_id, stake_bps=5000, kale=10 * KALE)
    block = await cycle.plant(pool, key)
    await cycle.work(pool, key, block)
    ran = await kale_pool(operator_settings, "farmer", "leave", farmer.farmer_id)
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"farmer {farmer.farmer_id} is leaving: planted no more; 1 pail(s)")
    assert f"kale-pool farmer leave {farmer.farmer_id}` again" in ran.out

    await cycle.open_next(pool, key, block)
    await cycle.harvest(pool, key, block)
    ran = await kale_pool(operator_settings, "farmer", "leave", farmer.farmer_id)
    assert ran.code == 0 and "departed" in ran.out, ran.out + ran.err


def _offline(tmp_path: Path) -> Settings:
    settings = Settings(network="devnet", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    RunState(
        network="devnet",
        rpc_url="",
        pool_address="127.0.0.1:9",  # nothing listens there
        wallet_address="127.0.0.1:9",
        started_at=time.time(),
        supervisor_pid=os.getpid(),
    ).save(settings)
    return settings


@pytest.mark.parametrize(
    "args",
    [("blocks",), ("farmers",), ("poolers",), ("farmer", "leave", "x")],
)
async def test_a_pool_that_cannot_be_reached_is_one_line(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    ran = await kale_pool(_offline(tmp_path), *args)
    assert ran.code == 1 and ran.out == ""
    assert ran.err.count("\n") == 1
    assert ran.err.startswith("kale-pool: cannot reach the pool at 127.0.0.1:9 (")
    assert ran.err.endswith("is `kale-pool up` running?\n")


async def test_an_unanswered_payout_says_how_to_ask_again_safely(tmp_path: Path) -> None:
    ran = await kale_pool(_offline(tmp_path), "farmer", "payout", "f1", "--key", "k7")
    assert ran.code == 1 and ran.err.count("\n") == 1
    assert ran.err.rstrip().endswith("to ask again safely: kale-pool farmer payout f1 --key k7")


async def test_pooler_keygen_and_cert_add_list_revoke(
    pool: PoolStage, operator_settings: Settings, tmp_path: Path
) -> None:
    """The CSR flow by the commands: the mining machine makes its key and request, the
    operator signs and registers the certificate, lists it, revokes it."""
    from kalepool.tls import Identity, pem_fingerprint
    from kalepool.v1 import pooler_pb2
    from tests.pool.test_pooler_auth import bearer, code_of
    from tests.pool.test_pooler_identity import stub_of

    pooler, key = await pool.register_pooler("rig-south", certificate=None)
    machine = operator_settings.model_copy(update={"data_dir": tmp_path / "machine"})
    made = await kale_pool(machine, "pooler", "keygen", "rig-south")
    assert made.code == 0, made.err
    key_file = tmp_path / "machine" / "certs" / "rig-south-key.pem"
    csr_file = tmp_path / "machine" / "certs" / "rig-south.csr"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and csr_file.is_file()
    assert "BEGIN" not in made.out  # no key material printed

    none = await kale_pool(operator_settings, "pooler", "cert", "list", pooler.pooler_id)
    assert none.code == 0 and "has no certificate" in none.out

    # The operator receives only the request.
    request = tmp_path / "rig-south.csr"
    shutil.copy(csr_file, request)
    added = await kale_pool(
        operator_settings, "pooler", "cert", "add", pooler.pooler_id, "--csr", str(request)
    )
    assert added.code == 0, added.err
    cert_pem = (tmp_path / "rig-south.pem").read_bytes()
    fingerprint = pem_fingerprint(cert_pem)
    assert fingerprint in added.out and "active" in added.out
    stub = stub_of(pool, Identity(cert_pem, key_file.read_bytes()))
    beat = pooler_pb2.HeartbeatRequest(capacity=1)
    assert (await stub.Heartbeat(beat, metadata=bearer(key))).interval_seconds > 0

    listed = await kale_pool(operator_settings, "pooler", "cert", "list", pooler.pooler_id)
    assert listed.code == 0 and fingerprint in _line(listed.out, fingerprint)
    twice = await kale_pool(
        operator_settings,
        "pooler",
        "cert",
        "add",
        pooler.pooler_id,
        "--cert",
        str(tmp_path / "rig-south.pem"),
    )
    assert twice.code != 0 and "already" in twice.err

    revoked = await kale_pool(
        operator_settings, "pooler", "cert", "revoke", pooler.pooler_id, fingerprint
    )
    assert revoked.code == 0, revoked.err
    assert "revoked" in _line(revoked.out, fingerprint)
    code, _ = await code_of(stub.Heartbeat(beat, metadata=bearer(key)))
    assert code.name == "PERMISSION_DENIED"
    bad = await kale_pool(operator_settings, "pooler", "cert", "revoke", pooler.pooler_id, "xyz")
    assert bad.code != 0 and "64 hex digits" in bad.err
