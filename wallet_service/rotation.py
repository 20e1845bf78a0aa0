"""Master key rotation: every custodial key rewrapped under a new master key, resumably.

`kale-pool wallet rotate-key [--retire]` runs :func:`rotate_master_key`:

1. If no rotation is open and every wallet is already sealed under the keyring's newest
   version, a new version is added to the keyring file (`KALE_POOL_MASTER_KEY_FILE`; a
   generated key, or the operator's). The file is replaced atomically and keeps every old
   version, so whatever was sealed before still opens. A keyring in
   `KALE_POOL_MASTER_KEY` cannot be written: the operator adds the version there.
2. A rotation row (`wallet.key_rotations`) names the target version; then each wallet
   not under it is rewrapped in its own transaction (the row locked, opened with the old
   key, sealed under the new one, written with the rotation's count). A run cut short
   (a crash, a SIGKILL) leaves every row under either key, both in the keyring, and the
   next run continues the open rotation.
3. With ``retire``, versions that no wallet row uses any more are removed from the file
   (and recorded on the rotation): never one a row still needs.

Plaintext exists only inside :meth:`Keyring.rewrap`. Keys are named by fingerprint and
version in everything this module says; their bytes never.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from kalepool.db.roles import WALLET
from kalepool.settings import Settings
from wallet_service.keystore import (
    MASTER_KEY_BYTES,
    MASTER_KEY_ENV,
    Keyring,
    KeystoreError,
    MasterKey,
    Sealed,
    format_keyring,
    load_keyring,
    parse_master_keys,
)


class RotationError(Exception):
    """The rotation cannot go on: one line saying why and what to do."""


@dataclass
class RotationReport:
    """What a run did."""

    rotation_id: int | None = None
    target: str = ""  # `mk-… v2`
    added_version: int | None = None  # a version this run added to the keyring file
    resumed: bool = False  # continued a rotation an earlier run left open
    rewrapped: int = 0  # rows this run rewrapped
    retired: list[int] = field(default_factory=list)  # versions this run removed


def _name(key: MasterKey) -> str:
    return f"{key.key_id} v{key.version}"


def write_keyring_file(path: Path, keys: list[MasterKey]) -> None:
    """Replace the keyring file with ``keys``, atomically (a temporary file in the same
    directory, fsynced, renamed over it) and private (0600): a crash leaves the old file
    or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".master-key-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(format_keyring(keys) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keyring_file(settings: Settings, what: str) -> Path:
    path = settings.master_key_file
    if path is None:
        raise RotationError(
            f"the keyring is in {MASTER_KEY_ENV}, which this command cannot change: {what}"
        )
    return path


def add_master_key(settings: Settings, new_key: bytes | None = None) -> MasterKey:
    """Add a version (``new_key``, else 32 random bytes) above the highest to the keyring
    file; the key added."""
    path = _keyring_file(
        settings,
        f"add `<version>:<base64 of 32 random bytes>` to it (or use {MASTER_KEY_ENV}_FILE),"
        " restart the wallet service and run this again",
    )
    keyring = parse_master_keys(path.read_text("ascii"))
    key = MasterKey(keyring.current.version + 1, new_key or secrets.token_bytes(MASTER_KEY_BYTES))
    if len(key.key) != MASTER_KEY_BYTES:
        raise RotationError(f"a master key is {MASTER_KEY_BYTES} bytes, not {len(key.key)}")
    if any(k.key == key.key for k in keyring.keys):
        raise RotationError("the new master key is already in the keyring")
    try:
        write_keyring_file(path, [*keyring.keys, key])
    except OSError as error:  # a read-only mount (a Kubernetes Secret)
        raise RotationError(
            f"cannot write {path} ({error.strerror}): add version {key.version} to the"
            " keyring where it is kept, then run this again"
        ) from None
    return key


