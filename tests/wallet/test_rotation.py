"""`kale-pool wallet rotate-key`: every custodial key rewrapped under a new master key on a
real PostgreSQL as the wallet's role; a run SIGKILLed halfway leaves every wallet
readable and the next run finishes; --retire drops only versions no wallet uses."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from pydantic import SecretStr

from kalepool.db.roles import WALLET
from kalepool.settings import Settings
from tests.dbkit import service_conninfo
from wallet_service.keystore import (
    Keyring,
    KeyringSource,
    Sealed,
    generate_wallet,
    parse_master_keys,
)
from wallet_service.rotation import RotationError, rotate_master_key

WALLETS = 40
KILL_AT = 21  # the rewrap during which the first run is killed (its transaction open)
KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))


def _key_text() -> str:
    return "1:" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def wallet_db(db_conninfo: str) -> str:
    """The test's database as the wallet service's role."""
    return service_conninfo(db_conninfo, WALLET)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "wallet" / "master.key"
    path.parent.mkdir(mode=0o700)
    path.write_text(_key_text() + "\n")
    path.chmod(0o600)
    return path


def _settings(tmp_path: Path, key_file: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", master_key_file=key_file, _env_file=None)


def _add_wallets(conninfo: str, keyring: Keyring, count: int) -> dict[str, bytes]:
    """``count`` wallets sealed under the keyring's current key; their seeds by account."""
    seeds: dict[str, bytes] = {}
    with psycopg.connect(conninfo, autocommit=True, options=WALLET.search_path) as conn:
        for _ in range(count):
            public_key, sealed = generate_wallet(keyring)
            with keyring.signer(sealed, public_key) as keypair:
                seeds[public_key] = keypair.raw_secret_key()
            conn.execute(
                "INSERT INTO custodial_wallets (owner_id, public_key, ciphertext, nonce, key_id,"
                " key_version) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    uuid4(),
                    public_key,
                    sealed.ciphertext,
                    sealed.nonce,
                    sealed.key_id,
                    sealed.key_version,
                ),
            )
    return seeds


def _rows(conninfo: str) -> list[tuple[str, Sealed]]:
    with psycopg.connect(conninfo, options=WALLET.search_path) as conn:
        rows = conn.execute(
            "SELECT public_key, ciphertext, nonce, key_id, key_version FROM custodial_wallets"
        ).fetchall()
    return [(pk, Sealed(ct, nonce, kid, ver)) for pk, ct, nonce, kid, ver in rows]


def _assert_all_open(conninfo: str, keyring: Keyring, seeds: dict[str, bytes]) -> None:
    """Every wallet decrypts, with ``keyring`` alone, to the seed it was made with."""
    rows = _rows(conninfo)
    assert {pk for pk, _ in rows} == set(seeds)
    for public_key, sealed in rows:
        with keyring.signer(sealed, public_key) as keypair:
            assert keypair.raw_secret_key() == seeds[public_key]


