"""Key custody: custodial secret keys encrypted at rest under the master key.

Each secret (the 32-byte ed25519 seed) is sealed with AES-256-GCM under the current
master key, with a fresh random 96-bit nonce and the account's public key as associated
data, so a ciphertext decrypts only as the key of the account it was made for (a row
copied onto another account fails authentication). Each sealed secret names the master
key that sealed it: `key_id` (a fingerprint of the key) and `key_version`.

The master key comes from `KALE_POOL_MASTER_KEY` or the file `KALE_POOL_MASTER_KEY_FILE`
(a mounted secret). Either holds one base64 key (32 bytes, version 1) or a keyring:
comma-separated `<version>:<base64>` entries. The highest version seals new secrets;
every listed version opens what it sealed. Rotation is `kale-pool wallet rotate-key`
(`wallet_service.rotation`): a new version is added, every secret is rewrapped under it,
and the old versions are dropped once no secret uses them (docs/wallet.md).

Plaintext exists only inside :meth:`Keyring.signer` while a transaction is signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from stellar_sdk import Keypair

from kalepool.settings import ENV_PREFIX, Settings

log = logging.getLogger("wallet_service.keystore")

MASTER_KEY_ENV = f"{ENV_PREFIX}MASTER_KEY"
MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_PREFIX = b"kale-pool custodial key v1:"


class MasterKeyError(Exception):
    """The master key is missing or unusable: one line naming the setting."""


class KeystoreError(Exception):
    """A sealed secret cannot be opened (wrong master key, or a tampered row)."""


@dataclass(frozen=True)
class MasterKey:
    """One version of the master key. Its bytes never appear in a repr."""

    version: int
    key: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A fingerprint naming this key (not the key: a one-way hash of it)."""
        return "mk-" + hashlib.sha256(b"kale-pool master key id:" + self.key).hexdigest()[:16]


@dataclass(frozen=True)
class Sealed:
    """An encrypted secret as stored: ciphertext (with tag), nonce and the key that sealed it."""

    ciphertext: bytes = field(repr=False)
    nonce: bytes
    key_id: str
    key_version: int


def _aad(public_key: str) -> bytes:
    return _AAD_PREFIX + public_key.encode("ascii")


class Keyring:
    """The master key versions this process holds; the highest seals."""

    def __init__(self, keys: list[MasterKey]) -> None:
        if not keys:
            raise MasterKeyError(f"{MASTER_KEY_ENV}: no master key given")
        versions = [k.version for k in keys]
        if len(set(versions)) != len(versions):
            raise MasterKeyError(f"{MASTER_KEY_ENV}: a key version is listed twice")
        self._keys = {(k.key_id, k.version): k for k in keys}
        self.current = max(keys, key=lambda k: k.version)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.key_id} v{self.current.version})"

    @property
    def keys(self) -> list[MasterKey]:
        """Every version held, lowest first."""
        return sorted(self._keys.values(), key=lambda k: k.version)

    def holds(self, key_id: str, key_version: int) -> bool:
        return (key_id, key_version) in self._keys

    def seal(self, seed: bytes, public_key: str) -> Sealed:
        """Encrypt a 32-byte seed for the account `public_key` under the current key."""
        if len(seed) != 32:
            raise ValueError("a custodial secret is a 32-byte ed25519 seed")
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(self.current.key).encrypt(nonce, seed, _aad(public_key))
        return Sealed(ciphertext, nonce, self.current.key_id, self.current.version)

    def _open(self, sealed: Sealed, public_key: str) -> bytes:
        key = self._keys.get((sealed.key_id, sealed.key_version))
        if key is None:
            raise KeystoreError(
                f"the key of {public_key} is sealed under master key {sealed.key_id} "
                f"version {sealed.key_version}, which {MASTER_KEY_ENV} does not hold"
            )
        try:
            return AESGCM(key.key).decrypt(sealed.nonce, sealed.ciphertext, _aad(public_key))
        except InvalidTag:
            raise KeystoreError(
                f"the stored key of {public_key} does not authenticate "
                "(tampered, or sealed for another account)"
            ) from None

    @contextmanager
    def signer(self, sealed: Sealed, public_key: str) -> Iterator[Keypair]:
        """The account's keypair, for the duration of a signing; checked against the account."""
        seed = self._open(sealed, public_key)
        keypair = Keypair.from_raw_ed25519_seed(seed)
        del seed
        if keypair.public_key != public_key:
            raise KeystoreError(f"the stored key of {public_key} belongs to another account")
        try:
            yield keypair
        finally:
            # Python cannot wipe memory; dropping the last reference is what it allows.
            del keypair

    def rewrap(self, sealed: Sealed, public_key: str) -> Sealed:
        """The same secret sealed under the current key (rotation)."""
        return self.seal(self._open(sealed, public_key), public_key)


