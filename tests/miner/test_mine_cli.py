"""`kale-pool mine`, run as an operator runs it (a real subprocess)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stellar_sdk import Keypair, StrKey

from kalepool import protocol
from kalepool.app.mining import parse_entropy
from kalepool.protocol import farmer_key

KALE_POOL = shutil.which("kale-pool", path=str(Path(sys.executable).parent))
ENTROPY = bytes(range(1, 33))


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert KALE_POOL is not None, "kale-pool is not installed in this environment"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALE_POOL_")}
    return subprocess.run(
        [KALE_POOL, "mine", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def test_mine_prints_the_rate_and_a_real_best_hash() -> None:
    address = Keypair.random().public_key
    done = run(
        "--index", "123", "--entropy", ENTROPY.hex(), "--farmer", address, "--seconds", "0.5"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    nonce = int(re.search(r"best nonce\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    digest = re.search(r"best hash\s+([0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
    zeros = int(re.search(r"zeros\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    expected = protocol.kale_hash(123, nonce, ENTROPY, StrKey.decode_ed25519_public_key(address))
    assert digest == expected.hex()
    assert zeros == protocol.leading_zeros(expected)
    assert re.search(r"rate\s+[\d.]+ MH/s \([\d,]+ hashes in [\d.]+ s, \d+ threads", out)
    assert "stopped: deadline" in out


def test_mine_with_a_contract_farmer_threads_and_target() -> None:
    contract = "CDL74RF5BLYR2YBLCCI7F5FB6TPSCLKEJUBSD2RSVWZ4YHF3VMFAIGWA"
    done = run(
        "--index", "5", "--entropy", base64.b64encode(ENTROPY).decode(), "--farmer", contract,
        "--seconds", "30", "--threads", "1", "--target-zeros", "3", "--backend", "scalar",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    nonce = int(re.search(r"best nonce\s+(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    digest = protocol.kale_hash(5, nonce, ENTROPY, StrKey.decode_contract(contract))
    assert protocol.leading_zeros(digest) >= 3
    assert digest.hex() in done.stdout
    assert "1 threads, scalar kernel; stopped: target" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--farmer", "GNOTANADDRESS"], "farmer 'GNOTANADDRESS' is not a valid address"),
        (["--farmer", "SBADSECRET"], "farmer must be a G... account or a C... contract"),
        (["--entropy", "abcd"], "entropy must be 32 bytes"),
        (["--index", "-1"], "index must be between 0 and 4294967295"),
        (["--seconds", "0"], "seconds must be positive"),
        (["--threads", "0"], "threads must be between 1 and 1024"),
        (["--backend", "gpu"], "unknown backend"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    base = {
        "--index": "1",
        "--entropy": ENTROPY.hex(),
        "--farmer": Keypair.random().public_key,
        "--seconds": "5",
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    done = run(*[x for pair in base.items() for x in pair])
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_entropy_and_farmer_parsing() -> None:
    assert parse_entropy(ENTROPY.hex()) == ENTROPY
    assert parse_entropy("0x" + ENTROPY.hex().upper()) == ENTROPY
    assert parse_entropy(base64.b64encode(ENTROPY).decode()) == ENTROPY
    for bad in ("", "zz" * 32, ENTROPY.hex()[:-2], base64.b64encode(ENTROPY[:31]).decode()):
        with pytest.raises(ValueError, match="entropy must be 32 bytes"):
            parse_entropy(bad)
    kp = Keypair.random()
    assert farmer_key(kp.public_key) == kp.raw_public_key()
    with pytest.raises(ValueError, match=r"G\.\.\. account or a C\.\.\. contract"):
        farmer_key(kp.secret)
