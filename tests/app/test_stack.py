"""`kale-pool up`'s own rules, without the services: what each part finds in its
environment (read back from the processes the supervisor starts), how long `--blocks`
and the deposit wait give the chain, and a private events log from its first byte."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from stellar_sdk import Keypair

from kalepool.app.fees import takings, up_fee_account
from kalepool.app.observer import EVENT_LOGGER, RecordingObserver
from kalepool.app.poolers import PoolerBundle, ProvisionedPooler, mining_settings
from kalepool.app.stack import (
    PART_SECRETS,
    Ports,
    Stack,
    UpOptions,
    _event_log,
    blocks_timeout,
    deposit_wait,
    part_env,
    secret_settings,
)
from kalepool.app.supervisor import Part
from kalepool.chain import ChainConfig
from kalepool.db.roles import POOL, WALLET, as_role
from kalepool.settings import (
    ENV_PREFIX,
    STELLAR_LEDGER_SECONDS,
    Network,
    Settings,
    load_settings,
)
from kalepool.v1 import pool_pb2


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env from the repository


# Stands in for a part's program: writes the environment it was given, then runs until
# stopped (a part that exits before it is ready is a failed start).
_DUMP_ENV = textwrap.dedent(
    """
    import json, os, pathlib, sys, time
    out = pathlib.Path(sys.argv[1])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(dict(os.environ)))
    tmp.replace(out)
    while True:
        time.sleep(0.1)
    """
)

_MASTER_KEY_VARS = {f"{ENV_PREFIX}MASTER_KEY", f"{ENV_PREFIX}MASTER_KEY_FILE"}


def _local_pooler(settings: Settings) -> ProvisionedPooler:
    env = mining_settings(
        settings,
        name="pooler-1",
        pool_address="127.0.0.1:50051",
        api_key="kp_the_poolers_own",
        rpc_url=settings.rpc_url,
        channel_secrets=["SCHANNEL"],
    )
    return ProvisionedPooler(
        pooler=pool_pb2.Pooler(pooler_id="p-1", name="pooler-1"),
        bundle=PoolerBundle.of(settings, "pooler-1"),
        env=env,
        api_key_issued=False,
        registered=False,
        certificate=True,
        funded=0,
    )


async def _environments(stack: Stack, parts: list[Part], marks: Path) -> dict[str, dict[str, str]]:
    """Start each part (its program swapped for `_DUMP_ENV`, its environment as built)
    through the stack's supervisor; the environment each process was handed."""
    try:
        for part in parts:
            dump = marks / f"{part.name}.json"
            part.argv = [sys.executable, "-c", _DUMP_ENV, str(dump)]
            part.probe = lambda path=dump: asyncio.sleep(0, result=path.exists())  # type: ignore[misc]
            part.stop_grace = 10
            await stack.supervisor.start(part)
    finally:
        await stack.supervisor.stop_all()
    return {p.name: json.loads((marks / f"{p.name}.json").read_text()) for p in parts}


@pytest.mark.parametrize("how", ["master_key", "master_key_file"])
async def test_no_part_but_the_wallet_gets_the_master_key(tmp_path: Path, how: str) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    given: dict[str, object] = {"master_key": key}
    if how == "master_key_file":
        key_file = tmp_path / "master.key"
        key_file.write_text(key)
        given = {"master_key_file": key_file}
    settings = load_settings(
        data_dir=tmp_path / "data",
        pooler_api_key="kp_the_supervisors",  # set where `up` runs: no part's business
        **given,
    )
    settings.layout().ensure()
    stack = Stack(
        settings,
        UpOptions(),
        Ports.plan(settings),
        RecordingObserver(),
        Console(file=io.StringIO()),
    )
    stack.conninfo = "postgresql://kale@%2Fembedded/kalepool"  # the embedded server's
    ports = stack.ports
    parts = [
        stack._devnet_part(ports, settings.rpc_url or ""),
        stack._wallet_part(ports),
        stack._pool_part(ports),
        stack._web_part(ports),
        stack._pooler_part(_local_pooler(settings)),
    ]
    marks = tmp_path / "marks"
    marks.mkdir()
    envs = await _environments(stack, parts, marks)

    wallet = envs.pop("wallet")
    assert _MASTER_KEY_VARS & wallet.keys() == {f"{ENV_PREFIX}{how.upper()}"}
    # Each part connects as its own database role (the embedded server trusts its socket).
    assert wallet["DATABASE_URL"] == as_role(stack.conninfo, WALLET)
    for name, env in envs.items():
        assert not _MASTER_KEY_VARS & env.keys(), name
        assert key not in json.dumps(env), name
    # The devnet gets no secret at all; the pool the database only; a pooler its own key.
    devnet, pool, pooler, web = envs["devnet"], envs["pool"], envs["pooler-1"], envs["web"]
    secret_vars = {"DATABASE_URL"} | {
        f"{ENV_PREFIX}{name.upper()}" for name in secret_settings() if name != "database_url"
    }
    assert not secret_vars & devnet.keys()
    assert not secret_vars & web.keys()  # the web page: no key, no database
    assert web[f"{ENV_PREFIX}WEB_POOL_ADDRESS"] == ports.pool_address
    assert secret_vars & pool.keys() == {"DATABASE_URL"}
    assert pool["DATABASE_URL"] == as_role(stack.conninfo, POOL)
    assert conninfo_to_dict(pool["DATABASE_URL"])["user"] == "kalepool_pool"
    assert conninfo_to_dict(wallet["DATABASE_URL"])["user"] == "kalepool_wallet"
    assert secret_vars & pooler.keys() == {
        f"{ENV_PREFIX}POOLER_API_KEY",
        f"{ENV_PREFIX}POOLER_CHANNEL_SECRETS",
    }
    assert pooler[f"{ENV_PREFIX}POOLER_API_KEY"] == "kp_the_poolers_own"
    assert pooler[f"{ENV_PREFIX}DATA_DIR"] == str(settings.layout().root / "poolers" / "pooler-1")
    # Everything that is not a secret still reaches every part.
    for env in (wallet, devnet, pool, pooler, web):
        assert env[f"{ENV_PREFIX}NETWORK"] == "devnet"
        assert env[f"{ENV_PREFIX}RPC_URL"] == settings.rpc_url


