"""Secrets out of sight: the one home of masking what kale-pool prints, logs and answers.

- :func:`mask_url`: a URL without its secrets (the password, a token in the user part,
  query values, path segments that look like keys, the fragment); host, port and the
  rest of the path stay, so an operator still sees where it points.
- :func:`redact`: free text (a log line, an error) without known secret values, Stellar
  secret seeds (``S…``), a libpq ``password=…`` or a URL's secrets.
- :class:`RedactingFormatter`: a logging formatter that passes every line through
  :func:`redact`; installed wherever kale-pool configures logging.
- :func:`remember` / :func:`remember_settings`: the process's known secret values (every
  ``SecretStr`` setting, a URL setting's password and key-like parts), which
  :func:`redact` replaces wherever they appear.
- :func:`shown_setting`: a setting as `kale-pool config show` prints it.

Masking is a second line: the services log ids and public keys, never a secret; this
catches what an exception message or a third-party library brings along.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from kalepool.settings import Settings

MASK = "***"

# A path segment that is a key rather than a name: of token characters only (no dot, so
# host-like or file names stay) and either named like one (`…-api-key`), mixing letters
# and digits at some length, or very long. Provider RPC URLs put their API key there
# (https://rpc.example/v1/<key>).
_TOKEN_SEGMENT = re.compile(r"[A-Za-z0-9_\-~+=%]{8,}")
_KEY_WORDS = ("key", "token", "secret", "auth", "pass")
# A secret seed in Stellar's StrKey form: S, then 55 base32 characters.
_STELLAR_SEED = re.compile(r"\bS[A-Z2-7]{55}\b")
# A URL inside free text: up to whitespace, a quote or a bracket, without the punctuation
# that ends a sentence or a clause (`cannot reach https://host/key: refused`).
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*[^\s'\"<>.,;:!?)\]]")
# libpq keyword/value connection strings: `password=...` (quoted or not).
_CONNINFO_PASSWORD = re.compile(r"\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# Shorter values are not remembered: masking `abc` everywhere would mangle text.
_MIN_SECRET_LENGTH = 6

_known: set[str] = set()
_known_lock = threading.Lock()


def looks_like_key(segment: str) -> bool:
    """Whether a URL path segment looks like a key or token rather than a name."""
    if not _TOKEN_SEGMENT.fullmatch(segment):
        return False
    if any(word in segment.lower() for word in _KEY_WORDS):
        return True
    mixed = any(c.isdigit() for c in segment) and any(c.isalpha() for c in segment)
    return (mixed and len(segment) >= 12) or len(segment) >= 32


def _userinfo(scheme: str, userinfo: str) -> str:
    user, sep, _password = userinfo.partition(":")
    if sep:
        return f"{user}:{MASK}"
    # A lone user part of a database URL is a role name; of any other URL, a token.
    return user if scheme.startswith("postgres") else MASK


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***`` (see the module's docstring).

    Text that is no URL is returned with a libpq ``password=…`` masked, else unchanged.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + MASK, url)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = f"{_userinfo(parts.scheme, userinfo)}@{hostinfo}" if at else hostinfo
    path = "/".join(MASK if looks_like_key(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:  # a bare `?token`
        query = MASK
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, path, query, fragment))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL (those :func:`mask_url` hides), to be remembered."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    elif parts.username and not parts.scheme.startswith("postgres"):
        found.append(parts.username)
    found += [seg for seg in parts.path.split("/") if looks_like_key(seg)]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    if parts.fragment:
        found.append(parts.fragment)
    conninfo = _CONNINFO_PASSWORD.search(url)
    if conninfo:
        found.append(conninfo.group(2).strip("'"))
    return found


def remember(values: Iterable[str]) -> None:
    """Add secret values that :func:`redact` replaces from now on, in this process."""
    with _known_lock:
        _known.update(v for v in values if len(v) >= _MIN_SECRET_LENGTH)


def forget_all() -> None:
    """Drop every remembered value (tests)."""
    with _known_lock:
        _known.clear()


def is_url_setting(name: str) -> bool:
    """Settings named `…_url` are URLs whose secrets are masked when shown."""
    return name.endswith("_url")


def secret_values(settings: Settings) -> list[str]:
    """Every secret a settings object holds: each ``SecretStr`` value (with each entry of
    a keyring or a comma-separated list on its own) and the secret parts of URL settings."""
    found: list[str] = []
    for name, value in settings:
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            found.append(text)
            found += url_secrets(text)
            for entry in text.split(","):
                found.append(entry.strip())
                found.append(entry.strip().rpartition(":")[2])  # a keyring's `<v>:<key>`
        elif isinstance(value, str) and is_url_setting(name):
            found += url_secrets(value)
    return [v for v in found if v]


def remember_settings(settings: Settings) -> None:
    """Remember every secret of ``settings`` (see :func:`secret_values`)."""
    remember(secret_values(settings))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without secrets: the remembered values and ``secrets`` (longest first, so
    a value containing another goes whole), Stellar secret seeds, libpq passwords and the
    secret parts of every URL in it."""
    with _known_lock:
        values = _known.union(s for s in secrets if len(s) >= _MIN_SECRET_LENGTH)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    text = _STELLAR_SEED.sub(MASK, text)
    text = _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def shown_setting(name: str, value: Any) -> str:
    """A setting's value as `config show` prints it: a secret as ``***`` (a secret URL as
    the URL masked, so the host and role stay visible), a URL masked, unset as empty."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        text = value.get_secret_value()
        return mask_url(text) if "://" in text else MASK
    shown = str(getattr(value, "value", value))
    return mask_url(shown) if is_url_setting(name) else shown


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (message, arguments, traceback) goes through
    :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
