"""Whose fault a failure is: the farmer, the pool backend, the pooler, or the chain.

The answer decides compensation (docs/pool.md, "Compensations"): a farmer without
funds forfeits the block; a plant the backend botched or a work the pooler missed is
owed to the farmer; the chain failing (RPC down, network not including transactions)
is nobody's debt. The values are the database's `fault_party`.
"""

from __future__ import annotations

from enum import StrEnum

from kalepool.chain.calls import TxKind
from kalepool.chain.client import is_transient
from kalepool.chain.errors import (
    AccountNotFoundError,
    ChainUnavailableError,
    ContractError,
    ContractKind,
)
from kalepool.chain.submit import TxOutcome, TxStatus
from kalepool.protocol import AssetError, FarmError


class Fault(StrEnum):
    """Who is to blame (the database's `fault_party`)."""

    NONE = "none"
    FARMER = "farmer"  # not funded, no balance, destination not set up
    POOL = "pool"  # the backend built, signed or timed the transaction wrongly
    POOLER = "pooler"  # work missing, late or wrong
    CHAIN = "chain"  # RPC or network: unreachable, stalled, not including transactions


# Who builds and signs each kind of transaction: a malformed or mistimed one is theirs.
_BUILDER = {
    TxKind.PLANT: Fault.POOL,
    TxKind.WORK: Fault.POOLER,
    TxKind.HARVEST: Fault.POOL,
    TxKind.TRANSFER: Fault.POOL,
    TxKind.TRUSTLINE: Fault.POOL,
    TxKind.CLOSE: Fault.POOL,
}

# Who pays the fee by default: custodial farmer accounts pay for their own plants and
# account chores, poolers pay for work from their channel accounts, the pool for harvests.
_PAYER = {
    TxKind.PLANT: Fault.FARMER,
    TxKind.WORK: Fault.POOLER,
    TxKind.HARVEST: Fault.POOL,
    TxKind.TRANSFER: Fault.FARMER,
    TxKind.TRUSTLINE: Fault.FARMER,
    TxKind.CLOSE: Fault.FARMER,
}

# Transaction-level codes that say the fee account cannot pay.
_PAYER_CODES = {"txINSUFFICIENT_BALANCE", "txNO_ACCOUNT"}
_CHAIN_CODES = {"txINTERNAL_ERROR"}
# Operation codes that say the farmer's side is not set up or not funded.
_FARMER_OPS = {
    "CHANGE_TRUST_LOW_RESERVE",
    "PAYMENT_NO_DESTINATION",
    "PAYMENT_NO_TRUST",
    "PAYMENT_NOT_AUTHORIZED",
    "PAYMENT_LINE_FULL",
    "ACCOUNT_MERGE_NO_ACCOUNT",
}

_FARM_CHAIN = {
    FarmError.HOMESTEAD_MISSING,
    FarmError.FARM_BLOCK_MISSING,
    FarmError.FARM_PAUSED,
    FarmError.BLOCK_INVALID,
}
_FARM_BY_CALL: dict[TxKind, dict[FarmError, Fault]] = {
    TxKind.WORK: {
        # Late (the next block opened, the pail is gone for work), wrong hash, same ledger
        # as the plant, or a resubmission without more zeros: all the pooler's doing.
        FarmError.PAIL_MISSING: Fault.POOLER,
        FarmError.HASH_INVALID: Fault.POOLER,
        FarmError.GAP_COUNT_TOO_LOW: Fault.POOLER,
        FarmError.ZERO_COUNT_TOO_LOW: Fault.POOLER,
        FarmError.BLOCK_MISSING: Fault.CHAIN,
    },
    TxKind.HARVEST: {
        # No work landed on the pail: the pooler's; too early or too late: the pool's.
        FarmError.WORK_MISSING: Fault.POOLER,
        FarmError.HARVEST_NOT_READY: Fault.POOL,
        FarmError.PAIL_MISSING: Fault.POOL,
        FarmError.BLOCK_MISSING: Fault.POOL,
    },
}


def fault_of_contract_error(kind: TxKind, error: ContractError) -> Fault:
    """Blame for `Error(Contract, #N)` in a call of this kind, by the contract that raised it."""
    builder = _BUILDER[kind]
    if error.kind is ContractKind.ASSET:
        asset = error.asset_error
        if asset is AssetError.INSUFFICIENT_BALANCE and kind is TxKind.PLANT:
            return Fault.FARMER  # the stake is more than the farmer holds
        if asset is AssetError.BALANCE_DEAUTHORIZED:
            return Fault.CHAIN  # the issuer froze the line: neither party's doing
        return builder
    farm = error.farm_error
    if error.kind is not ContractKind.FARM or farm is None:
        return builder
    if farm in _FARM_CHAIN:
        return Fault.CHAIN
    return _FARM_BY_CALL.get(kind, {}).get(farm, builder)


def fault_of_codes(
    kind: TxKind, result_code: str | None, operation_code: str | None, payer: Fault
) -> Fault:
    """Blame for a transaction or operation result code."""
    if result_code in _PAYER_CODES:
        return payer
    if result_code in _CHAIN_CODES:
        return Fault.CHAIN
    if operation_code in _FARMER_OPS:
        return Fault.FARMER
    return _BUILDER[kind]


def attribute_fault(
    kind: TxKind, failure: TxOutcome | BaseException, *, payer: Fault | None = None
) -> Fault:
    """Whose fault a failed chain step is.

    `failure` is the outcome of a submission or what building or submitting raised.
    `payer` is whoever's account paid the fee, when not the default for this kind
    (e.g. the pool paying a farmer's plant).
    """
    payer = payer or _PAYER[kind]
    if isinstance(failure, TxOutcome):
        if failure.status is TxStatus.SUCCESS:
            return Fault.NONE
        if failure.contract_error is not None:
            return fault_of_contract_error(kind, failure.contract_error)
        if failure.status in (TxStatus.EXPIRED, TxStatus.UNKNOWN) and failure.result_code is None:
            return Fault.CHAIN  # the network did not include it in time
        return fault_of_codes(kind, failure.result_code, failure.operation_code, payer)
    if isinstance(failure, ContractError):
        return fault_of_contract_error(kind, failure)
    if isinstance(failure, AccountNotFoundError):
        return payer
    if isinstance(failure, ChainUnavailableError) or is_transient(failure):
        return Fault.CHAIN
    # A simulation refused for auth, storage or budget reasons, or bad input: the builder's.
    return _BUILDER[kind]
