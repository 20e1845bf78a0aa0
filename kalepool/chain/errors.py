"""What can go wrong talking to the chain, typed.

The farm contract and the KALE asset contract (SAC) both fail with
`Error(Contract, #N)` in one numbering space: #10 is `WorkMissing` from the farm
but "insufficient balance" from the asset contract, #13 `HashInvalid` or
"missing trustline". A :class:`ContractError` therefore always carries the
contract that raised it, and its name is looked up in that contract's table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from stellar_sdk import StrKey
from stellar_sdk import xdr as stellar_xdr

from kalepool.protocol import AssetError, FarmError


class ContractKind(StrEnum):
    """Which contract raised an error."""

    FARM = "farm"
    ASSET = "asset"
    OTHER = "other"


class ChainError(Exception):
    """Base of every error the chain client raises."""


class ChainUnavailableError(ChainError):
    """The RPC server could not be reached or kept failing (transport, 5xx, stalled chain)."""


class AccountNotFoundError(ChainError):
    """An account the transaction needs does not exist (never funded, or merged)."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"account {account_id} does not exist")


class ChainDataError(ChainError):
    """The chain answered with data of an unexpected shape (wrong contract, wrong network)."""


class NotAFarmCallError(ChainDataError):
    """A transaction read back by hash is something else than one plant, work or harvest
    call of the farm (a payment, another contract, other arguments): a fact about the
    transaction, where a plain ChainDataError means the answer itself could not be read."""


class EventsOutOfRangeError(ChainError):
    """getEvents was asked to start outside the ledgers the server keeps.

    Below `oldest_ledger`, the server has already dropped events that were asked for; above
    `latest_ledger`, it has not seen that ledger yet.
    """

    def __init__(self, start_ledger: int, oldest_ledger: int, latest_ledger: int) -> None:
        self.start_ledger = start_ledger
        self.oldest_ledger = oldest_ledger
        self.latest_ledger = latest_ledger
        super().__init__(
            f"events from ledger {start_ledger} are outside the server's window "
            f"(ledgers {oldest_ledger} to {latest_ledger})"
        )


class SimulationError(ChainError):
    """Simulation failed with something other than a contract error (auth, storage, budget)."""

    def __init__(self, function: str, host_error: str, detail: str = "") -> None:
        self.function = function
        self.host_error = host_error
        self.detail = detail
        text = f"{function}: simulation failed with {host_error}"
        super().__init__(f"{text}: {detail}" if detail else text)


class ContractError(ChainError):
    """`Error(Contract, #N)`: the number, the contract that raised it, and its name."""

    def __init__(self, number: int, contract_id: str, kind: ContractKind, function: str) -> None:
        self.number = number
        self.contract_id = contract_id
        self.kind = kind
        self.function = function
        self.name = contract_error_name(kind, number)
        super().__init__(
            f"{function}: {kind.value} contract error #{number} ({self.name}) raised by "
            f"{contract_id}"
        )

    @property
    def code(self) -> str:
        """`farm#N` / `asset#N`: the error as an `error_code` column stores it."""
        return f"{self.kind.value}#{self.number}"

    @property
    def farm_error(self) -> FarmError | None:
        """The farm's error, when the farm raised it."""
        if self.kind is ContractKind.FARM and self.number in FarmError._value2member_map_:
            return FarmError(self.number)
        return None

    @property
    def asset_error(self) -> AssetError | None:
        """The asset contract's error, when the asset contract raised it."""
        if self.kind is ContractKind.ASSET and self.number in AssetError._value2member_map_:
            return AssetError(self.number)
        return None

    def __reduce__(self) -> tuple[type[ContractError], tuple[int, str, ContractKind, str]]:
        return (ContractError, (self.number, self.contract_id, self.kind, self.function))


def contract_error_name(kind: ContractKind, number: int) -> str:
    """The error's name in the raising contract's table, or `#N` when it has none."""
    if kind is ContractKind.FARM and number in FarmError._value2member_map_:
        return FarmError(number).contract_name
    if kind is ContractKind.ASSET and number in AssetError._value2member_map_:
        return AssetError(number).contract_name
    return f"#{number}"


