"""The leak scanner (tests/leaks.py) finds a planted secret in every form it searches, in
files of a tree, in text and in bytes, and nothing where nothing was planted."""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

import pytest
from stellar_sdk import Keypair, StrKey

from tests.leaks import MIN_NEEDLE, LeakScanner, Secret, encodings

SEED = secrets.token_bytes(32)
MASTER = secrets.token_bytes(32)
API_KEY = secrets.token_urlsafe(32).encode()

SECRETS = [
    Secret("seed", SEED, stellar_seed=True),
    Secret("master", MASTER),
    Secret("api key", API_KEY),
]


def _plants(value: bytes, stellar: bool) -> dict[str, bytes]:
    """A file's content leaking ``value`` in each form, with text around it (so no form
    is found only because it fills the whole file)."""
    plants = {
        "raw": b"\x00\x01page" + value + b"\xfe tail",
        "hex": b"log line key=" + binascii.hexlify(value) + b" end",
        "HEX": b"KEY=" + binascii.hexlify(value).upper() + b"\n",
        "base64": b'{"k": "' + base64.b64encode(value) + b'"}',
        "base64url": b"token " + base64.urlsafe_b64encode(value).rstrip(b"=") + b" ok",
        "base32": b"b32:" + base64.b32encode(value) + b"\n",
        # inside longer streams, at each offset that changes the characters
        "base64+1": base64.b64encode(b"x" + value + b"trailing"),
        "base64+2": base64.b64encode(b"xy" + value + b"trailing"),
        "base64url+1": base64.urlsafe_b64encode(b"\xff" + value + b"\xfe\xfd"),
        "base64url+2": base64.urlsafe_b64encode(b"\xff\xfb" + value + b"\xfe\xfd"),
        **{
            f"base32+{shift}": base64.b32encode(b"p" * shift + value + b"after")
            for shift in range(1, 5)
        },
    }
    if stellar:
        plants["strkey"] = b"secret: " + StrKey.encode_ed25519_secret_seed(value).encode()
    return plants


@pytest.mark.parametrize("secret", SECRETS, ids=lambda s: s.label)
def test_a_planted_leak_is_found_in_each_form(secret: Secret, tmp_path: Path) -> None:
    scanner = LeakScanner(SECRETS)
    plants = _plants(secret.value, secret.stellar_seed)
    # every form the scanner searches is planted here (none untested)
    assert set(plants) == set(encodings(secret))
    for form, content in plants.items():
        (tmp_path / f"{form}.bin").write_bytes(content)
        found = scanner.scan_bytes(content, form)
        assert any(leak.secret == secret.label for leak in found), form
    leaks = scanner.scan_tree(tmp_path)
    hit = {leak.where for leak in leaks if leak.secret == secret.label}
    assert hit == {f"{form}.bin" for form in plants}
    # nothing attributed to a secret that was not planted
    assert {leak.secret for leak in leaks} == {secret.label}


def test_a_stellar_seed_is_found_as_the_keypair_writes_it(tmp_path: Path) -> None:
    keypair = Keypair.random()
    scanner = LeakScanner([Secret("farmer", keypair.raw_secret_key(), stellar_seed=True)])
    (tmp_path / "x.log").write_text(f"signing with {keypair.secret}\n")
    leaks = scanner.scan_tree(tmp_path)
    # a StrKey is base32 of a version byte, the seed and a checksum: base32 at offset 1
    # finds it too
    assert {(leak.encoding, leak.where) for leak in leaks} == {
        ("strkey", "x.log"),
        ("base32+1", "x.log"),
    }
    assert scanner.scan_text(f"public {keypair.public_key}", "answer") == []


def test_clean_data_and_allowed_files(tmp_path: Path) -> None:
    scanner = LeakScanner(SECRETS)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "random.bin").write_bytes(secrets.token_bytes(1 << 20))
    (tmp_path / "log.txt").write_text("block 12 planted; " + "ab" * 5000)
    assert scanner.scan_tree(tmp_path) == []
    keep = tmp_path / "master.key"
    keep.write_text("1:" + base64.b64encode(MASTER).decode())
    assert [leak.where for leak in scanner.scan_tree(tmp_path)] == ["master.key"]
    assert scanner.scan_tree(tmp_path, allowed=[keep]) == []


def test_needles_are_long_enough_to_mean_something() -> None:
    for secret in SECRETS:
        assert all(len(n) >= MIN_NEEDLE for n in encodings(secret).values())
        # a short secret still yields its raw form or nothing, never a 3-byte needle
    assert encodings(Secret("short", b"abc")) == {}
