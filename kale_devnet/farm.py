"""The KALE farm contract, run natively: `plant`, `work`, `harvest` and administration.

It follows the public contract rule for rule (order of checks, error numbers, storage
layout, TTLs); the math comes from `kalepool.protocol`, the one reference for it. The
only parameter the devnet changes is the block interval (`block_seconds`), so tests can
run short blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stellar_sdk import xdr as stellar_xdr

from kale_devnet import values as v
from kale_devnet.errors import ErrCode, ErrType, HostError
from kale_devnet.host import COST_KECCAK, WEEK_OF_LEDGERS, Host
from kale_devnet.ledger import Durability
from kalepool import protocol
from kalepool.protocol import FarmError

U32_MAX = protocol.U32_MAX
I128_MAX = protocol.I128_MAX
I128_MIN = protocol.I128_MIN

BLOCK_FIELDS = protocol.BLOCK_FIELDS
PAIL_FIELDS = protocol.PAIL_FIELDS


@dataclass(frozen=True, slots=True)
class Block:
    """The contract's `Block` struct."""

    timestamp: int
    min_gap: int
    min_stake: int
    min_zeros: int
    max_gap: int
    max_stake: int
    max_zeros: int
    entropy: bytes
    staked_total: int
    normalized_total: int

    def to_scval(self) -> stellar_xdr.SCVal:
        return v.struct(
            {
                "timestamp": v.u64(self.timestamp),
                "min_gap": v.u32(self.min_gap),
                "min_stake": v.i128(self.min_stake),
                "min_zeros": v.u32(self.min_zeros),
                "max_gap": v.u32(self.max_gap),
                "max_stake": v.i128(self.max_stake),
                "max_zeros": v.u32(self.max_zeros),
                "entropy": v.bytes_val(self.entropy),
                "staked_total": v.i128(self.staked_total),
                "normalized_total": v.i128(self.normalized_total),
            }
        )

    @staticmethod
    def from_scval(val: stellar_xdr.SCVal) -> Block:
        f = v.struct_fields(val, BLOCK_FIELDS)
        return Block(
            timestamp=v.as_u64(f["timestamp"]),
            min_gap=v.as_u32(f["min_gap"]),
            min_stake=v.as_i128(f["min_stake"]),
            min_zeros=v.as_u32(f["min_zeros"]),
            max_gap=v.as_u32(f["max_gap"]),
            max_stake=v.as_i128(f["max_stake"]),
            max_zeros=v.as_u32(f["max_zeros"]),
            entropy=v.as_bytes(f["entropy"], 32),
            staked_total=v.as_i128(f["staked_total"]),
            normalized_total=v.as_i128(f["normalized_total"]),
        )

    def bounds(self) -> protocol.BlockBounds:
        return protocol.BlockBounds(
            min_gap=self.min_gap,
            max_gap=self.max_gap,
            min_stake=self.min_stake,
            max_stake=self.max_stake,
            min_zeros=self.min_zeros,
            max_zeros=self.max_zeros,
        )


@dataclass(frozen=True, slots=True)
class Pail:
    """The contract's `Pail` struct."""

    sequence: int
    gap: int | None
    stake: int
    zeros: int | None

    def to_scval(self) -> stellar_xdr.SCVal:
        return v.struct(
            {
                "sequence": v.u32(self.sequence),
                "gap": v.option_u32(self.gap),
                "stake": v.i128(self.stake),
                "zeros": v.option_u32(self.zeros),
            }
        )

    @staticmethod
    def from_scval(val: stellar_xdr.SCVal) -> Pail:
        f = v.struct_fields(val, PAIL_FIELDS)
        return Pail(
            sequence=v.as_u32(f["sequence"]),
            gap=v.as_option_u32(f["gap"]),
            stake=v.as_i128(f["stake"]),
            zeros=v.as_option_u32(f["zeros"]),
        )


def new_farm_block(timestamp: int) -> Block:
    """A fresh FarmBlock: statistics at their sentinels, zero entropy."""
    return Block(
        timestamp=timestamp,
        min_gap=U32_MAX,
        min_stake=I128_MAX,
        min_zeros=U32_MAX,
        max_gap=0,
        max_stake=I128_MIN,
        max_zeros=0,
        entropy=bytes(32),
        staked_total=0,
        normalized_total=0,
    )


