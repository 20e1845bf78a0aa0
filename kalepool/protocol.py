"""KALE farm protocol math: the work hash, zero counting, and the reward formula.

These are pure functions that mirror the farm contract rule for rule (see
docs/protocol.md); the devnet applies them and the pool checks against them.
The hash here is the reference Keccak (pycryptodome); the fast search lives in
`miner_ext` and is tested against this.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from Crypto.Hash import keccak
from stellar_sdk import Address

# The contract's constants (7-decimal stroops).
BLOCK_INTERVAL_SECONDS = 300
BLOCK_REWARD = 501_0000000 * 300 // 60
BLOCKS_PER_MONTH = 8640
V2_GENESIS_BLOCK = 30_558
DECAY_SCALE = 100_0000000000
DECAY_FACTOR = 95_0000000000

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I128_MAX = 2**127 - 1
I128_MIN = -(2**127)

PREIMAGE_LEN = 76


def work_preimage(index: int, nonce: int, entropy: bytes, farmer: bytes) -> bytes:
    """The 76-byte preimage: index (u32 BE) | nonce (u64 BE) | entropy | farmer key bytes."""
    if not 0 <= index <= U32_MAX:
        raise ValueError(f"block index {index} is outside u32")
    if not 0 <= nonce <= U64_MAX:
        raise ValueError(f"nonce {nonce} is outside u64")
    if len(entropy) != 32:
        raise ValueError(f"entropy must be 32 bytes, got {len(entropy)}")
    if len(farmer) != 32:
        raise ValueError(f"farmer must be the 32 raw key bytes, got {len(farmer)}")
    return index.to_bytes(4, "big") + nonce.to_bytes(8, "big") + entropy + farmer


def farmer_key(address: str) -> bytes:
    """The 32 bytes the work hash binds: a G... account's public key or a C... contract's id.

    These are the last 32 bytes of the farmer's `Address` XDR (see the protocol notes).
    """
    address = address.strip()
    if not address.startswith(("G", "C")):
        raise ValueError("farmer must be a G... account or a C... contract address")
    try:
        return bytes(Address(address).key)
    except ValueError as error:
        raise ValueError(f"farmer {address!r} is not a valid address: {error}") from None


def keccak256(data: bytes) -> bytes:
    """Keccak-256 with the original padding (as Ethereum), not NIST SHA3-256."""
    return keccak.new(digest_bits=256, data=data).digest()


def kale_hash(index: int, nonce: int, entropy: bytes, farmer: bytes) -> bytes:
    """The hash `work` checks: Keccak-256 of the 76-byte preimage."""
    return keccak256(work_preimage(index, nonce, entropy, farmer))


def leading_zeros(digest: bytes) -> int:
    """Leading zero hex nibbles: a zero byte counts 2, the first non-zero byte adds 1 if < 0x10."""
    zeros = 0
    for byte in digest:
        if byte == 0:
            zeros += 2
            continue
        if byte < 0x10:
            zeros += 1
        break
    return zeros


def block_reward(index: int) -> int:
    """The block reward before stakes: BLOCK_REWARD decayed 5% per 8640 blocks since V2 genesis."""
    periods = max(index - V2_GENESIS_BLOCK, 0) // BLOCKS_PER_MONTH
    factor = DECAY_SCALE
    for _ in range(periods):
        factor = factor * DECAY_FACTOR // DECAY_SCALE
    return BLOCK_REWARD * factor // DECAY_SCALE


class BlockInvalidError(ValueError):
    """A block whose max < min for gap, stake or zeros (the contract's #12)."""


@dataclass(frozen=True, slots=True)
class BlockBounds:
    """The min/max ranges a block normalises against (copied from the previous block)."""

    min_gap: int
    max_gap: int
    min_stake: int
    max_stake: int
    min_zeros: int
    max_zeros: int

    def check(self) -> None:
        if (
            self.max_gap < self.min_gap
            or self.max_stake < self.min_stake
            or self.max_zeros < self.min_zeros
        ):
            raise BlockInvalidError("block has max < min for gap, stake or zeros")


def _normalise(value: int, lo: int, hi: int, scale: int) -> int:
    rng = max(hi - lo, 1)
    clamped = min(max(value, lo), hi)
    return max((clamped - lo) * scale // rng, 1)


@dataclass(frozen=True, slots=True)
class Normalised:
    """A work's normalised gap, stake and zeros."""

    gap: int
    stake: int
    zeros: int

    @property
    def total(self) -> int:
        return self.gap + self.stake + self.zeros


def normalise(bounds: BlockBounds, gap: int, stake: int, zeros: int) -> Normalised:
    """Normalise one pail's gap, stake and zeros against the block's ranges (contract rule)."""
    bounds.check()
    scale = max(
        max(bounds.max_gap - bounds.min_gap, 1),
        max(bounds.max_stake - bounds.min_stake, 1),
        max(bounds.max_zeros - bounds.min_zeros, 1),
    )
    return Normalised(
        gap=_normalise(gap, bounds.min_gap, bounds.max_gap, scale),
        stake=_normalise(stake, bounds.min_stake, bounds.max_stake, scale),
        zeros=_normalise(zeros, bounds.min_zeros, bounds.max_zeros, scale),
    )


def harvest_reward(
    pail_normalised: int, index: int, staked_total: int, normalized_total: int
) -> int:
    """The reward `harvest` returns (stake excluded): the pail's share of the pot."""
    return pail_normalised * (block_reward(index) + staked_total) // max(normalized_total, 1)


class FarmError(IntEnum):
    """The farm contract's errors, raised as `Error(Contract, #N)`."""

    HOMESTEAD_EXISTS = 1
    HOMESTEAD_MISSING = 2
    FARM_BLOCK_MISSING = 3
    FARM_PAUSED = 4
    FARM_NOT_PAUSED = 5
    PLANT_AMOUNT_TOO_LOW = 6
    ZERO_COUNT_TOO_LOW = 7
    PAIL_EXISTS = 8
    PAIL_MISSING = 9
    WORK_MISSING = 10
    BLOCK_MISSING = 11
    BLOCK_INVALID = 12
    HASH_INVALID = 13
    HARVEST_NOT_READY = 14
    GAP_COUNT_TOO_LOW = 15

    @property
    def contract_name(self) -> str:
        """The variant's name in the contract source, e.g. `PailExists`."""
        return "".join(part.capitalize() for part in self.name.split("_"))


class AssetError(IntEnum):
    """The Stellar asset contract's errors, in the same `Error(Contract, #N)` space.

    The numbers overlap the farm's (#10, #13): which contract raised an error
    decides what it means, never the number alone.
    """

    INTERNAL_ERROR = 1
    OPERATION_NOT_SUPPORTED = 2
    ALREADY_INITIALIZED = 3
    UNAUTHORIZED = 4
    AUTHENTICATION = 5
    ACCOUNT_MISSING = 6
    ACCOUNT_IS_NOT_CLASSIC = 7
    NEGATIVE_AMOUNT = 8
    ALLOWANCE = 9
    INSUFFICIENT_BALANCE = 10  # not enough to spend, or over the trustline's limit
    BALANCE_DEAUTHORIZED = 11
    OVERFLOW = 12
    TRUSTLINE_MISSING = 13

    @property
    def contract_name(self) -> str:
        """A CamelCase name for messages, e.g. `TrustlineMissing`."""
        return "".join(part.capitalize() for part in self.name.split("_"))


# The field order of the contract's `Block` and `Pail` structs (their ScMap keys, as the
# chain stores them): read by the chain client and written by the devnet alike.
BLOCK_FIELDS = (
    "timestamp",
    "min_gap",
    "min_stake",
    "min_zeros",
    "max_gap",
    "max_stake",
    "max_zeros",
    "entropy",
    "staked_total",
    "normalized_total",
)
PAIL_FIELDS = ("sequence", "gap", "stake", "zeros")
