"""Rows of the pool's tables as the API's messages, and the enums between the two."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from kalepool.chain import CurrentBlock, Fault
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from pool_service.books.enums import EventStatus, FarmerState, FarmerStatus, LedgerKind
from pool_service.books.farmers import FarmerRow
from pool_service.books.ledger import LedgerRow
from pool_service.books.plantings import PlantingRow
from pool_service.books.poolers import PoolerRow
from pool_service.books.works import WorkRow

FAULT_TO_PROTO = {
    Fault.NONE: common_pb2.FAULT_PARTY_NONE,
    Fault.FARMER: common_pb2.FAULT_PARTY_FARMER,
    Fault.POOL: common_pb2.FAULT_PARTY_POOL,
    Fault.POOLER: common_pb2.FAULT_PARTY_POOLER,
    Fault.CHAIN: common_pb2.FAULT_PARTY_CHAIN,
}
FAULT_FROM_PROTO = {v: k for k, v in FAULT_TO_PROTO.items()}

EVENT_STATUS = {
    EventStatus.SUCCESS: records_pb2.EVENT_STATUS_SUCCEEDED,
    EventStatus.FAILED: records_pb2.EVENT_STATUS_FAILED,
}

# The ledger's kinds as the API names them, each by its own kind. The database keeps a
# harvest as one entry (reward + stake), shown as REWARD.
LEDGER_KIND = {
    LedgerKind.HARVEST: records_pb2.LEDGER_ENTRY_KIND_REWARD,
    LedgerKind.STAKE: records_pb2.LEDGER_ENTRY_KIND_STAKE,
    LedgerKind.PAYOUT: records_pb2.LEDGER_ENTRY_KIND_PAYOUT,
    LedgerKind.PAYOUT_REVERSAL: records_pb2.LEDGER_ENTRY_KIND_PAYOUT_REVERSAL,
    LedgerKind.COMPENSATION: records_pb2.LEDGER_ENTRY_KIND_COMPENSATION,
    LedgerKind.FEE: records_pb2.LEDGER_ENTRY_KIND_FEE,
    LedgerKind.ADJUSTMENT: records_pb2.LEDGER_ENTRY_KIND_ADJUSTMENT,
    LedgerKind.DEPOSIT: records_pb2.LEDGER_ENTRY_KIND_DEPOSIT,
}


def timestamp(when: dt.datetime | None) -> Timestamp | None:
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def epoch(seconds: int) -> Timestamp:
    """A chain time (Unix seconds) as a Timestamp."""
    stamp = Timestamp()
    stamp.FromSeconds(seconds)
    return stamp


def block_times(current: CurrentBlock) -> tuple[Timestamp, Timestamp]:
    """(when the current block opened, when the next one may open) of the farm."""
    return epoch(current.timestamp), epoch(current.next_block_at)


def failure_code_name(code: common_pb2.FailureCode.ValueType) -> str:
    """The stored error code of a FailureCode (its enum name without the prefix)."""
    return common_pb2.FailureCode.Name(code).removeprefix("FAILURE_CODE_")


def failure_code_value(name: str | None) -> common_pb2.FailureCode.ValueType:
    """The FailureCode of a stored error code; INTERNAL for one the enum does not know."""
    if not name:
        return common_pb2.FAILURE_CODE_UNSPECIFIED
    try:
        return common_pb2.FailureCode.Value(f"FAILURE_CODE_{name}")
    except ValueError:
        return (
            common_pb2.FAILURE_CODE_CONTRACT_ERROR
            if "#" in name
            else common_pb2.FAILURE_CODE_INTERNAL
        )


def pooler_pb(row: PoolerRow) -> pool_pb2.Pooler:
    return pool_pb2.Pooler(
        pooler_id=str(row.id),
        name=row.name,
        public_key=row.public_key,
        max_farmers=row.max_farmers,
        current_farmers=row.current_farmers,
        status=common_pb2.POOLER_STATUS_ACTIVE
        if row.is_active
        else common_pb2.POOLER_STATUS_DISABLED,
        last_seen_at=timestamp(row.last_seen_at),
        created_at=timestamp(row.created_at),
    )


def farmer_status(row: FarmerRow) -> common_pb2.FarmerStatus.ValueType:
    if row.status == FarmerStatus.ACTIVE:
        return (
            common_pb2.FARMER_STATUS_ACTIVE
            if row.is_funded
            else common_pb2.FARMER_STATUS_PENDING_FUNDING
        )
    if row.status == FarmerStatus.LEAVING:
        return common_pb2.FARMER_STATUS_LEAVING
    return common_pb2.FARMER_STATUS_DEPARTED


FARMER_STATUS_KEY = {
    common_pb2.FARMER_STATUS_PENDING_FUNDING: FarmerState.PENDING_FUNDING,
    common_pb2.FARMER_STATUS_ACTIVE: FarmerState.ACTIVE,
    common_pb2.FARMER_STATUS_LEAVING: FarmerState.LEAVING,
    common_pb2.FARMER_STATUS_DEPARTED: FarmerState.DEPARTED,
}


def farmer_pb(row: FarmerRow) -> pool_pb2.Farmer:
    return pool_pb2.Farmer(
        farmer_id=str(row.id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        payout_address=row.payout_address,
        stake_bps=row.stake_bps,
        status=farmer_status(row),
        balance_stroops=row.current_balance,
        created_at=timestamp(row.created_at),
    )


def _failure(
    status: EventStatus, fault: Fault, code: str | None, message: str | None
) -> common_pb2.Failure | None:
    if status != EventStatus.FAILED:
        return None
    return common_pb2.Failure(
        code=failure_code_value(code),
        fault=FAULT_TO_PROTO.get(fault, common_pb2.FAULT_PARTY_UNSPECIFIED),
        contract_error=_contract_error(code),
        message=message or "",
    )


def _contract_error(code: str | None) -> int:
    """N of a stored 'farm#N' / 'asset#N' code, else 0."""
    if code and "#" in code:
        tail = code.rpartition("#")[2]
        if tail.isdigit():
            return int(tail)
    return 0


def _tx(
    tx_hash: str | None, status: EventStatus, ledger: int | None
) -> common_pb2.TransactionRef | None:
    if tx_hash is None:
        return None
    return common_pb2.TransactionRef(
        tx_hash=tx_hash,
        status=common_pb2.TX_STATUS_SUCCESS
        if status == EventStatus.SUCCESS
        else common_pb2.TX_STATUS_FAILED,
        ledger=ledger or 0,
    )


def planting_pb(row: PlantingRow) -> records_pb2.PlantingEvent:
    return records_pb2.PlantingEvent(
        planting_id=str(row.id),
        block_index=row.block_index,
        farmer_id=str(row.farmer_id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        stake_stroops=row.stake_amount,
        status=EVENT_STATUS[row.status],
        transaction=_tx(row.tx_hash, row.status, row.ledger),
        plant_ledger=row.ledger or 0 if row.status == EventStatus.SUCCESS else 0,
        failure=_failure(row.status, row.fault, row.error_code, row.error_message),
        recorded_at=timestamp(row.created_at),
    )


def work_pb(row: WorkRow) -> records_pb2.WorkEvent:
    return records_pb2.WorkEvent(
        work_id=str(row.id),
        block_index=row.block_index,
        farmer_id=str(row.farmer_id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        nonce=int(Decimal(row.nonce)) if row.nonce is not None else 0,
        hash=row.hash or b"",
        zeros=row.zeros or 0,
        gap=row.gap or 0,
        status=EVENT_STATUS[row.status],
        transaction=_tx(row.tx_hash, row.status, row.ledger),
        failure=_failure(row.status, row.fault, row.error_code, row.error_message),
        recorded_at=timestamp(row.created_at),
        observed_on_chain=row.observed_on_chain,
    )


def ledger_pb(row: LedgerRow) -> records_pb2.LedgerEntry:
    return records_pb2.LedgerEntry(
        entry_id=str(row.id),
        farmer_id=str(row.farmer_id),
        kind=LEDGER_KIND.get(row.kind, records_pb2.LEDGER_ENTRY_KIND_UNSPECIFIED),
        amount_stroops=row.amount,
        balance_after_stroops=row.balance_after,
        block_index=row.block_index or 0,
        tx_hash=row.tx_hash or "",
        source_id=row.source_id or "",
        created_at=timestamp(row.created_at),
    )