def new_block(timestamp: int, farm_block: Block) -> Block:
    """A new Block from the FarmBlock's observed statistics (sentinels become 0)."""
    fb = farm_block
    return Block(
        timestamp=timestamp,
        min_gap=0 if fb.min_gap == U32_MAX else fb.min_gap,
        min_stake=0 if fb.min_stake == I128_MAX else fb.min_stake,
        min_zeros=0 if fb.min_zeros == U32_MAX else fb.min_zeros,
        max_gap=fb.max_gap,
        max_stake=0 if fb.max_stake == I128_MIN else fb.max_stake,
        max_zeros=fb.max_zeros,
        entropy=fb.entropy,
        staked_total=0,
        normalized_total=0,
    )


def instance_key(name: str) -> stellar_xdr.SCVal:
    """Instance storage keys are `Vec[Symbol(name)]` (unit enum variants)."""
    return v.vec([v.symbol(name)])


def block_key(index: int) -> stellar_xdr.SCVal:
    return v.vec([v.symbol("Block"), v.u32(index)])


def pail_key(farmer: str, index: int) -> stellar_xdr.SCVal:
    return v.vec([v.symbol("Pail"), v.address(farmer), v.u32(index)])


def _overflow() -> HostError:
    # Rust's checked arithmetic panics, which the host reports as a VM trap.
    return HostError(ErrType.SCE_WASM_VM, ErrCode.SCEC_INVALID_ACTION, "arithmetic overflow")


def _i128(value: int) -> int:
    if not I128_MIN <= value <= I128_MAX:
        raise _overflow()
    return value