def generate_wallet(keyring: Keyring) -> tuple[str, Sealed]:
    """A fresh key pair: its public key and its sealed secret (the plaintext is dropped)."""
    keypair = Keypair.random()
    public_key = keypair.public_key
    sealed = keyring.seal(keypair.raw_secret_key(), public_key)
    del keypair
    return public_key, sealed


def parse_master_keys(text: str) -> Keyring:
    """A keyring from `base64` or `<version>:<base64>,...`; errors name the setting only."""
    entries = [part.strip() for part in text.strip().split(",") if part.strip()]
    if not entries:
        raise MasterKeyError(f"{MASTER_KEY_ENV} is empty")
    keys = []
    for position, entry in enumerate(entries, 1):
        version_text, sep, encoded = entry.rpartition(":")
        if not sep:
            if len(entries) > 1:
                raise MasterKeyError(
                    f"{MASTER_KEY_ENV}: with several keys, each must be <version>:<base64>"
                )
            version_text, encoded = "1", entry
        if not version_text.isdigit() or int(version_text) < 1:
            raise MasterKeyError(f"{MASTER_KEY_ENV}: entry {position} has no valid version")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{MASTER_KEY_ENV}: entry {position} is not base64") from None
        if len(raw) != MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"{MASTER_KEY_ENV}: entry {position} must decode to 32 bytes, not {len(raw)}"
            )
        keys.append(MasterKey(int(version_text), raw))
    return Keyring(keys)


def format_keyring(keys: list[MasterKey]) -> str:
    """The keyring text `parse_master_keys` reads: `<version>:<base64>,...`, lowest first."""
    ordered = sorted(keys, key=lambda k: k.version)
    return ",".join(f"{k.version}:{base64.b64encode(k.key).decode()}" for k in ordered)


def load_keyring(settings: Settings) -> Keyring:
    """The keyring from the settings; :class:`MasterKeyError` when missing or invalid."""
    if settings.master_key is not None and settings.master_key_file is not None:
        raise MasterKeyError(f"set {MASTER_KEY_ENV} or {MASTER_KEY_ENV}_FILE, not both")
    if settings.master_key is not None:
        return parse_master_keys(settings.master_key.get_secret_value())
    if settings.master_key_file is not None:
        try:
            text = settings.master_key_file.read_text("ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
            raise MasterKeyError(
                f"{MASTER_KEY_ENV}_FILE: cannot read {settings.master_key_file} ({reason})"
            ) from None
        return parse_master_keys(text)
    raise MasterKeyError(
        f"{MASTER_KEY_ENV} is not set: the wallet service needs a master key "
        "(base64 of 32 random bytes) to encrypt custodial keys"
    )


class KeyringSource:
    """The keyring of a running wallet service, re-read when its file changes.

    `kale-pool wallet rotate-key` adds a version to `KALE_POOL_MASTER_KEY_FILE` and then
    rewraps secrets under it; a service reading the file again sees the new key (and
    seals new wallets with it) without a restart. A key in `KALE_POOL_MASTER_KEY` cannot
    change under a running process: that keyring is read once. A file that changed but
    does not parse keeps the keys held (logged; its content never is).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stamp = self._file_stamp()
        self._keyring = load_keyring(settings)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self.settings.master_key_file
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def __call__(self) -> Keyring:
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            try:
                self._keyring = load_keyring(self.settings)
                log.info("master key file changed: now holding %r", self._keyring)
            except MasterKeyError as error:
                log.warning("master key file changed but is unusable (%s); keeping", error)
            self._stamp = stamp
        return self._keyring


def devnet_master_key_path(settings: Settings) -> Path:
    """Where the devnet profile keeps its generated master key."""
    return settings.layout().root / "wallet" / "master.key"


def ensure_devnet_master_key(settings: Settings) -> Path:
    """Create a random master key file (mode 0600) for the devnet if none exists; its path.

    For the devnet only: a real network's master key is an operator's secret, never
    generated next to the data it protects.
    """
    if settings.network.value != "devnet":
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} must be provided on {settings.network.value}; "
            "only the devnet generates one"
        )
    path = devnet_master_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("1:" + base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode())
        handle.write("\n")
    return path