def test_every_secret_setting_is_known_and_given_only_where_named() -> None:
    secrets = secret_settings()
    for name, info in Settings.model_fields.items():
        if "SecretStr" in str(info.annotation):
            assert name in secrets, name
    assert {"master_key_file", "pooler_channel_secrets_file"} <= secrets
    for role, allowed in PART_SECRETS.items():
        assert allowed <= secrets, role
    assert [r for r, allowed in PART_SECRETS.items() if "master_key" in allowed] == ["wallet"]


def test_a_database_url_set_by_the_operator_reaches_the_wallet_and_the_pool_as_it_is(
    tmp_path: Path,
) -> None:
    """One URL, one role: a single-URL setup connects every part as that role."""
    url = "postgresql://kalepool:pw@db.example/kalepool"
    settings = load_settings(data_dir=tmp_path, database_url=url)
    for role in ("wallet", "pool"):
        assert part_env(settings, role, conninfo="ignored")["DATABASE_URL"] == url
    for role in ("devnet", "pooler"):
        assert "DATABASE_URL" not in part_env(settings, role, conninfo="ignored")


def test_blocks_wait_on_the_chains_block_interval_not_the_devnets_setting() -> None:
    settings = load_settings(devnet_block_seconds=60)
    real = ChainConfig(
        rpc_url="https://rpc.example",
        network_passphrase="Test SDF Network ; September 2015",
        farm_contract_id="C1",
        sac_contract_id="C2",
        asset_code="KALE",
        asset_issuer="G1",
        block_seconds=300,
    )
    assert blocks_timeout(2, real) >= 2 * 300 + 300  # K blocks and the one under way
    devnet = dataclasses.replace(real, block_seconds=settings.devnet_block_seconds)
    assert blocks_timeout(2, devnet) < blocks_timeout(2, real)


def test_the_deposit_wait_counts_the_networks_ledgers() -> None:
    devnet = load_settings(devnet_block_seconds=60)  # 2 s ledgers
    testnet = load_settings(network="testnet", farm_contract_id="CFARM")
    assert testnet.network_ledger_seconds() == STELLAR_LEDGER_SECONDS
    assert devnet.network_ledger_seconds() == devnet.ledger_seconds() == 2
    assert deposit_wait(testnet) >= 5 * STELLAR_LEDGER_SECONDS
    assert deposit_wait(testnet) > deposit_wait(devnet)


def test_the_events_log_is_private_from_its_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.layout().ensure()
    path = settings.layout().logs / "events.log"
    # No mode fixed after the fact: what the file is created with is what it has.
    monkeypatch.setattr(os, "chmod", lambda *_a, **_k: None)
    monkeypatch.setattr(os, "fchmod", lambda *_a, **_k: None)
    old = os.umask(0o022)
    try:
        with _event_log(settings):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            logging.getLogger(EVENT_LOGGER).info("pool: ready")
    finally:
        os.umask(old)
    assert path.read_text().rstrip().endswith("INFO pool: ready")


def test_an_events_log_made_wider_before_is_narrowed(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.layout().ensure()
    path = settings.layout().logs / "events.log"
    path.write_text("an older run\n")
    path.chmod(0o644)
    with _event_log(settings):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "an older run\n"


def test_the_web_page_has_a_port_and_url_unless_left_out(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, web_listen="127.0.0.1:0")
    served = Ports.plan(settings)
    assert served.web > 0 and served.web_url == f"https://127.0.0.1:{served.web}/"
    left_out = Ports.plan(settings, web=False)
    assert left_out.web == 0 and left_out.web_url == ""
    # Unset, `up` serves it where a developer expects it.
    default = Ports.plan(load_settings(data_dir=tmp_path), web=True)
    assert default.web_url == "https://127.0.0.1:8443/"


def test_on_the_devnet_up_keeps_one_fee_account_unless_the_operator_names_one(
    tmp_path: Path,
) -> None:
    devnet = load_settings(data_dir=tmp_path / "data", network="devnet")
    made = up_fee_account(devnet)
    assert made is not None
    path = devnet.layout().devnet_fee_account
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["address"] == made.public_key
    again = up_fee_account(devnet)  # a rerun: the same account, not a new one
    assert again is not None and again.secret == made.secret
    # The operator's own address is used as it is; testnet's fee account is theirs to set.
    theirs = devnet.model_copy(update={"pool_fee_address": Keypair.random().public_key})
    assert up_fee_account(theirs) is None
    testnet = load_settings(data_dir=tmp_path / "testnet").model_copy(
        update={"network": Network.TESTNET}
    )
    assert up_fee_account(testnet) is None
    assert not testnet.layout().devnet_fee_account.exists()


def test_takings_sum_the_poolers_shares_and_show_the_fee() -> None:
    stats = pool_pb2.GetPoolStatsResponse(fee_earned_stroops=1_000_000, fee_pending_stroops=5)
    poolers = [
        pool_pb2.GetPoolerStatsResponse(share_earned_stroops=30_000_000),
        pool_pb2.GetPoolerStatsResponse(share_earned_stroops=20_000_000, share_pending_stroops=1),
    ]
    assert takings(stats, poolers) == (
        "pool fee 0.1 KALE (0.0000005 pending), poolers' shares 5 KALE (0.0000001 pending)"
    )
