"""A scanner for secrets where they must not be: files (as bytes), logs, gRPC responses,
metrics.

Each secret is searched in every form it could leak in: its raw bytes, hex (both cases),
base64 (standard and URL-safe) and base32, and for a Stellar seed its StrKey (`S…`). A
secret inside a longer base64 or base32 stream is encoded at an offset that is not a
multiple of 3 (or 5) bytes and shares no text with its encoding alone, so each of those
is searched at every alignment (the characters its bits alone decide).

`tests/test_leaks.py` proves the scanner finds planted leaks in each form; the end-to-end
run (`tests/app/test_up.py`) scans what `kale-pool up` leaves and serves.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from stellar_sdk import StrKey

# A needle shorter than this could match by chance in megabytes of database pages.
MIN_NEEDLE = 12


@dataclass(frozen=True)
class Secret:
    """A secret to look for. ``label`` names it in a report and must not contain it."""

    label: str
    value: bytes
    stellar_seed: bool = False  # a 32-byte ed25519 seed: also its StrKey `S…`


@dataclass(frozen=True)
class Leak:
    """Where a secret was found, and in which form."""

    secret: str
    encoding: str
    where: str

    def __str__(self) -> str:
        return f"{self.secret} ({self.encoding}) in {self.where}"


def _aligned(encode: Callable[[bytes], bytes], group: int, bits: int, value: bytes) -> list[bytes]:
    """``value``'s encoding at each byte offset within a group: the characters that
    ``value``'s bits alone decide, whatever precedes or follows it."""
    found = []
    for shift in range(group):
        text = encode(b"\0" * shift + value + b"\0" * group)
        start = math.ceil(8 * shift / bits)
        end = (8 * (shift + len(value))) // bits
        found.append(text[start:end])
    return found


def encodings(secret: Secret) -> dict[str, bytes]:
    """Every form of ``secret`` to search, by a name for the form."""
    v = secret.value
    forms: dict[str, bytes] = {
        "raw": v,
        "hex": binascii.hexlify(v),
        "HEX": binascii.hexlify(v).upper(),
    }
    for name, encode, group, bits in (
        ("base64", base64.b64encode, 3, 6),
        ("base64url", base64.urlsafe_b64encode, 3, 6),
        ("base32", base64.b32encode, 5, 5),
    ):
        for shift, text in enumerate(_aligned(encode, group, bits, v)):
            forms[f"{name}+{shift}" if shift else name] = text
    if secret.stellar_seed:
        forms["strkey"] = StrKey.encode_ed25519_secret_seed(v).encode()
    return {name: text for name, text in forms.items() if len(text) >= MIN_NEEDLE}


class LeakScanner:
    """Finds any of ``secrets``, in any of its forms, in bytes, text or a directory."""

    def __init__(self, secrets: Iterable[Secret]) -> None:
        self.secrets = list(secrets)
        # One needle per distinct text of a secret: base64 and base64url (or hex and HEX)
        # coincide when its encoding holds none of the characters they differ in, and a
        # leak found twice is still one leak.
        needles: dict[tuple[str, bytes], str] = {}
        for secret in self.secrets:
            for name, needle in encodings(secret).items():
                needles.setdefault((secret.label, needle), name)
        self._needles = [(label, name, needle) for (label, needle), name in needles.items()]

    def scan_bytes(self, data: bytes, where: str) -> list[Leak]:
        return [Leak(label, name, where) for label, name, needle in self._needles if needle in data]

    def scan_text(self, text: str, where: str) -> list[Leak]:
        return self.scan_bytes(text.encode("utf-8", "surrogateescape"), where)

    def scan_tree(self, root: Path, *, allowed: Iterable[Path] = ()) -> list[Leak]:
        """Every regular file under ``root`` read as bytes, but the ``allowed`` ones (the
        files meant to hold a secret, 0600, such as the master key file)."""
        skip = {p.resolve() for p in allowed}
        leaks: list[Leak] = []
        for directory, _dirs, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                if path.is_symlink() or not path.is_file() or path.resolve() in skip:
                    continue
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # removed while walking (a temporary file)
                    continue
                leaks += self.scan_bytes(data, str(path.relative_to(root)))
        return leaks
