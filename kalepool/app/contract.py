"""`kale-pool contract status` and `kale-pool contract ack HASH`: the contract watch.

The pool holds new plants while the farm contract runs code nobody acknowledged (the
homesteader upgraded it) or while the farm is paused (docs/operations.md, "Contract
watch"). These commands show what the pool's watch sees and record an operator's
acknowledgement, through PoolService as the operator, exactly as grpcurl would.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from kalepool import wire
from kalepool.app.commands import with_pool
from kalepool.app.operator import OperatorClient
from kalepool.settings import Settings
from kalepool.v1 import pool_pb2


def status_lines(status: pool_pb2.ContractStatus) -> list[str]:
    """The watch's state for people, one fact a line."""

    def when(stamp: Timestamp, present: bool) -> str:
        at = wire.when(stamp) if present else None
        return "-" if at is None else f"{at:%Y-%m-%d %H:%M:%S} UTC"

    acked = status.acknowledged_wasm_hash or "none"
    held = when(status.held_since, status.HasField("held_since"))
    acked_at = when(status.acknowledged_at, status.HasField("acknowledged_at"))
    checked = when(status.checked_at, status.HasField("checked_at"))
    lines = [
        f"plants:        {'go out' if status.plants_allowed else 'HELD since ' + held}",
        f"code hash:     {status.wasm_hash}",
        f"acknowledged:  {acked} (by {status.acknowledged_by or '-'}, {acked_at})",
        f"paused:        {'yes' if status.paused else 'no'}",
        f"checked:       {checked}",
    ]
    if status.message:
        lines.append(f"why:           {status.message}")
    if status.wasm_hash != status.acknowledged_wasm_hash:
        lines.append(
            f"review the farm contract's new code, then: kale-pool contract ack {status.wasm_hash}"
        )
    return lines


def show_status(settings: Settings, console: Console | None = None) -> pool_pb2.ContractStatus:
    """`kale-pool contract status`."""

    async def body(op: OperatorClient) -> pool_pb2.ContractStatus:
        got = await op.pool.GetContractStatus(
            pool_pb2.GetContractStatusRequest(), timeout=op.timeout
        )
        return got.status

    status = with_pool(settings, body)
    out = console or Console(highlight=False, soft_wrap=True)
    for line in status_lines(status):
        out.print(line, markup=False)
    return status


def acknowledge(
    settings: Settings, wasm_hash: str, console: Console | None = None
) -> pool_pb2.ContractStatus:
    """`kale-pool contract ack HASH`: the hash must be the code the farm runs now."""

    async def body(op: OperatorClient) -> pool_pb2.ContractStatus:
        got = await op.pool.AcknowledgeContract(
            pool_pb2.AcknowledgeContractRequest(wasm_hash=wasm_hash), timeout=op.timeout
        )
        return got.status

    status = with_pool(settings, body)
    out = console or Console(highlight=False, soft_wrap=True)
    out.print(f"farm code {status.acknowledged_wasm_hash} acknowledged", markup=False)
    for line in status_lines(status):
        out.print(line, markup=False)
    return status