def _versions(conninfo: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, sealed in _rows(conninfo):
        counts[sealed.key_version] = counts.get(sealed.key_version, 0) + 1
    return counts


def _rotations(conninfo: str) -> list[tuple[int, int, bool, list[int]]]:
    with psycopg.connect(conninfo, options=WALLET.search_path) as conn:
        rows = conn.execute(
            "SELECT target_key_version, rewrapped, finished_at IS NOT NULL, retired_versions"
            " FROM key_rotations ORDER BY id"
        ).fetchall()
    return [(v, n, done, list(retired)) for v, n, done, retired in rows]


# The first run, in a process of its own, SIGKILLs itself inside the KILL_AT-th rewrap:
# after that row was locked and opened, before its UPDATE (its transaction open).
_KILLED_RUN = textwrap.dedent(
    f"""
    import os, signal, sys
    from pathlib import Path
    from kalepool.settings import Settings
    from wallet_service import keystore, rotation

    calls = 0
    real = keystore.Keyring.rewrap

    def rewrap(self, sealed, public_key):
        global calls
        calls += 1
        if calls == {KILL_AT}:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, sealed, public_key)

    keystore.Keyring.rewrap = rewrap
    settings = Settings(
        data_dir=Path(sys.argv[2]), master_key_file=Path(sys.argv[3]), _env_file=None
    )
    rotation.rotate_master_key(settings, sys.argv[1])
    """
)


def test_sigkill_halfway_then_rerun_finishes_and_retires(
    wallet_db: str, key_file: Path, tmp_path: Path
) -> None:
    old = parse_master_keys(key_file.read_text())
    seeds = _add_wallets(wallet_db, old, WALLETS)

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, wallet_db, str(tmp_path / "data"), str(key_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # Halfway: the rows before the kill under v2, the one in flight rolled back, both keys
    # in the file, every wallet readable with it.
    both = parse_master_keys(key_file.read_text())
    assert [k.version for k in both.keys] == [1, 2]
    assert _versions(wallet_db) == {2: KILL_AT - 1, 1: WALLETS - KILL_AT + 1}
    assert _rotations(wallet_db) == [(2, KILL_AT - 1, False, [])]
    _assert_all_open(wallet_db, both, seeds)
    assert key_file.stat().st_mode & 0o777 == 0o600

    # The rerun, through the command line as an operator runs it, continues and retires.
    assert KALE_POOL is not None
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KALE_POOL_") and k != "DATABASE_URL"
    }
    env |= {
        "KALE_POOL_DATA_DIR": str(tmp_path / "data"),
        "KALE_POOL_MASTER_KEY_FILE": str(key_file),
        "DATABASE_URL": wallet_db,
    }
    rerun = subprocess.run(
        [KALE_POOL, "wallet", "rotate-key", "--retire"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing rotation" in rerun.stderr
    assert f"{WALLETS - KILL_AT + 1} rewrapped now" in rerun.stderr
    new_only = parse_master_keys(key_file.read_text())
    assert [k.version for k in new_only.keys] == [2]
    assert _versions(wallet_db) == {2: WALLETS}
    assert _rotations(wallet_db) == [(2, WALLETS, True, [1])]
    _assert_all_open(wallet_db, new_only, seeds)
    # Nothing of either key in what the command printed.
    for key in both.keys:
        assert base64.b64encode(key.key).decode() not in rerun.stdout + rerun.stderr

    # Again: nothing to rotate is a new rotation to a new key, old versions kept until
    # --retire; a retire-only run right after adds nothing.
    again = rotate_master_key(_settings(tmp_path, key_file), wallet_db)
    assert again.added_version == 3 and again.rewrapped == WALLETS
    assert [k.version for k in parse_master_keys(key_file.read_text()).keys] == [2, 3]
    retire_only = rotate_master_key(_settings(tmp_path, key_file), wallet_db, retire=True)
    assert retire_only.added_version is None and retire_only.retired == [2]
    assert [k.version for k in parse_master_keys(key_file.read_text()).keys] == [3]
    _assert_all_open(wallet_db, parse_master_keys(key_file.read_text()), seeds)


def test_retire_keeps_a_version_a_wallet_still_uses(
    wallet_db: str, key_file: Path, tmp_path: Path
) -> None:
    """A wallet the rotation cannot open (sealed under a key the keyring lost) stops the
    run with one line, changes nothing of that row, and its version is never retired."""
    old = parse_master_keys(key_file.read_text())
    seeds = _add_wallets(wallet_db, old, 3)
    stranger = Keyring([*parse_master_keys(_key_text()).keys])  # another v1 key
    lost = _add_wallets(wallet_db, stranger, 1)
    before = dict(_rows(wallet_db))
    with pytest.raises(RotationError, match="which KALE_POOL_MASTER_KEY does not hold") as err:
        rotate_master_key(_settings(tmp_path, key_file), wallet_db, retire=True)
    (lost_key,) = lost
    assert lost_key in str(err.value)
    assert dict(_rows(wallet_db))[lost_key] == before[lost_key]
    # Not every wallet was under the newest key, so no key was added and none retired;
    # the rotation stays open until the lost key is restored.
    assert [k.version for k in parse_master_keys(key_file.read_text()).keys] == [1]
    assert _rotations(wallet_db) == [(1, 0, False, [])]
    rows = dict(_rows(wallet_db))
    for public_key, seed in seeds.items():
        with old.signer(rows[public_key], public_key) as keypair:
            assert keypair.raw_secret_key() == seed


def test_a_keyring_in_the_environment_is_not_rewritten(wallet_db: str, tmp_path: Path) -> None:
    key = _key_text()
    settings = Settings(data_dir=tmp_path, master_key=SecretStr(key), _env_file=None)
    _add_wallets(wallet_db, parse_master_keys(key), 2)
    with pytest.raises(RotationError) as err:
        rotate_master_key(settings, wallet_db)
    assert "KALE_POOL_MASTER_KEY" in str(err.value)
    assert key.split(":")[1] not in str(err.value)
    assert _rotations(wallet_db) == []
    # The operator adds v2 there; the command then rewraps under it.
    two = f"{key},2:{base64.b64encode(secrets.token_bytes(32)).decode()}"
    settings = Settings(data_dir=tmp_path, master_key=SecretStr(two), _env_file=None)
    report = rotate_master_key(settings, wallet_db)
    assert report.rewrapped == 2 and report.added_version is None
    assert _versions(wallet_db) == {2: 2}


def test_a_running_service_sees_the_key_the_rotation_added(key_file: Path, tmp_path: Path) -> None:
    source = KeyringSource(_settings(tmp_path, key_file))
    assert source().current.version == 1
    key_file.write_text(key_file.read_text().strip() + "," + "2:" + _key_text()[2:] + "\n")
    assert source().current.version == 2
    key_file.write_text("not a keyring\n")  # unusable: the keys held stay
    assert source().current.version == 2
