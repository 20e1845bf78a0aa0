"""The domain's values as the API's messages and back: one mapping per concept.

Every service, the pooler agent and the command line map through here, so a fault, a
failure, a status or a time reads the same wherever it is shown:

- faults: the chain client's `Fault` (the database's `fault_party`) and `FaultParty`;
- failure codes: the labels stored in `error_code` columns, the chain's own error codes
  (`farm#9`, `txINSUFFICIENT_BALANCE`, `PAYMENT_UNDERFUNDED`) and `FailureCode`;
- statuses: transaction statuses (`TxStatus`), event statuses (`EventStatus`), farmer
  statuses (`FarmerStatus`);
- times: `datetime`, chain times (Unix seconds) and `Timestamp`;
- refusals a client acts on by kind: the contract watch's hold of plants.

Amounts travel as integer stroops; how they are written for people and for classic
operations is `kalepool.amounts`.

Stored labels are taken as plain strings, so a `StrEnum` of them maps as well.
"""

from __future__ import annotations

import datetime as dt
from typing import TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from kalepool.chain.faults import Fault
from kalepool.protocol import AssetError, FarmError
from kalepool.v1 import common_pb2, records_pb2

FaultParty: TypeAlias = common_pb2.FaultParty.ValueType
FailureCode: TypeAlias = common_pb2.FailureCode.ValueType
TxStatus: TypeAlias = common_pb2.TxStatus.ValueType
# The API's event and farmer statuses; `Pb` sets them apart from the pool's stored labels
# of the same names (`pool_service.books.enums.EventStatus`, `FarmerStatus`).
EventStatusPb: TypeAlias = records_pb2.EventStatus.ValueType
FarmerStatusPb: TypeAlias = common_pb2.FarmerStatus.ValueType

# --- times --------------------------------------------------------------------------------


def timestamp(when: dt.datetime | None) -> Timestamp | None:
    """A stored time as a Timestamp; None (the field left unset) for none."""
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def epoch(seconds: float) -> Timestamp:
    """A Unix time (a chain time, or a clock reading) as a Timestamp, to the nanosecond."""
    whole = int(seconds)
    return Timestamp(seconds=whole, nanos=round((seconds - whole) * 1e9))


def now() -> Timestamp:
    """This machine's clock as a Timestamp."""
    return epoch(dt.datetime.now(dt.UTC).timestamp())


def seconds(stamp: Timestamp) -> float:
    """A Timestamp as Unix seconds (0.0 when unset)."""
    return stamp.seconds + stamp.nanos / 1e9


