"""The enumerated values of the pool's columns, as the database spells them.

Each is a `StrEnum` whose values are the labels of a PostgreSQL enum type (or, for
`FarmerState` and `BlockStatus`, of a status the queries compute), so a member goes into
a query as it is and a row read back holds the member (`kalepool.db.reads`). Whose
fault a failure is (`fault_party`) is the chain client's `kalepool.chain.Fault`, which
attributes it. What each is on the wire is `pool_service.convert`'s business.
"""

from __future__ import annotations

import enum


class EventStatus(enum.StrEnum):
    """`event_status`: the outcome of a planting, work or harvest attempt."""

    SUCCESS = "success"
    FAILED = "failed"


class FarmerStatus(enum.StrEnum):
    """`farmer_status`: a farmer's membership (`departed` is final)."""

    ACTIVE = "active"
    LEAVING = "leaving"
    DEPARTED = "departed"


class FarmerState(enum.StrEnum):
    """A farmer as the API sees it: its status and, while active, whether it is funded."""

    PENDING_FUNDING = "pending_funding"
    ACTIVE = "active"
    LEAVING = "leaving"
    DEPARTED = "departed"


class PayoutStatus(enum.StrEnum):
    """`payout_status`: a payout's fate (`success` and `failed` are final)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"


class LedgerKind(enum.StrEnum):
    """`ledger_kind`: what moved a farmer's balance."""

    HARVEST = "harvest"
    STAKE = "stake"
    PAYOUT = "payout"
    PAYOUT_REVERSAL = "payout_reversal"
    FEE = "fee"
    COMPENSATION = "compensation"
    ADJUSTMENT = "adjustment"
    DEPOSIT = "deposit"
    POOL_FEE = "pool_fee"
    POOLER_SHARE = "pooler_share"
    SWEEP_REVERSAL = "sweep_reversal"


class AccountKind(enum.StrEnum):
    """What a pool ledger account is (`accounts.kind`)."""

    POOL_FEE = "pool_fee"
    POOLER_SHARE = "pooler_share"


class SweepPart(enum.StrEnum):
    """The part of a harvest's reward a sweep moves (`sweeps.part`): the wallet key's
    prefix too."""

    FEE = "fee"
    SHARE = "share"


class CompensationKind(enum.StrEnum):
    """`compensation_type`: which failure a compensation makes up for."""

    PLANT_FAILURE = "plant_failure"
    WORK_FAILURE = "work_failure"
    HARVEST_FAILURE = "harvest_failure"


class BlockStatus(enum.StrEnum):
    """A block's status as the block queries compute it from its events
    (`pool_service.books.blocks`)."""

    ACTIVE = "active"
    HARVESTING = "harvesting"
    COMPLETED = "completed"
    FAILED = "failed"