class FarmContract:
    """The farm's functions over a host; `block_seconds` is the block interval."""

    def __init__(self, block_seconds: int = protocol.BLOCK_INTERVAL_SECONDS) -> None:
        self.block_seconds = block_seconds

    # ---- dispatch ------------------------------------------------------------------

    def invoke(
        self, host: Host, contract: str, fn: str, args: list[stellar_xdr.SCVal]
    ) -> stellar_xdr.SCVal:
        table = {
            "plant": (2, self._plant),
            "work": (3, self._work),
            "harvest": (2, self._harvest),
            "pause": (0, self._pause),
            "unpause": (0, self._unpause),
            "remove_block": (1, self._remove_block),
            "upgrade": (1, self._upgrade),
        }
        if fn not in table:
            raise HostError(
                ErrType.SCE_WASM_VM,
                ErrCode.SCEC_MISSING_VALUE,
                f"trying to invoke non-existent contract function {fn}",
            )
        arity, handler = table[fn]
        if len(args) != arity:
            raise HostError(
                ErrType.SCE_WASM_VM,
                ErrCode.SCEC_INVALID_ACTION,
                f"{fn} takes {arity} arguments, got {len(args)}",
            )
        return handler(host, contract, args)

    def _fail(self, contract: str, error: FarmError) -> HostError:
        return HostError.contract_error(
            int(error), contract, f"failing with contract error {error.name}"
        )

    # ---- storage -------------------------------------------------------------------

    def _paused(self, host: Host, c: str) -> bool:
        val = host.instance_get(c, instance_key("FarmPaused"))
        return False if val is None else v.as_bool(val)

    def _asset(self, host: Host, c: str) -> str:
        val = host.instance_get(c, instance_key("HomesteadAsset"))
        if val is None:
            raise self._fail(c, FarmError.HOMESTEAD_MISSING)
        return v.as_address(val)

    def _homesteader(self, host: Host, c: str) -> str:
        val = host.instance_get(c, instance_key("Homesteader"))
        if val is None:
            raise self._fail(c, FarmError.HOMESTEAD_MISSING)
        return v.as_address(val)

    def _index(self, host: Host, c: str) -> int:
        val = host.instance_get(c, instance_key("FarmIndex"))
        return 0 if val is None else v.as_u32(val)

    def _bump_index(self, host: Host, c: str, index: int) -> int:
        if index >= U32_MAX:
            raise _overflow()
        host.instance_set(c, instance_key("FarmIndex"), v.u32(index + 1))
        return index + 1

    def _farm_block(self, host: Host, c: str) -> Block | None:
        val = host.instance_get(c, instance_key("FarmBlock"))
        return None if val is None else Block.from_scval(val)

    def _get_block(self, host: Host, c: str, index: int) -> Block | None:
        val = host.data_get(c, block_key(index), Durability.TEMPORARY)
        return None if val is None else Block.from_scval(val)

    def _get_pail(self, host: Host, c: str, farmer: str, index: int) -> Pail | None:
        val = host.data_get(c, pail_key(farmer, index), Durability.TEMPORARY)
        return None if val is None else Pail.from_scval(val)

    def _extend_instance(self, host: Host, c: str) -> None:
        max_ttl = host.max_ttl()
        host.extend_instance_ttl(c, max_ttl - WEEK_OF_LEDGERS, max_ttl)

    # ---- farm ----------------------------------------------------------------------

    def _plant(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        farmer = v.as_address(args[0])
        amount = v.as_i128(args[1])
        host.require_auth(farmer)
        if amount < 0:
            raise self._fail(c, FarmError.PLANT_AMOUNT_TOO_LOW)
        if self._paused(host, c):
            raise self._fail(c, FarmError.FARM_PAUSED)
        asset = self._asset(host, c)
        index = self._index(host, c)
        farm_block = self._farm_block(host, c)
        if farm_block is None:
            raise self._fail(c, FarmError.FARM_BLOCK_MISSING)

        now = host.ledger.timestamp
        # Block discovery is decided by FarmBlock.timestamp alone, never by Block(i).
        if now >= farm_block.timestamp + self.block_seconds:
            block = new_block(now, farm_block)
            farm_block = new_farm_block(now)
            index = self._bump_index(host, c, index)
        else:
            existing = self._get_block(host, c, index)
            if existing is None:
                if index > 0:  # evicted: only then does the index move
                    index = self._bump_index(host, c, index)
                block = new_block(now, farm_block)
            else:
                block = existing

        if host.data_has(c, pail_key(farmer, index), Durability.TEMPORARY):
            raise self._fail(c, FarmError.PAIL_EXISTS)

        block = replace(block, staked_total=_i128(block.staked_total + amount))
        if amount > 0:
            host.call(asset, "burn", [v.address(farmer), v.i128(amount)])
        farm_block = replace(
            farm_block,
            max_stake=max(farm_block.max_stake, amount),
            min_stake=min(farm_block.min_stake, amount),
        )
        pail = Pail(sequence=host.ledger.seq, gap=None, stake=amount, zeros=None)
        host.data_set(c, pail_key(farmer, index), pail.to_scval(), Durability.TEMPORARY)
        host.data_set(c, block_key(index), block.to_scval(), Durability.TEMPORARY)
        host.instance_set(c, instance_key("FarmBlock"), farm_block.to_scval())
        self._extend_instance(host, c)
        return v.void()

    def _work(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        farmer_sc = v.as_sc_address(args[0])
        farmer = v.address_str(farmer_sc)
        submitted = v.as_bytes(args[1], 32)
        nonce = v.as_u64(args[2])
        index = self._index(host, c)
        farm_block = self._farm_block(host, c)
        if farm_block is None:
            raise self._fail(c, FarmError.FARM_BLOCK_MISSING)
        block = self._get_block(host, c, index)
        if block is None:
            raise self._fail(c, FarmError.BLOCK_MISSING)
        pail = self._get_pail(host, c, farmer, index)
        if pail is None:
            raise self._fail(c, FarmError.PAIL_MISSING)

        # The farmer's bytes are the last 32 bytes of its Address XDR.
        host.instructions += COST_KECCAK
        generated = protocol.kale_hash(index, nonce, block.entropy, farmer_sc.to_xdr_bytes()[-32:])
        gap = host.ledger.seq - pail.sequence
        if gap < 0:
            raise _overflow()
        if gap == 0:
            raise self._fail(c, FarmError.GAP_COUNT_TOO_LOW)
        if submitted != generated:
            raise self._fail(c, FarmError.HASH_INVALID)
        zeros = protocol.leading_zeros(submitted)

        bounds = block.bounds()
        try:
            new = protocol.normalise(bounds, gap, pail.stake, zeros)
        except protocol.BlockInvalidError:
            raise self._fail(c, FarmError.BLOCK_INVALID) from None
        normalized_total = _i128(block.normalized_total + new.total)
        staked_total = block.staked_total
        if pail.zeros is not None:
            if zeros <= pail.zeros:
                raise self._fail(c, FarmError.ZERO_COUNT_TOO_LOW)
            # The contract subtracts the previous triple with the *new* gap.
            old = protocol.normalise(bounds, gap, pail.stake, pail.zeros)
            normalized_total = _i128(normalized_total - old.total)
        else:
            staked_total = _i128(staked_total - pail.stake)  # the stake leaves the pot

        block = replace(block, normalized_total=normalized_total, staked_total=staked_total)
        farm_block = replace(
            farm_block,
            entropy=generated,
            max_gap=max(farm_block.max_gap, gap),
            min_gap=min(farm_block.min_gap, gap),
            max_zeros=max(farm_block.max_zeros, zeros),
            min_zeros=min(farm_block.min_zeros, zeros),
        )
        pail = replace(pail, gap=gap, zeros=zeros)
        host.data_set(c, pail_key(farmer, index), pail.to_scval(), Durability.TEMPORARY)
        host.data_set(c, block_key(index), block.to_scval(), Durability.TEMPORARY)
        host.instance_set(c, instance_key("FarmBlock"), farm_block.to_scval())
        self._extend_instance(host, c)
        return v.u32(gap)

    def _harvest(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        farmer = v.as_address(args[0])
        index = v.as_u32(args[1])
        asset = self._asset(host, c)
        farm_index = self._index(host, c)
        block = self._get_block(host, c, index)
        if block is None:
            raise self._fail(c, FarmError.BLOCK_MISSING)
        pail = self._get_pail(host, c, farmer, index)
        if pail is None:
            raise self._fail(c, FarmError.PAIL_MISSING)
        if index >= farm_index:
            raise self._fail(c, FarmError.HARVEST_NOT_READY)
        if pail.gap is None or pail.zeros is None:
            raise self._fail(c, FarmError.WORK_MISSING)
        try:
            norm = protocol.normalise(block.bounds(), pail.gap, pail.stake, pail.zeros)
        except protocol.BlockInvalidError:
            raise self._fail(c, FarmError.BLOCK_INVALID) from None
        reward = _i128(
            protocol.harvest_reward(norm.total, index, block.staked_total, block.normalized_total)
        )
        reward_and_stake = _i128(reward + pail.stake)
        if reward_and_stake > 0:
            host.call(asset, "mint", [v.address(farmer), v.i128(reward_and_stake)])
        host.data_remove(c, pail_key(farmer, index), Durability.TEMPORARY)
        self._extend_instance(host, c)
        return v.i128(reward)

    # ---- homestead -----------------------------------------------------------------

    def _pause(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        host.require_auth(self._homesteader(host, c))
        if self._paused(host, c):
            raise self._fail(c, FarmError.FARM_PAUSED)
        host.instance_set(c, instance_key("FarmPaused"), v.boolean(True))
        return v.void()

    def _unpause(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        host.require_auth(self._homesteader(host, c))
        if not self._paused(host, c):
            raise self._fail(c, FarmError.FARM_NOT_PAUSED)
        host.instance_set(c, instance_key("FarmPaused"), v.boolean(False))
        self._extend_instance(host, c)
        return v.void()

    def _remove_block(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        index = v.as_u32(args[0])
        host.require_auth(self._homesteader(host, c))
        host.data_remove(c, block_key(index), Durability.TEMPORARY)
        return v.void()

    def _upgrade(self, host: Host, c: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        wasm_hash = v.as_bytes(args[0], 32)
        host.require_auth(self._homesteader(host, c))
        # Only the farm's own code exists on the devnet; any other hash names missing code.
        current = host.instance_wasm_hash(c)
        if wasm_hash != current:
            raise HostError(ErrType.SCE_STORAGE, ErrCode.SCEC_MISSING_VALUE, "Wasm does not exist")
        self._extend_instance(host, c)
        return v.void()


def genesis_instance_storage(
    homesteader: str, asset_contract: str, timestamp: int, farm_index: int = 0
) -> list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]]:
    """What `__constructor(homesteader, asset)` stores (FarmIndex stays absent), optionally
    with the farm already at `farm_index` (as a long-running farm would be)."""
    storage = [
        (instance_key("Homesteader"), v.address(homesteader)),
        (instance_key("HomesteadAsset"), v.address(asset_contract)),
        (instance_key("FarmBlock"), new_farm_block(timestamp).to_scval()),
    ]
    if farm_index:
        storage.append((instance_key("FarmIndex"), v.u32(farm_index)))
    return storage
