"""The farmer actions the page has offered for signing (join, payout, leave): each a
message built by `kalepool.farmer_actions`, kept here until the farmer's wallet signs it.

An action challenge is answered once (any answer uses it up, as a sign-in challenge is).
The pool, not this process, judges the signature: it verifies it with the payout
address's key, compares every field with the request, refuses an expired message and a
nonce used before. What is kept here only ties the answer back to the request the
message was made for. In memory: a restart drops open challenges (ask for a new one).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kalepool.farmer_actions import FarmerAction

MAX_OPEN = 10_000
"""Open action challenges kept at once; the oldest goes first (each is rate limited)."""


@dataclass(frozen=True, slots=True)
class Offered:
    """An action message offered for signing."""

    challenge_id: str
    action: FarmerAction
    message: str


class ActionChallenges:
    """The open action challenges of this web process."""

    def __init__(self, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._open: OrderedDict[str, Offered] = OrderedDict()

    @property
    def open(self) -> int:
        return len(self._open)

    def offer(self, action: FarmerAction) -> Offered:
        """Keep `action` for signing under a new challenge id."""
        made = Offered(secrets.token_urlsafe(24), action, action.text())
        self._open[made.challenge_id] = made
        while len(self._open) > MAX_OPEN:
            self._open.popitem(last=False)
        return made

    def peek(self, challenge_id: str) -> Offered | None:
        return self._open.get(challenge_id)

    def take(self, challenge_id: str) -> Offered | None:
        """The open challenge, used up (None when unknown or already answered)."""
        return self._open.pop(challenge_id, None)
