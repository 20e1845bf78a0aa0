"""The InvokeHostFunction operation: running it (apply or simulate) and pricing its resources."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stellar_sdk import xdr as stellar_xdr

from kale_devnet import values as v
from kale_devnet.errors import ErrCode, ErrType, HostError
from kale_devnet.host import AuthMode, ContractRuntime, Footprint, Host, LedgerInfo
from kale_devnet.ledger import StateView

# Resource prices (stroops), in the range mainnet charges.
FEE_PER_10K_INSTRUCTIONS = 25
FEE_PER_READ_ENTRY = 6_250
FEE_PER_WRITE_ENTRY = 10_000
FEE_PER_READ_KB = 1_786
FEE_PER_WRITE_KB = 11_800
FEE_PER_TX_KB = 1_624 + 16_235  # bandwidth + history
# Simulation cannot know the signed size; it prices this many bytes on top of the
# unsigned envelope (signatures, auth signatures, the soroban data itself).
TX_SIZE_ALLOWANCE = 2_048

# Network limits a transaction's declared resources must stay within.
MAX_INSTRUCTIONS = 400_000_000
MAX_FOOTPRINT_ENTRIES = 100
MAX_READ_BYTES = 200_000
MAX_WRITE_BYTES = 132_096


@dataclass(frozen=True, slots=True)
class Contracts:
    """The contracts the host can run: Wasm hash -> runtime, and the SAC."""

    runtimes: dict[bytes, ContractRuntime]
    sac: ContractRuntime


@dataclass
class InvokeOutcome:
    """What an invocation produced, successful or not."""

    view: StateView
    return_value: stellar_xdr.SCVal | None = None
    error: HostError | None = None
    events: list[stellar_xdr.ContractEvent] = field(default_factory=list)
    diagnostics: list[stellar_xdr.DiagnosticEvent] = field(default_factory=list)
    footprint: Footprint = field(default_factory=Footprint)
    auth: list[stellar_xdr.SorobanAuthorizationEntry] = field(default_factory=list)
    instructions: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    resource_limit_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def resources_fee(resources: stellar_xdr.SorobanResources) -> int:
    """The fee for declared resources, excluding the transaction-size part."""
    fp = resources.footprint
    entries = len(fp.read_only) + len(fp.read_write)
    return (
        math.ceil(resources.instructions.uint32 * FEE_PER_10K_INSTRUCTIONS / 10_000)
        + FEE_PER_READ_ENTRY * entries
        + FEE_PER_WRITE_ENTRY * len(fp.read_write)
        + math.ceil(resources.disk_read_bytes.uint32 * FEE_PER_READ_KB / 1024)
        + math.ceil(resources.write_bytes.uint32 * FEE_PER_WRITE_KB / 1024)
    )


def size_fee(tx_size: int) -> int:
    return math.ceil(tx_size * FEE_PER_TX_KB / 1024)


def check_resources(resources: stellar_xdr.SorobanResources) -> str | None:
    """Why declared resources exceed the network's limits, or None."""
    fp = resources.footprint
    if len(fp.read_only) + len(fp.read_write) > MAX_FOOTPRINT_ENTRIES:
        return "too many footprint entries"
    if resources.instructions.uint32 > MAX_INSTRUCTIONS:
        return "too many instructions"
    if resources.disk_read_bytes.uint32 > MAX_READ_BYTES:
        return "too many read bytes"
    if resources.write_bytes.uint32 > MAX_WRITE_BYTES:
        return "too many write bytes"
    seen = {k.to_xdr_bytes() for k in fp.read_only}
    if len(seen) != len(fp.read_only) or any(k.to_xdr_bytes() in seen for k in fp.read_write):
        return "duplicate footprint keys"
    return None


def invoke(
    view: StateView,
    ledger: LedgerInfo,
    op: stellar_xdr.InvokeHostFunctionOp,
    source: str,
    contracts: Contracts,
    *,
    footprint: Footprint | None,
    auth_mode: AuthMode,
    instruction_limit: int | None = None,
) -> InvokeOutcome:
    """Run the host function in `view` (the caller commits or discards it).

    `footprint` None records the footprint (simulation); otherwise every access is
    checked against it (apply). `instruction_limit` is the declared budget, if any.
    """
    outcome = InvokeOutcome(view=view)
    fn = op.host_function
    if (
        fn.type != stellar_xdr.HostFunctionType.HOST_FUNCTION_TYPE_INVOKE_CONTRACT
        or fn.invoke_contract is None
    ):
        outcome.error = HostError(
            ErrType.SCE_CONTEXT,
            ErrCode.SCEC_INVALID_ACTION,
            "the devnet supports contract invocations only (no uploads or deployments)",
        )
        return outcome
    args = fn.invoke_contract
    host = Host(
        view,
        ledger,
        source_account=source,
        footprint=footprint,
        auth_mode=auth_mode,
        auth_entries=op.auth,
        runtimes=contracts.runtimes,
        sac_runtime=contracts.sac,
    )
    try:
        if args.contract_address.type != stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_CONTRACT:
            raise HostError(
                ErrType.SCE_VALUE, ErrCode.SCEC_UNEXPECTED_TYPE, "can only invoke a contract"
            )
        contract = v.address_str(args.contract_address)
        name = bytes(args.function_name.sc_symbol).decode(errors="replace")
        outcome.return_value = host.call(contract, name, list(args.args))
        if instruction_limit is not None and host.instructions > instruction_limit:
            outcome.resource_limit_exceeded = True
            err = HostError(
                ErrType.SCE_BUDGET, ErrCode.SCEC_EXCEEDED_LIMIT, "instruction budget exceeded"
            )
            host.log_error(contract, err)
            raise err
    except HostError as err:
        outcome.error = err
        outcome.return_value = None
    outcome.events = host.events if outcome.ok else []
    outcome.diagnostics = host.diagnostics
    outcome.footprint = host.recorded if footprint is None else footprint
    outcome.auth = host.recorded_auth() if auth_mode != AuthMode.ENFORCE else []
    outcome.instructions = host.instructions
    outcome.read_bytes = host.read_bytes
    outcome.write_bytes = host.write_bytes()
    return outcome


def simulated_transaction_data(
    outcome: InvokeOutcome, unsigned_size: int, instruction_leeway: int
) -> stellar_xdr.SorobanTransactionData:
    """The SorobanTransactionData a client copies verbatim into its transaction."""
    resources = stellar_xdr.SorobanResources(
        footprint=outcome.footprint.to_xdr(),
        instructions=stellar_xdr.Uint32(outcome.instructions + max(instruction_leeway, 0)),
        disk_read_bytes=stellar_xdr.Uint32(outcome.read_bytes),
        write_bytes=stellar_xdr.Uint32(outcome.write_bytes),
    )
    auth_size = sum(len(a.to_xdr_bytes()) for a in outcome.auth)
    fee = resources_fee(resources) + size_fee(unsigned_size + auth_size + TX_SIZE_ALLOWANCE)
    return stellar_xdr.SorobanTransactionData(
        ext=stellar_xdr.SorobanTransactionDataExt(0),
        resources=resources,
        resource_fee=stellar_xdr.Int64(fee),
    )
