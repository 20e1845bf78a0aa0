"""The contract watch: no stake goes into farm code nobody reviewed, nor into a paused farm.

Every read of the farm's instance entry (`kalepool.chain.read_farm`, which every plant
check makes anyway) gives its code's Wasm hash and whether it is paused. The first hash
the pool ever sees is recorded as acknowledged (`contract_acks`, source `first_seen`);
from then on the farm is *held* while its hash differs from the newest acknowledgement
(the homesteader upgraded the contract) or while it is paused. While held:

- `RequestPlant` is refused with FAILED_PRECONDITION and a message that begins with
  `kalepool.wire.CONTRACT_HOLD_PREFIX`, before anything is written or sent;
- the plant reconciler sends nothing new: a request the wallet never signed stays
  unsettled, one the wallet signed already is followed to its outcome as always (a
  transaction on its way cannot be called back, and abandoning it would lose its
  record);
- harvests, work and payouts go on: a harvest sends no stake (it takes the farmer's
  stake and reward out of the farm), and the contract lets it run while paused.

An operator reviews the new code and calls `AcknowledgeContract` with the hash they
reviewed (`kale-pool contract ack HASH`); it must be the hash the farm runs now. A pause
clears by itself when the homesteader unpauses. The state is the gauge
`kalepool_contract_watch_ok` (1: plants go out, 0: held), a WARNING when a hold begins,
and the alert `contract_watch` (the pool's alert engine reads `ContractWatch.latest`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import Counter, Gauge

from kalepool import wire
from kalepool.chain import ChainError, CurrentBlock, FarmInstance, read_farm
from kalepool.grpc_server import FailedPrecondition, InvalidArgument, Unavailable
from pool_service.books.contracts import ContractAckRow, ContractAckStore
from pool_service.chain_view import ChainView

log = logging.getLogger("pool_service")

WATCH_OK = Gauge(
    "kalepool_contract_watch_ok",
    "1 while the farm runs the acknowledged code and is not paused (plants go out);"
    " 0 while plants are held.",
)
HELD_PLANTS = Counter(
    "kalepool_contract_watch_held_total",
    "Plant requests the contract watch refused or held back, by reason.",
    ["reason"],
)


class HoldReason(StrEnum):
    """Why plants are held (the counter's label)."""

    CODE_CHANGED = "code_changed"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class ContractState:
    """What the watch saw at its last check."""

    wasm_hash: str  # the code the farm runs now (hex)
    acknowledged: ContractAckRow | None
    paused: bool
    checked_at: dt.datetime
    held_since: dt.datetime | None  # when this process first saw the current hold

    @property
    def reasons(self) -> list[HoldReason]:
        out = []
        if self.acknowledged is None or self.acknowledged.wasm_hash != self.wasm_hash:
            out.append(HoldReason.CODE_CHANGED)
        if self.paused:
            out.append(HoldReason.PAUSED)
        return out

    @property
    def ok(self) -> bool:
        """Whether plants may go out."""
        return not self.reasons

    def reason(self) -> str:
        """What is wrong and what to do, in words (empty while plants go out)."""
        parts = []
        if HoldReason.CODE_CHANGED in self.reasons:
            acked = self.acknowledged.wasm_hash if self.acknowledged else "none"
            parts.append(
                f"the farm contract changed (code hash {self.wasm_hash}, acknowledged"
                f" {acked}); an operator must review it and run kale-pool contract ack"
            )
        if HoldReason.PAUSED in self.reasons:
            parts.append("the farm is paused by its homesteader; plants resume when it is unpaused")
        return "; and ".join(parts)

    def message(self) -> str:
        """The refused caller's sentence: the watch's prefix, the reason, nothing done."""
        return f"{wire.CONTRACT_HOLD_PREFIX}{self.reason()}: nothing was planted"


def wasm_hex(wasm_hash: bytes | None) -> str:
    """The hash as stored and shown; a farm without Wasm code is no farm we know."""
    if wasm_hash is None:
        raise Unavailable("the farm's instance names no Wasm code: not the KALE farm contract")
    return wasm_hash.hex()


class ContractWatch:
    """Compares the farm's code and pause flag with what an operator acknowledged."""

    def __init__(self, acks: ContractAckStore, view: ChainView) -> None:
        self.acks = acks
        self.view = view
        self._held_since: dt.datetime | None = None
        #: The state of the last check (None before the first): what the alert engine reads.
        self.latest: ContractState | None = None

    async def check(self, farm: CurrentBlock | FarmInstance) -> ContractState:
        """The state given a farm read already made (a plant check's own read); records
        the first sighting, sets the gauge and logs a hold's start and end."""
        seen = wasm_hex(farm.wasm_hash)
        acknowledged = await self.acks.latest()
        if acknowledged is None:
            acknowledged = await self.acks.first_seen(seen)
            if acknowledged is not None and acknowledged.wasm_hash == seen:
                log.info("contract watch: the farm's code %s recorded as acknowledged", seen)
        now = dt.datetime.now(dt.UTC)
        state = ContractState(seen, acknowledged, farm.paused, now, None)
        if state.ok:
            if self._held_since is not None:
                log.info("contract watch: plants resume (farm code %s, not paused)", seen)
            self._held_since = None
        elif self._held_since is None:
            self._held_since = now
            log.warning("contract watch: plants held: %s", state.reason())
        state = ContractState(seen, acknowledged, farm.paused, now, self._held_since)
        WATCH_OK.set(1 if state.ok else 0)
        self.latest = state
        return state

    async def refresh(self) -> ContractState:
        """Read the farm now and check it (the periodic pass and GetContractStatus)."""
        try:
            farm = await read_farm(self.view.chain)
        except ChainError as exc:
            raise Unavailable(f"the farm cannot be read: {exc}") from None
        return await self.check(farm)

    async def require_ok(self, farm: CurrentBlock) -> None:
        """FAILED_PRECONDITION (nothing done) unless plants may go out."""
        state = await self.check(farm)
        if not state.ok:
            for reason in state.reasons:
                HELD_PLANTS.labels(reason.value).inc()
            raise FailedPrecondition(state.message())

    async def plants_allowed(self) -> bool:
        """Whether new plants may be sent now (a fresh read); the reconciler's question.
        An unreadable farm allows nothing new."""
        try:
            state = await self.refresh()
        except Unavailable as exc:
            log.warning("contract watch: %s; no new plant is sent", exc.message)
            return False
        return state.ok

    async def acknowledge(self, wasm_hash: str, by: str) -> ContractState:
        """Record an operator's acknowledgement of the code the farm runs now.

        `wasm_hash` must be the current hash (an operator acknowledges exactly what they
        reviewed: a second upgrade since is refused, FAILED_PRECONDITION). Acknowledging
        the code already acknowledged records nothing new."""
        wanted = check_wasm_hash(wasm_hash)
        state = await self.refresh()
        if wanted != state.wasm_hash:
            raise FailedPrecondition(
                f"the farm runs code {state.wasm_hash}, not {wanted}: review the code it"
                " runs now and acknowledge that hash"
            )
        if state.acknowledged is not None and state.acknowledged.wasm_hash == wanted:
            return state
        await self.acks.acknowledge(wanted, by)
        log.warning("contract watch: farm code %s acknowledged by %s", wanted, by)
        return await self.refresh()


def check_wasm_hash(value: str) -> str:
    """A Wasm hash: 64 hex digits (case forgiven), lowercase."""
    cleaned = value.strip().lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise InvalidArgument("wasm_hash must be the contract's code hash: 64 hex digits")
    return cleaned
