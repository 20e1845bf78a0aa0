"""KALE amounts: integer stroops, and the decimals people and classic operations write.

Every amount is kept and sent as integer stroops; these are the only conversions to and
from decimal text (the command line, messages and logs, the report, classic payments).
"""

from __future__ import annotations

import re

STROOPS_PER_KALE = 10_000_000

MIN_FUNDING_XLM_STROOPS = 20_000_000
"""XLM a new custodial account needs at least (2 XLM: the account's two base reserves,
the KALE trustline's reserve, and a margin for fees: thousands of plants). XLM has 7
decimals too, so `exact_kale` writes XLM amounts as well."""
"""Stroops in one KALE (and in one XLM): every Stellar amount has 7 decimals."""


def share_of(reward: int, bps: int) -> int:
    """The part of `reward` (stroops) that `bps` basis points take, rounded down: the
    pool never takes a stroop more than its rate. The one rule of the wallet (which caps
    a sweep with it) and the pool (which asks for it)."""
    return reward * bps // 10_000


_AMOUNT = re.compile(r"([0-9]*)(?:\.([0-9]+))?", re.ASCII)


def exact_kale(stroops: int) -> str:
    """A stroop amount as an exact decimal with all 7 places (`-1.2500000`): the form
    classic operations take, and the plain form of a report."""
    sign = "-" if stroops < 0 else ""
    whole, frac = divmod(abs(stroops), STROOPS_PER_KALE)
    return f"{sign}{whole}.{frac:07d}"


def format_kale(stroops: int) -> str:
    """A stroop amount as people read KALE, exact to the stroop: thousands grouped, no
    trailing zeros (`1,234.5`, `0.0001234`, `-3.0000001`). Messages and logs use it."""
    sign = "-" if stroops < 0 else ""
    whole, frac = divmod(abs(stroops), STROOPS_PER_KALE)
    decimals = f"{frac:07d}".rstrip("0")
    return f"{sign}{whole:,}" + (f".{decimals}" if decimals else "")


def parse_kale(text: str) -> int:
    """A KALE amount a person typed (`12`, `0.5`, `1,000.25`) in stroops; ValueError with
    a one-sentence reason for anything else (negative, more than 7 decimals, not a number)."""
    cleaned = text.strip().replace(",", "").replace("_", "")
    match = _AMOUNT.fullmatch(cleaned)
    if match is None or cleaned in ("", "."):
        raise ValueError(f"{text!r} is not an amount of KALE (e.g. 12 or 0.5)")
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > 7:
        raise ValueError(f"{text!r} has more than 7 decimals (1 stroop is 0.0000001 KALE)")
    return int(whole or "0") * STROOPS_PER_KALE + int(frac.ljust(7, "0"))
