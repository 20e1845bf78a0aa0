"""Key custody: sealing, binding to the account, rotation, master key loading."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from stellar_sdk import Keypair

from kalepool.settings import Settings
from wallet_service.keystore import (
    KeystoreError,
    MasterKeyError,
    ensure_devnet_master_key,
    generate_wallet,
    load_keyring,
    parse_master_keys,
)


def b64key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_seal_and_open_round_trip_bound_to_the_account() -> None:
    ring = parse_master_keys(b64key())
    public_key, sealed = generate_wallet(ring)
    with ring.signer(sealed, public_key) as keypair:
        assert keypair.public_key == public_key
    assert len(sealed.nonce) == 12 and len(sealed.ciphertext) == 48
    other = Keypair.random().public_key
    with pytest.raises(KeystoreError, match="does not authenticate"), ring.signer(sealed, other):
        pass
    flipped = replace(sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:])
    with pytest.raises(KeystoreError), ring.signer(flipped, public_key):
        pass


def test_nonces_are_fresh_and_keys_never_in_repr() -> None:
    ring = parse_master_keys(b64key())
    seals = [generate_wallet(ring)[1] for _ in range(50)]
    assert len({s.nonce for s in seals}) == 50
    assert "key=" not in repr(ring.current) and "ciphertext" not in repr(seals[0])


def test_rotation_keeps_old_versions_readable_and_rewraps() -> None:
    old, new = b64key(), b64key()
    ring1 = parse_master_keys(f"1:{old}")
    public_key, sealed = generate_wallet(ring1)
    ring2 = parse_master_keys(f"1:{old},2:{new}")
    assert ring2.current.version == 2
    with ring2.signer(sealed, public_key) as keypair:
        assert keypair.public_key == public_key
    rewrapped = ring2.rewrap(sealed, public_key)
    assert rewrapped.key_version == 2 and rewrapped.key_id == ring2.current.key_id
    only_new = parse_master_keys(f"2:{new}")
    with only_new.signer(rewrapped, public_key) as keypair:
        assert keypair.public_key == public_key
    with pytest.raises(KeystoreError, match="does not hold"), only_new.signer(sealed, public_key):
        pass


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(b"short").decode(), "0:" + b64key(), f"{b64key()},x"],
    # Named, not shown: the keys are random, and parallel workers must collect the same ids.
    ids=["empty", "not-base64", "short", "version-0", "trailing-garbage"],
)
def test_bad_master_keys_name_the_setting(text: str) -> None:
    with pytest.raises(MasterKeyError, match="KALE_POOL_MASTER_KEY") as caught:
        parse_master_keys(text)
    assert "\n" not in str(caught.value)


def test_load_from_settings_env_file_and_missing(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="KALE_POOL_MASTER_KEY is not set"):
        load_keyring(Settings(data_dir=tmp_path, _env_file=None))
    key = b64key()
    ring = load_keyring(Settings(data_dir=tmp_path, master_key=key, _env_file=None))
    assert ring.current.version == 1
    path = ensure_devnet_master_key(Settings(data_dir=tmp_path, _env_file=None))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert ensure_devnet_master_key(Settings(data_dir=tmp_path, _env_file=None)) == path
    assert path.read_text() == first  # never overwritten
    loaded = load_keyring(Settings(data_dir=tmp_path, master_key_file=path, _env_file=None))
    assert loaded.current.version == 1
    with pytest.raises(MasterKeyError, match="only the devnet"):
        ensure_devnet_master_key(
            Settings(data_dir=tmp_path, network="mainnet", rpc_url="https://x", _env_file=None)
        )
