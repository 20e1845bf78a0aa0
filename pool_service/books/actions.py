"""Farmer actions' nonces (`action_nonces`, append-only) and a farmer's blocks as the
books hold them (plantings, works, harvests, compensations and sweeps by block)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from uuid import UUID

from kalepool.db.reads import Pool, fetch_all, fetch_value


class ActionNonceStore:
    """Queries of `action_nonces`: each signed farmer action is taken once."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def use(
        self,
        nonce: str,
        action: str,
        payout_address: str,
        farmer_id: UUID | None,
        expires_at: dt.datetime,
    ) -> bool:
        """Record the nonce as used: False when it was used before (a replay)."""
        inserted = await fetch_value(
            self.pool,
            str,
            "INSERT INTO action_nonces (nonce, action, payout_address, farmer_id, expires_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (nonce) DO NOTHING RETURNING nonce",
            (nonce, action, payout_address, farmer_id, expires_at),
        )
        return inserted is not None


@dataclass(frozen=True)
class FarmerBlockRow:
    """One block of one farmer: outcomes and amounts summed from the books."""

    block_index: int
    planted: bool
    stake: int
    worked: bool
    zeros: int
    harvested: bool
    reward: int
    compensation: int
    fees: int
    failure: str | None


# Each event table is read for the farmer's blocks once; the newest failure of the block
# (a plant, work or harvest) is its `failure`. Fees: the sweeps (the pool's fee and the
# pooler's share) of the block's harvests that did not fail.
_FARMER_BLOCKS = """
WITH b AS (
    SELECT block_index FROM plantings WHERE farmer_id = %(f)s
    UNION SELECT block_index FROM works WHERE farmer_id = %(f)s
    UNION SELECT block_index FROM harvests WHERE farmer_id = %(f)s
    UNION SELECT block_index FROM pooler_compensations WHERE farmer_id = %(f)s
), page AS (
    SELECT block_index FROM b
    WHERE %(before)s::bigint IS NULL OR block_index < %(before)s::bigint
    ORDER BY block_index DESC LIMIT %(limit)s
), failures AS (
    SELECT block_index, error_message, created_at FROM plantings
     WHERE farmer_id = %(f)s AND status = 'failed'
    UNION ALL SELECT block_index, error_message, created_at FROM works
     WHERE farmer_id = %(f)s AND status = 'failed'
    UNION ALL SELECT block_index, error_message, created_at FROM harvests
     WHERE farmer_id = %(f)s AND status = 'failed'
)
SELECT page.block_index,
    coalesce(p.n > 0, false) AS planted, coalesce(p.stake, 0)::bigint AS stake,
    coalesce(w.n > 0, false) AS worked, coalesce(w.zeros, 0)::integer AS zeros,
    coalesce(h.n > 0, false) AS harvested, coalesce(h.reward, 0)::bigint AS reward,
    coalesce(c.amount, 0)::bigint AS compensation, coalesce(s.amount, 0)::bigint AS fees,
    (SELECT error_message FROM failures x WHERE x.block_index = page.block_index
      ORDER BY x.created_at DESC LIMIT 1) AS failure
FROM page
LEFT JOIN (SELECT block_index, count(*) AS n, sum(stake_amount) AS stake FROM plantings
           WHERE farmer_id = %(f)s AND status = 'success' GROUP BY block_index) p
  ON p.block_index = page.block_index
LEFT JOIN (SELECT block_index, count(*) AS n, max(zeros) AS zeros FROM works
           WHERE farmer_id = %(f)s AND status = 'success' GROUP BY block_index) w
  ON w.block_index = page.block_index
LEFT JOIN (SELECT block_index, count(*) AS n, sum(reward_amount) AS reward FROM harvests
           WHERE farmer_id = %(f)s AND status = 'success' GROUP BY block_index) h
  ON h.block_index = page.block_index
LEFT JOIN (SELECT block_index, sum(amount) AS amount FROM pooler_compensations
           WHERE farmer_id = %(f)s GROUP BY block_index) c
  ON c.block_index = page.block_index
LEFT JOIN (SELECT hv.block_index, sum(sw.amount) AS amount FROM sweeps sw
           JOIN harvests hv ON hv.id = sw.harvest_id
           WHERE sw.farmer_id = %(f)s AND sw.status <> 'failed' GROUP BY hv.block_index) s
  ON s.block_index = page.block_index
ORDER BY page.block_index DESC
"""


async def farmer_blocks(
    pool: Pool, farmer_id: UUID, before: int | None, limit: int
) -> list[FarmerBlockRow]:
    """The farmer's blocks, newest first, below block `before` (None: from the newest)."""
    return await fetch_all(
        pool,
        FarmerBlockRow,
        _FARMER_BLOCKS,
        {"f": farmer_id, "before": before, "limit": limit},
    )
