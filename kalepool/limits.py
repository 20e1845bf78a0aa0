"""Rate limits shared by every replica of a service: token buckets in the database.

A bucket is a row of the service's own `rate_buckets` table (pool or wallet schema,
migration 0017), keyed by what is limited (`Limit.kind`) and whom (a pooler id, a
certificate's common name). Each check is one atomic UPSERT that refills the bucket for
the time gone by, takes a token if there is a whole one and says whether it did, so two
replicas behind one address count a caller together and a restart forgets nothing.

A bucket holds at most `per_minute` tokens (the burst) and refills at `per_minute` a
minute. Each refusal counts in `kalepool_rate_limited_total{service,kind}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from kalepool.db.reads import Pool, fetch_value
from kalepool.grpc_server import ResourceExhausted

RATE_LIMITED = Counter(
    "kalepool_rate_limited_total",
    "Calls refused by a rate limit, by gRPC service and kind of limit.",
    ["service", "kind"],
)


@dataclass(frozen=True)
class Limit:
    """What is limited, and to how many calls a minute."""

    kind: str  # 'pooler', 'failed_auth', 'operator', 'wallet_caller'
    per_minute: int


# The bucket refilled up to now, from the row `b` (never more than full; a clock that
# seems to run backwards, another replica's transaction started later, refills nothing).
_REFILLED = (
    "least(%(capacity)s, b.tokens"
    " + greatest(0, extract(epoch FROM now() - b.updated_at)) * %(rate)s)"
)

_TAKE = f"""
INSERT INTO rate_buckets AS b (kind, subject, tokens, updated_at, allowed)
VALUES (%(kind)s, %(subject)s, %(capacity)s - 1, now(), true)
ON CONFLICT (kind, subject) DO UPDATE SET
    tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
    allowed = {_REFILLED} >= 1,
    updated_at = greatest(b.updated_at, now())
RETURNING allowed
"""

_SPENT = f"""
SELECT {_REFILLED} < 1 FROM rate_buckets AS b WHERE kind = %(kind)s AND subject = %(subject)s
"""


class RateLimits:
    """The buckets of one gRPC service (its full name labels the refusals)."""

    def __init__(self, pool: Pool, service: str) -> None:
        self.pool = pool
        self.service = service

    @staticmethod
    def _params(limit: Limit, subject: str) -> dict[str, object]:
        return {
            "kind": limit.kind,
            "subject": subject[:200],
            "capacity": float(limit.per_minute),
            "rate": limit.per_minute / 60.0,
        }

    async def take(self, limit: Limit, subject: str) -> bool:
        """Take a token from `subject`'s bucket: whether there was one (one statement)."""
        allowed = await fetch_value(self.pool, bool, _TAKE, self._params(limit, subject))
        return bool(allowed)

    async def admit(self, limit: Limit, subject: str, who: str) -> None:
        """Take a token, or refuse the call: RESOURCE_EXHAUSTED naming `who`."""
        if not await self.take(limit, subject):
            self.refused(limit)
            raise ResourceExhausted(
                f"{who} exceeded {limit.per_minute} requests a minute; slow down and retry"
            )

    async def spent(self, limit: Limit, subject: str) -> bool:
        """Whether `subject`'s bucket is empty now (a read: takes nothing)."""
        empty = await fetch_value(self.pool, bool, _SPENT, self._params(limit, subject))
        return bool(empty)

    def refused(self, limit: Limit) -> None:
        """Count a call refused by `limit`."""
        RATE_LIMITED.labels(self.service, limit.kind).inc()
