"""Sign-in with the payout key: one-time challenges, verified SEP-53 signatures, sessions.

A farmer asks for a challenge for its payout address (G...); the server makes a text
naming that address, a random nonce and an expiry, and keeps it. The farmer's wallet
signs it as a SEP-53 "Stellar Signed Message" (Freighter's signMessage; stellar-sdk's
`Keypair.sign_message`), and the server verifies the signature with the address's
public key, as the wallet service verifies a payout address change. A challenge is
answered once: any answer, right or wrong, uses it up, so a captured signature cannot
be replayed. A good answer opens a session: a random id (the HttpOnly cookie) and a
CSRF token bound to it, which every state-changing request must send in a header.

Everything is kept in this process's memory: a restart signs everyone out, and
replicas behind one address need sticky sessions (docs/farmers.md). Nothing here is a
secret of the pool: the page never asks for, nor holds, a secret key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kalepool.farmer_actions import signed_by

MAX_CHALLENGES = 10_000
"""Open challenges kept at once; the oldest goes first (each is rate limited anyway)."""
MAX_SESSIONS = 100_000


class SignInError(Exception):
    """A sign-in refused; the message says why, in words a person understands."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """A text for the payout key to sign, open until `expires_at`."""

    challenge_id: str
    address: str
    message: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in payout address."""

    session_id: str
    address: str
    csrf_token: str
    expires_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def decode_signature(text: str) -> bytes:
    """A signature as a wallet gives it: base64 of 64 bytes (SignInError otherwise)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SignInError("signature must be base64 (what a Stellar wallet gives)") from None
    if len(raw) != 64:
        raise SignInError(f"signature must be 64 bytes (base64), got {len(raw)}")
    return raw


class SignIn:
    """The open challenges and sessions of this web process."""

    def __init__(
        self,
        challenge_seconds: int,
        session_seconds: int,
        *,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.challenge_seconds = challenge_seconds
        self.session_seconds = session_seconds
        self.clock = clock
        self._challenges: OrderedDict[str, Challenge] = OrderedDict()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @property
    def open_challenges(self) -> int:
        return len(self._challenges)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def challenge(self, address: str) -> Challenge:
        """A new challenge for `address` (a checked G... account)."""
        expires = self.clock() + dt.timedelta(seconds=self.challenge_seconds)
        challenge_id = secrets.token_urlsafe(24)
        message = (
            "kale-pool sign-in\n"
            f"address: {address}\n"
            f"nonce: {secrets.token_hex(16)}\n"
            f"expires: {expires.replace(microsecond=0).isoformat()}"
        )
        made = Challenge(challenge_id, address, message, expires)
        self._challenges[challenge_id] = made
        while len(self._challenges) > MAX_CHALLENGES:
            self._challenges.popitem(last=False)
        return made

    def address_of(self, challenge_id: str) -> str | None:
        """The address an open challenge is for (None when unknown)."""
        found = self._challenges.get(challenge_id)
        return found.address if found else None

    def answer(self, challenge_id: str, signature: bytes) -> Session:
        """Open a session for the challenge's address if `signature` is its key's SEP-53
        signature of the challenge. The challenge is used up whatever the outcome."""
        challenge = self._challenges.pop(challenge_id, None)
        if challenge is None:
            raise SignInError("unknown or already used challenge; ask for a new one")
        if self.clock() >= challenge.expires_at:
            raise SignInError("the challenge has expired; ask for a new one")
        if not signed_by(challenge.address, challenge.message, signature):
            raise SignInError(
                f"the signature is not {challenge.address}'s signature of the challenge"
            )
        return self.open(challenge.address)

    def open(self, address: str) -> Session:
        """A new session for `address`, whose key has just been proven: by a signed
        sign-in challenge, or by a signed join the pool took (POST /api/join)."""
        session = Session(
            session_id=secrets.token_urlsafe(32),
            address=address,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self.clock() + dt.timedelta(seconds=self.session_seconds),
        )
        self._sessions[session.session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def session(self, session_id: str) -> Session | None:
        """The live session of this id (an expired one is dropped)."""
        found = self._sessions.get(session_id)
        if found is None:
            return None
        if self.clock() >= found.expires_at:
            del self._sessions[session_id]
            return None
        return found

    def end(self, session_id: str) -> None:
        """Sign out."""
        self._sessions.pop(session_id, None)


def csrf_matches(session: Session, token: str) -> bool:
    """Whether `token` is the session's CSRF token (compared in constant time)."""
    return hmac.compare_digest(session.csrf_token.encode(), token.encode())