def make_contract_error(
    number: int, contract_id: str, function: str, *, farm_id: str, asset_id: str
) -> ContractError:
    """A ContractError with its contract classified as the farm, the asset contract or other."""
    if contract_id == farm_id:
        kind = ContractKind.FARM
    elif contract_id == asset_id:
        kind = ContractKind.ASSET
    else:
        kind = ContractKind.OTHER
    return ContractError(number, contract_id, kind, function)


# --- reading errors out of what the RPC returns ------------------------------------------

_HOST_ERROR = re.compile(r"HostError: (Error\([A-Za-z]+, [#A-Za-z0-9]+\))")
_CONTRACT_NUMBER = re.compile(r"Error\(Contract, #(\d+)\)")
_RAISER_LINE = re.compile(
    r"contract:(C[A-Z2-7]{55}), topics:\[error, Error\(Contract, #(\d+)\)",
)


def raised_contract_error(
    diagnostics: Iterable[str | stellar_xdr.DiagnosticEvent],
) -> tuple[int, str | None] | None:
    """The first contract error in diagnostic events (XDR) and the contract that logged it.

    The host logs the error once in the frame that raised it, then again as it escalates
    through each caller, so the oldest `error` event names the contract at fault (the asset
    contract when a `burn` under `plant` fails, not the farm).
    """
    for raw in diagnostics:
        if isinstance(raw, stellar_xdr.DiagnosticEvent):
            event = raw.event
        else:
            try:
                event = stellar_xdr.DiagnosticEvent.from_xdr(raw).event
            except (ValueError, IndexError, TypeError, EOFError):  # not a diagnostic event
                continue
        body = event.body.v0
        if body is None or len(body.topics) < 2:
            continue
        first, second = body.topics[0], body.topics[1]
        if first.sym is None or first.sym.sc_symbol != b"error" or second.error is None:
            continue
        code = second.error.contract_code
        if second.error.type != stellar_xdr.SCErrorType.SCE_CONTRACT or code is None:
            continue
        contract = (
            StrKey.encode_contract(event.contract_id.contract_id.hash)
            if event.contract_id is not None
            else None
        )
        return code.uint32, contract
    return None


def parse_simulation_error(
    text: str, events: Iterable[str] | None
) -> tuple[str, int | None, str | None]:
    """(host error, contract error number, raising contract) from a failed simulation.

    Diagnostic events are preferred; the error text (`HostError: ...` followed by the event
    log, newest first) is the fallback for servers that send no events.
    """
    match = _HOST_ERROR.search(text)
    if match:
        host_error = match.group(1)
    else:  # not a host error (e.g. a malformed transaction): its first line, bounded
        lines = text.strip().splitlines()
        host_error = lines[0][:200] if lines else "simulation failed"
    found = raised_contract_error(events or [])
    if found is not None:
        return host_error or f"Error(Contract, #{found[0]})", found[0], found[1]
    number_match = _CONTRACT_NUMBER.search(host_error)
    if number_match is None:
        return host_error, None, None
    number = int(number_match.group(1))
    raiser = None
    for line_match in _RAISER_LINE.finditer(text):  # newest first: the last one is the oldest
        if int(line_match.group(2)) == number:
            raiser = line_match.group(1)
    return host_error, number, raiser


def result_codes(result: stellar_xdr.TransactionResult) -> tuple[str, str | None]:
    """(transaction result code, first failing operation's code) e.g. ("txFAILED",
    "PAYMENT_UNDERFUNDED"); the inner result of a fee bump is looked through."""
    body = result.result
    if body.inner_result_pair is not None:
        inner = body.inner_result_pair.result.result
        code = inner.code.name
        results = inner.results
    else:
        code = body.code.name
        results = body.results
    for op in results or []:
        op_code = _operation_code(op)
        if op_code is not None and not op_code.endswith("_SUCCESS"):
            return code, op_code
    return code, None


def decode_result_xdr(xdr_b64: str) -> tuple[str, str | None]:
    """`result_codes` of a base64 `TransactionResult` (e.g. sendTransaction's errorResultXdr)."""
    return result_codes(stellar_xdr.TransactionResult.from_xdr(xdr_b64))


def _operation_code(op: stellar_xdr.OperationResult) -> str | None:
    if op.code != stellar_xdr.OperationResultCode.opINNER:
        return str(op.code.name)
    tr = op.tr
    if tr is None:
        return None
    for name, value in vars(tr).items():
        if name != "type" and value is not None and hasattr(value, "code"):
            return str(value.code.name)
    return None
