"""The farmer action message: what a farmer's payout key signs to join, take a payout or
leave through the web page, built by the web process and verified by the pool.

The web process must not be able to register anyone or move anyone's KALE on its own:
each such request it forwards carries the farmer's SEP-53 signature ("Stellar Signed
Message": Freighter's signMessage, stellar-sdk's `Keypair.sign_message`) of a text
built here, and the pool parses the same text with this module, checks that the
signature is the payout address's, that the action and every field equal the request,
that it has not expired, and that its nonce was never used before (pool.action_nonces).

The text, one field a line (a person reads it in the wallet before signing)::

    kale-pool farmer action
    action: payout
    pool: Test SDF Network ; September 2015
    farmer: 0b6f...-...
    payout address: G...
    amount stroops: 10000000
    nonce: 32 hex digits
    expires: 2026-01-01T00:00:00+00:00

`join` names `farmer: new`, `pooler:` and `stake bps:` instead of an amount; `leave`
names neither. The pool line is the network's passphrase, so a signature for one
network's pool is refused by another's.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

from stellar_sdk import Keypair
from stellar_sdk.exceptions import BadSignatureError, Ed25519PublicKeyInvalidError

from kalepool.bounds import INT64_MAX, STAKE_BPS_MAX

Action = Literal["join", "payout", "leave"]
ACTIONS: tuple[Action, ...] = ("join", "payout", "leave")
HEADER = "kale-pool farmer action"
NEW_FARMER = "new"
MESSAGE_MAX = 600
"""Characters of an action message: a few short lines."""
SIGNATURE_BYTES = 64
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_ACCOUNT = re.compile(r"^G[A-Z2-7]{55}$")


class ActionError(ValueError):
    """An action message that cannot be taken; the text says why, for a person."""


@dataclass(frozen=True, slots=True)
class FarmerAction:
    """One action a farmer's payout key signs."""

    action: Action
    pool: str
    farmer: str
    """The farmer's id, or `new` for a join."""
    payout_address: str
    nonce: str
    expires: dt.datetime
    pooler_id: str | None = None
    stake_bps: int | None = None
    amount_stroops: int | None = None

    def text(self) -> str:
        """The exact text to sign."""
        lines = [
            HEADER,
            f"action: {self.action}",
            f"pool: {self.pool}",
            f"farmer: {self.farmer}",
            f"payout address: {self.payout_address}",
        ]
        if self.action == "join":
            lines += [f"pooler: {self.pooler_id}", f"stake bps: {self.stake_bps}"]
        elif self.action == "payout":
            lines.append(f"amount stroops: {self.amount_stroops}")
        lines += [f"nonce: {self.nonce}", f"expires: {self.expires.isoformat()}"]
        return "\n".join(lines)


def _expiry(now: dt.datetime, seconds: int) -> dt.datetime:
    return (now + dt.timedelta(seconds=seconds)).astimezone(dt.UTC).replace(microsecond=0)


def build(
    action: Action,
    *,
    pool: str,
    payout_address: str,
    seconds: int,
    farmer: str = NEW_FARMER,
    pooler_id: str | None = None,
    stake_bps: int | None = None,
    amount_stroops: int | None = None,
    now: dt.datetime | None = None,
) -> FarmerAction:
    """A new action with a fresh nonce, expiring `seconds` from now (fields as checked by
    the caller; `parse` of its text gives it back)."""
    made = FarmerAction(
        action=action,
        pool=pool,
        farmer=farmer,
        payout_address=payout_address,
        nonce=secrets.token_hex(16),
        expires=_expiry(now or dt.datetime.now(dt.UTC), seconds),
        pooler_id=pooler_id,
        stake_bps=stake_bps,
        amount_stroops=amount_stroops,
    )
    return parse(made.text())


def _fields(action: str) -> tuple[str, ...]:
    middle: tuple[str, ...] = ()
    if action == "join":
        middle = ("pooler", "stake bps")
    elif action == "payout":
        middle = ("amount stroops",)
    return ("action", "pool", "farmer", "payout address", *middle, "nonce", "expires")


def _int(name: str, value: str, top: int) -> int:
    if not value.isdigit() or len(value) > 19 or int(value) > top:
        raise ActionError(f"{name} must be a whole number from 0 to {top}")
    return int(value)


