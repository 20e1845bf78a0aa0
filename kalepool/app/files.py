"""Small files the local stack keeps: written atomically, secrets readable by the owner only."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kalepool.settings import make_private


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` in one step (readers never see half a file); the
    file has ``mode`` from its first byte, whatever the umask."""
    make_private(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def open_private_append(path: Path) -> int:
    """A descriptor appending to ``path``, a log the owner alone may read: created 0600
    (never readable by others, not even for a moment, whatever the umask) and narrowed to
    0600 if it was made wider before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments and blanks skipped); empty when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: dict[str, str], header: Iterable[str] = ()) -> None:
    """Write ``KEY=value`` lines (0600: they hold secrets)."""
    lines = [f"# {line}" for line in header]
    lines += [f"{key}={value}" for key, value in values.items()]
    write_atomic(path, "\n".join(lines) + "\n", 0o600)