def when(stamp: Timestamp) -> dt.datetime | None:
    """The time of a Timestamp field, in UTC; None when the field is unset (zero)."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=dt.UTC)


# --- faults -------------------------------------------------------------------------------

_FAULT_PARTY: dict[Fault, FaultParty] = {
    Fault.NONE: common_pb2.FAULT_PARTY_NONE,
    Fault.FARMER: common_pb2.FAULT_PARTY_FARMER,
    Fault.POOL: common_pb2.FAULT_PARTY_POOL,
    Fault.POOLER: common_pb2.FAULT_PARTY_POOLER,
    Fault.CHAIN: common_pb2.FAULT_PARTY_CHAIN,
}
_FAULT_OF_PARTY = {party: fault for fault, party in _FAULT_PARTY.items()}


def fault_party(fault: str | None) -> FaultParty:
    """The FaultParty of a fault (a `Fault` or its stored label); UNSPECIFIED for none.
    ValueError for a label that is not a fault."""
    if fault is None:
        return common_pb2.FAULT_PARTY_UNSPECIFIED
    return _FAULT_PARTY[Fault(fault)]


def fault_of_party(party: FaultParty) -> Fault | None:
    """The fault a FaultParty names; None for UNSPECIFIED (or a value this build does not
    know), so the caller decides whose an unattributed failure is."""
    return _FAULT_OF_PARTY.get(party)


# --- failure codes ------------------------------------------------------------------------

_PREFIX = "FAILURE_CODE_"

# The chain's error codes (`TxOutcome.error_code`: `farm#N`, `asset#N`, a transaction or
# operation result code) that name a cause the API has a FailureCode for.
_CHAIN_CODES: dict[str, FailureCode] = {
    f"farm#{FarmError.FARM_PAUSED}": common_pb2.FAILURE_CODE_FARM_PAUSED,
    f"farm#{FarmError.PAIL_EXISTS}": common_pb2.FAILURE_CODE_PAIL_EXISTS,
    f"farm#{FarmError.PAIL_MISSING}": common_pb2.FAILURE_CODE_PAIL_MISSING,
    f"farm#{FarmError.WORK_MISSING}": common_pb2.FAILURE_CODE_WORK_MISSING,
    f"farm#{FarmError.HASH_INVALID}": common_pb2.FAILURE_CODE_HASH_INVALID,
    f"farm#{FarmError.HARVEST_NOT_READY}": common_pb2.FAILURE_CODE_HARVEST_NOT_READY,
    f"asset#{AssetError.INSUFFICIENT_BALANCE}": common_pb2.FAILURE_CODE_INSUFFICIENT_KALE,
    f"asset#{AssetError.TRUSTLINE_MISSING}": common_pb2.FAILURE_CODE_TRUSTLINE_MISSING,
    "txINSUFFICIENT_BALANCE": common_pb2.FAILURE_CODE_INSUFFICIENT_XLM,
    "txNO_ACCOUNT": common_pb2.FAILURE_CODE_ACCOUNT_MISSING,
    "PAYMENT_UNDERFUNDED": common_pb2.FAILURE_CODE_INSUFFICIENT_KALE,
    "PAYMENT_SRC_NO_TRUST": common_pb2.FAILURE_CODE_TRUSTLINE_MISSING,
    "PAYMENT_NO_TRUST": common_pb2.FAILURE_CODE_TRUSTLINE_MISSING,
    "CHANGE_TRUST_LOW_RESERVE": common_pb2.FAILURE_CODE_INSUFFICIENT_XLM,
    # The wallet's own refusal of a plant naming a block that cannot be planted now.
    "block_mismatch": common_pb2.FAILURE_CODE_BLOCK_MISMATCH,
}


def is_contract_code(code: str | None) -> bool:
    """Whether a stored code is a contract's `Error(Contract, #N)` (`farm#N`, `asset#N`)."""
    return bool(code) and "#" in (code or "")


def failure_label(code: FailureCode) -> str:
    """The stored label of a FailureCode: its enum name without the prefix
    (`PAIL_MISSING`), what the pool's `error_code` columns hold."""
    return common_pb2.FailureCode.Name(code).removeprefix(_PREFIX)


def failure_code(
    label: str | None, *, unknown: FailureCode = common_pb2.FAILURE_CODE_INTERNAL
) -> FailureCode:
    """The FailureCode of a stored label (`failure_label`'s form); UNSPECIFIED for none,
    CONTRACT_ERROR for a contract's `farm#N` / `asset#N`, `unknown` for anything else."""
    if not label:
        return common_pb2.FAILURE_CODE_UNSPECIFIED
    try:
        return common_pb2.FailureCode.Value(f"{_PREFIX}{label}")
    except ValueError:
        return common_pb2.FAILURE_CODE_CONTRACT_ERROR if is_contract_code(label) else unknown


def chain_failure_code(error_code: str | None, *, expired: bool = False) -> FailureCode:
    """The FailureCode of a chain's error code (`TxOutcome.error_code`, what the wallet
    stores): TX_EXPIRED for a transaction whose time bound passed, the named cause where
    the API has one, CONTRACT_ERROR for another contract error, else TX_FAILED."""
    if expired:
        return common_pb2.FAILURE_CODE_TX_EXPIRED
    if error_code in _CHAIN_CODES:
        return _CHAIN_CODES[error_code]
    if is_contract_code(error_code):
        return common_pb2.FAILURE_CODE_CONTRACT_ERROR
    return common_pb2.FAILURE_CODE_TX_FAILED


def contract_error_number(code: str | None) -> int:
    """N of a stored `farm#N` / `asset#N` code, else 0 (the Failure's `contract_error`)."""
    if is_contract_code(code):
        tail = (code or "").rpartition("#")[2]
        if tail.isdigit():
            return int(tail)
    return 0


