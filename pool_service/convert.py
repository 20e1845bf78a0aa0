"""Rows of the pool's tables as the API's messages. The mappings every part shares
(faults, failure codes, statuses, times) are `kalepool.wire`'s; the ledger's kinds are
the pool's own."""

from __future__ import annotations

from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from kalepool import wire
from kalepool.chain import CurrentBlock, Fault
from kalepool.v1 import common_pb2, pool_pb2, records_pb2
from pool_service.books.certificates import CertificateRow
from pool_service.books.enums import EventStatus, LedgerKind, PayoutStatus
from pool_service.books.farmers import FarmerRow
from pool_service.books.ledger import LedgerRow
from pool_service.books.plantings import PlantingRow
from pool_service.books.poolers import PoolerRow
from pool_service.books.works import WorkRow
from pool_service.contract_watch import ContractState

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
    LedgerKind.POOL_FEE: records_pb2.LEDGER_ENTRY_KIND_POOL_FEE,
    LedgerKind.POOLER_SHARE: records_pb2.LEDGER_ENTRY_KIND_POOLER_SHARE,
    LedgerKind.SWEEP_REVERSAL: records_pb2.LEDGER_ENTRY_KIND_SWEEP_REVERSAL,
}


def block_times(current: CurrentBlock) -> tuple[Timestamp, Timestamp]:
    """(when the current block opened, when the next one may open) of the farm."""
    return wire.epoch(current.timestamp), wire.epoch(current.next_block_at)


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
        last_seen_at=wire.timestamp(row.last_seen_at),
        created_at=wire.timestamp(row.created_at),
    )


def certificate_pb(row: CertificateRow) -> pool_pb2.PoolerCertificate:
    return pool_pb2.PoolerCertificate(
        pooler_id=str(row.pooler_id),
        fingerprint=row.fingerprint,
        subject=row.subject,
        not_after=wire.timestamp(row.not_after),
        added_at=wire.timestamp(row.added_at),
        revoked_at=wire.timestamp(row.revoked_at),
    )


def contract_status_pb(state: ContractState) -> pool_pb2.ContractStatus:
    acked = state.acknowledged
    return pool_pb2.ContractStatus(
        wasm_hash=state.wasm_hash,
        acknowledged_wasm_hash=acked.wasm_hash if acked else "",
        acknowledged_by=acked.acknowledged_by if acked else "",
        acknowledged_at=wire.timestamp(acked.acknowledged_at if acked else None),
        paused=state.paused,
        plants_allowed=state.ok,
        held_since=wire.timestamp(state.held_since),
        message=state.reason(),
        checked_at=wire.timestamp(state.checked_at),
    )


def farmer_status(row: FarmerRow) -> common_pb2.FarmerStatus.ValueType:
    return wire.farmer_status(row.status, funded=row.is_funded)


def farmer_pb(row: FarmerRow) -> pool_pb2.Farmer:
    return pool_pb2.Farmer(
        farmer_id=str(row.id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        payout_address=row.payout_address,
        stake_bps=row.stake_bps,
        status=farmer_status(row),
        balance_stroops=row.current_balance,
        created_at=wire.timestamp(row.created_at),
        funded_at=wire.timestamp(row.funded_at),
        left_at=wire.timestamp(row.left_at),
    )


def failure_pb(
    status: EventStatus | PayoutStatus, fault: Fault, code: str | None, message: str | None
) -> common_pb2.Failure | None:
    """The Failure of a recorded event or payout: None unless it failed."""
    if status not in (EventStatus.FAILED, PayoutStatus.FAILED):
        return None
    return wire.failure(
        wire.failure_code(code),
        fault,
        message or "",
        contract_error=wire.contract_error_number(code),
    )


def payout_tx_ref(
    tx_hash: str | None, status: PayoutStatus, ledger: int | None
) -> common_pb2.TransactionRef:
    """The transfer of a payout (a farmer's or an account's): PENDING, SUCCESS or FAILED
    (expired and rejected transfers are FAILED; the failure says why)."""
    return common_pb2.TransactionRef(
        tx_hash=tx_hash or "",
        status={
            PayoutStatus.PENDING: common_pb2.TX_STATUS_PENDING,
            PayoutStatus.SUCCESS: common_pb2.TX_STATUS_SUCCESS,
            PayoutStatus.FAILED: common_pb2.TX_STATUS_FAILED,
        }[status],
        ledger=ledger or 0,
    )


def tx_ref(
    tx_hash: str | None, status: EventStatus, ledger: int | None
) -> common_pb2.TransactionRef | None:
    """The transaction of a recorded event; None when it has none."""
    if tx_hash is None:
        return None
    return common_pb2.TransactionRef(
        tx_hash=tx_hash, status=wire.tx_status(status), ledger=ledger or 0
    )


def planting_pb(row: PlantingRow) -> records_pb2.PlantingEvent:
    return records_pb2.PlantingEvent(
        planting_id=str(row.id),
        block_index=row.block_index,
        farmer_id=str(row.farmer_id),
        pooler_id=str(row.pooler_id),
        custodial_address=row.custodial_public_key,
        stake_stroops=row.stake_amount,
        status=wire.event_status(row.status),
        transaction=tx_ref(row.tx_hash, row.status, row.ledger),
        plant_ledger=row.ledger or 0 if row.status == EventStatus.SUCCESS else 0,
        failure=failure_pb(row.status, row.fault, row.error_code, row.error_message),
        recorded_at=wire.timestamp(row.created_at),
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
        status=wire.event_status(row.status),
        transaction=tx_ref(row.tx_hash, row.status, row.ledger),
        failure=failure_pb(row.status, row.fault, row.error_code, row.error_message),
        recorded_at=wire.timestamp(row.created_at),
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
        created_at=wire.timestamp(row.created_at),
    )