def parse(message: str) -> FarmerAction:
    """The action a message states, every field checked (ActionError otherwise)."""
    if len(message) > MESSAGE_MAX or "\x00" in message or "\r" in message:
        raise ActionError("the action message is too long or holds forbidden characters")
    lines = message.split("\n")
    if not lines or lines[0] != HEADER:
        raise ActionError(f"the action message must start with {HEADER!r}")
    action = lines[1].removeprefix("action: ") if len(lines) > 1 else ""
    if action not in ACTIONS:
        raise ActionError(f"the action must be one of {', '.join(ACTIONS)}")
    names = _fields(action)
    if len(lines) != len(names) + 1:
        raise ActionError(f"a {action} message has exactly the lines {', '.join(names)}")
    values: dict[str, str] = {}
    for name, line in zip(names, lines[1:], strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix) or not line[len(prefix) :].strip():
            raise ActionError(f"line {name!r} of the action message is missing or empty")
        values[name] = line[len(prefix) :]
    farmer = values["farmer"]
    if action == "join" and farmer != NEW_FARMER:
        raise ActionError(f"a join names 'farmer: {NEW_FARMER}'")
    if action != "join":
        _uuid("farmer", farmer)
    if not _ACCOUNT.match(values["payout address"]):
        raise ActionError("payout address must be a Stellar account (G...)")
    if not _NONCE.match(values["nonce"]):
        raise ActionError("nonce must be 32 lowercase hex digits")
    try:
        expires = dt.datetime.fromisoformat(values["expires"])
    except ValueError:
        raise ActionError("expires must be an ISO-8601 time") from None
    if expires.tzinfo is None:
        raise ActionError("expires must name its time zone (UTC)")
    return FarmerAction(
        action=action,
        pool=values["pool"],
        farmer=farmer,
        payout_address=values["payout address"],
        nonce=values["nonce"],
        expires=expires,
        pooler_id=_uuid("pooler", values["pooler"]) if action == "join" else None,
        stake_bps=(
            _int("stake bps", values["stake bps"], STAKE_BPS_MAX) if action == "join" else None
        ),
        amount_stroops=(
            _int("amount stroops", values["amount stroops"], INT64_MAX)
            if action == "payout"
            else None
        ),
    )


def _uuid(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ActionError(f"{name} must be an id (UUID)") from None


def signed_by(address: str, message: str, signature: bytes) -> bool:
    """Whether `signature` is `address`'s key's SEP-53 signature of `message`: the one
    SEP-53 check of the project (sign-in, payout address changes, farmer actions)."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Keypair.from_public_key(address).verify_message(message, signature)
    except (BadSignatureError, Ed25519PublicKeyInvalidError, ValueError):
        return False
    return True


def verify(
    message: str,
    signature: bytes,
    *,
    action: Action,
    pool: str,
    farmer: str,
    payout_address: str,
    pooler_id: str | None = None,
    stake_bps: int | None = None,
    amount_stroops: int | None = None,
    now: dt.datetime | None = None,
) -> FarmerAction:
    """The signed action, if it is `action` signed by `payout_address`'s key with every
    field equal to the request's and not expired; ActionError naming the first difference
    otherwise. Recording the nonce's single use is the caller's part."""
    got = parse(message)
    if got.action != action:
        raise ActionError(f"the signed action is {got.action}, not {action}")
    if not signed_by(payout_address, message, signature):
        raise ActionError(
            f"the signature is not {payout_address}'s SEP-53 signature of the action message"
        )
    for name, mine, theirs in (
        ("pool", pool, got.pool),
        ("farmer", farmer, got.farmer),
        ("payout address", payout_address, got.payout_address),
        ("pooler", pooler_id, got.pooler_id),
        ("stake bps", stake_bps, got.stake_bps),
        ("amount stroops", amount_stroops, got.amount_stroops),
    ):
        if mine != theirs:
            raise ActionError(f"the signed {name} is {theirs}, but the request asks for {mine}")
    if (now or dt.datetime.now(dt.UTC)) >= got.expires:
        raise ActionError(
            f"the signed action expired at {got.expires.isoformat()}; ask for a new one"
        )
    return got