def failure(
    code: FailureCode, fault: str | None, message: str, *, contract_error: int = 0
) -> common_pb2.Failure:
    """A Failure message: what failed, whose fault it is (a `Fault` or its label)."""
    return common_pb2.Failure(
        code=code, fault=fault_party(fault), contract_error=contract_error, message=message
    )


# --- statuses and kinds -------------------------------------------------------------------

# A transaction's stored status (the wallet's `transaction_status`, or an event's
# `success` / `failed`) as the API's TxStatus. `failed` is REJECTED when nothing was
# applied (`tx_status(..., rejected=True)`).
_TX_STATUS: dict[str, TxStatus] = {
    "prepared": common_pb2.TX_STATUS_PENDING,
    "submitted": common_pb2.TX_STATUS_PENDING,
    "pending": common_pb2.TX_STATUS_PENDING,
    "success": common_pb2.TX_STATUS_SUCCESS,
    "failed": common_pb2.TX_STATUS_FAILED,
    "expired": common_pb2.TX_STATUS_EXPIRED,
}


def tx_status(status: str, *, rejected: bool = False) -> TxStatus:
    """The TxStatus of a stored transaction status; a failure the chain never applied
    (refused before or at submission) is REJECTED."""
    got = _TX_STATUS[status]
    if got == common_pb2.TX_STATUS_FAILED and rejected:
        return common_pb2.TX_STATUS_REJECTED
    return got


_EVENT_STATUS: dict[str, EventStatusPb] = {
    "success": records_pb2.EVENT_STATUS_SUCCEEDED,
    "failed": records_pb2.EVENT_STATUS_FAILED,
    "pending": records_pb2.EVENT_STATUS_PENDING,
}


def event_status(status: str) -> EventStatusPb:
    """The EventStatus of an event's stored status (`success`, `failed`, `pending`)."""
    return _EVENT_STATUS[status]


_FARMER_STATUS: dict[str, FarmerStatusPb] = {
    "pending_funding": common_pb2.FARMER_STATUS_PENDING_FUNDING,
    "active": common_pb2.FARMER_STATUS_ACTIVE,
    "leaving": common_pb2.FARMER_STATUS_LEAVING,
    "departed": common_pb2.FARMER_STATUS_DEPARTED,
}
_FARMER_STATUS_LABEL = {status: label for label, status in _FARMER_STATUS.items()}
FARMER_STATUS_LABELS = tuple(_FARMER_STATUS)
"""The farmer statuses by name: `pending_funding`, `active`, `leaving`, `departed`."""


def farmer_status(status: str, *, funded: bool) -> FarmerStatusPb:
    """The FarmerStatus of a stored farmer (`farmer_status`, and whether its funding was
    confirmed): an active farmer not funded yet is PENDING_FUNDING."""
    if status == "active" and not funded:
        return common_pb2.FARMER_STATUS_PENDING_FUNDING
    return _FARMER_STATUS[status]


def farmer_status_label(status: FarmerStatusPb) -> str | None:
    """The name of a FarmerStatus (`pending_funding`, ...); None for UNSPECIFIED or a
    value this build does not know."""
    return _FARMER_STATUS_LABEL.get(status)


def farmer_status_of_label(label: str) -> FarmerStatusPb:
    """The FarmerStatus a name says (`pending_funding` or `pending-funding`, ...);
    ValueError for another name."""
    try:
        return _FARMER_STATUS[label.replace("-", "_")]
    except KeyError:
        raise ValueError(f"{label!r} is not a farmer status") from None


# --- refusals a client tells apart --------------------------------------------------------

# How RequestPlant's FAILED_PRECONDITION begins while the contract watch holds plants (the
# farm's code changed and is not acknowledged, or the farm is paused): a hold lasts until
# an operator or the homesteader acts, not until the next block, so a pooler agent asks
# again slowly instead of every few seconds.
CONTRACT_HOLD_PREFIX = "contract watch: "


def is_contract_hold(detail: str | None) -> bool:
    """Whether a refusal's message says the contract watch holds plants."""
    return bool(detail) and str(detail).startswith(CONTRACT_HOLD_PREFIX)