def _connect(conninfo: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(conninfo, autocommit=True, options=WALLET.search_path)


def _open_rotation(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, str, int] | None:
    row = conn.execute(
        "SELECT id, target_key_id, target_key_version FROM key_rotations WHERE finished_at IS NULL"
    ).fetchone()
    if row is None:
        return None
    rotation_id, key_id, version = row
    assert isinstance(rotation_id, int) and isinstance(key_id, str) and isinstance(version, int)
    return rotation_id, key_id, version


def _pending(conn: psycopg.Connection[tuple[object, ...]], key: MasterKey, limit: int) -> list[str]:
    """Public keys of wallets not sealed under ``key`` (oldest first)."""
    rows = conn.execute(
        "SELECT public_key FROM custodial_wallets WHERE (key_id, key_version) <> (%s, %s)"
        " ORDER BY created_at, id LIMIT %s",
        (key.key_id, key.version, limit),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _rewrap_one(
    conn: psycopg.Connection[tuple[object, ...]],
    keyring: Keyring,
    rotation_id: int,
    public_key: str,
) -> bool:
    """Rewrap one wallet in its own transaction, with the rotation's count; False when
    another writer already moved it under the target."""
    target = keyring.current
    with conn.transaction():
        row = conn.execute(
            "SELECT ciphertext, nonce, key_id, key_version FROM custodial_wallets"
            " WHERE public_key = %s FOR UPDATE",
            (public_key,),
        ).fetchone()
        if row is None:
            return False
        ciphertext, nonce, key_id, version = row
        assert isinstance(ciphertext, bytes) and isinstance(nonce, bytes)
        assert isinstance(key_id, str) and isinstance(version, int)
        if (key_id, version) == (target.key_id, target.version):
            return False
        try:
            new = keyring.rewrap(Sealed(ciphertext, nonce, key_id, version), public_key)
        except KeystoreError as error:
            # Nothing was written: the row stays as it was, readable as before.
            raise RotationError(f"cannot rewrap: {error}") from None
        conn.execute(
            "UPDATE custodial_wallets SET ciphertext = %s, nonce = %s, key_id = %s,"
            " key_version = %s WHERE public_key = %s",
            (new.ciphertext, new.nonce, new.key_id, new.key_version, public_key),
        )
        conn.execute(
            "UPDATE key_rotations SET rewrapped = rewrapped + 1 WHERE id = %s", (rotation_id,)
        )
    return True


def _retire(
    conn: psycopg.Connection[tuple[object, ...]],
    settings: Settings,
    keyring: Keyring,
    rotation_id: int | None,
) -> list[int]:
    """Remove from the keyring file the versions no wallet row uses; those versions."""
    used = {
        (str(kid), int(str(ver)))
        for kid, ver in conn.execute(
            "SELECT DISTINCT key_id, key_version FROM custodial_wallets"
        ).fetchall()
    }
    current = keyring.current
    unused = [k for k in keyring.keys if k != current and (k.key_id, k.version) not in used]
    if not unused:
        return []
    path = _keyring_file(
        settings,
        "remove version(s) "
        + ", ".join(_name(k) for k in unused)
        + " from it yourself (no wallet uses them)",
    )
    # Read again: keep exactly what the file holds minus the unused versions.
    on_file = parse_master_keys(path.read_text("ascii"))
    retired = {(k.key_id, k.version) for k in unused}
    try:
        write_keyring_file(path, [k for k in on_file.keys if (k.key_id, k.version) not in retired])
    except OSError as error:  # a read-only mount (a Kubernetes Secret)
        raise RotationError(
            f"cannot write {path} ({error.strerror}): remove version(s) "
            + ", ".join(_name(k) for k in unused)
            + " from the keyring where it is kept (no wallet uses them)"
        ) from None
    versions = sorted(k.version for k in unused)
    if rotation_id is not None:
        conn.execute(
            "UPDATE key_rotations SET retired_versions = retired_versions || %s WHERE id = %s",
            (versions, rotation_id),
        )
    return versions


def rotate_master_key(
    settings: Settings,
    conninfo: str,
    *,
    retire: bool = False,
    new_key: bytes | None = None,
    progress: Callable[[str], None] = lambda _line: None,
    batch: int = 100,
) -> RotationReport:
    """Run or continue the rotation (see the module's docstring); what it did."""
    report = RotationReport()
    keyring = load_keyring(settings)
    with _connect(conninfo) as conn:
        open_rotation = _open_rotation(conn)
        if open_rotation is not None:
            rotation_id, key_id, version = open_rotation
            if (keyring.current.key_id, keyring.current.version) != (key_id, version):
                raise RotationError(
                    f"rotation {rotation_id} to {key_id} v{version} is unfinished, but the"
                    f" keyring's newest key is {_name(keyring.current)}: restore that key"
                    " as the newest and run this again"
                )
            if new_key is not None:
                raise RotationError(
                    f"rotation {rotation_id} is unfinished: run this again without a new key"
                    " to finish it first"
                )
            report.resumed = True
            progress(f"continuing rotation {rotation_id} to {key_id} v{version}")
        else:
            behind = _pending(conn, keyring.current, 1)
            # --retire right after a finished rotation only retires; anything else with
            # every wallet under the newest key starts a rotation to a new key.
            start_new = not behind and not (retire and len(keyring.keys) > 1)
            if new_key is not None and behind:
                raise RotationError(
                    f"some wallets are not yet under {_name(keyring.current)}: run this"
                    " again without a new key to rewrap them first"
                )
            if start_new or new_key is not None:
                added = add_master_key(settings, new_key)
                report.added_version = added.version
                keyring = load_keyring(settings)
                progress(f"added master key {_name(added)} to {settings.master_key_file}")
            if start_new or behind or new_key is not None:
                row = conn.execute(
                    "INSERT INTO key_rotations (target_key_id, target_key_version)"
                    " VALUES (%s, %s) RETURNING id",
                    (keyring.current.key_id, keyring.current.version),
                ).fetchone()
                assert row is not None and isinstance(row[0], int)
                rotation_id = row[0]
                progress(f"rotation {rotation_id} to {_name(keyring.current)} started")
            else:
                rotation_id = None
        report.rotation_id = rotation_id
        report.target = _name(keyring.current)
        if rotation_id is not None:
            while todo := _pending(conn, keyring.current, batch):
                for public_key in todo:
                    if _rewrap_one(conn, keyring, rotation_id, public_key):
                        report.rewrapped += 1
                        progress(f"rewrapped {public_key}")
            conn.execute(
                "UPDATE key_rotations SET finished_at = now() WHERE id = %s", (rotation_id,)
            )
            progress(f"rotation {rotation_id} finished: every wallet is under {report.target}")
        if retire:
            last = rotation_id
            if last is None:
                found = conn.execute("SELECT max(id) FROM key_rotations").fetchone()
                last = found[0] if found is not None and isinstance(found[0], int) else None
            report.retired = _retire(conn, settings, keyring, last)
            if report.retired:
                progress(f"retired version(s) {', '.join(map(str, report.retired))}")
    return report
