"""Harvest rewards over randomized blocks, checked against an independent model.

The test keeps its own books from what it did (stakes, gaps, zeros, resubmissions):
each block's bounds are the statistics it observed in the block before, and the
reward is computed with `kalepool.protocol` (the project's reference math) from
those books, never from the chain's storage. The chain must pay exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from stellar_sdk import Keypair
from stellar_sdk.soroban_rpc import GetTransactionStatus

from kale_devnet import DevnetServer
from kalepool import protocol

from .kit import KALE, Kit, devnet_config, mine, return_value

U32_MAX = 2**32 - 1
I128_MAX = 2**127 - 1
I128_MIN = -(2**127)


@dataclass
class Pail:
    farmer: Keypair
    stake: int
    plant_ledger: int
    gap: int | None = None
    zeros: int | None = None


@dataclass
class Stats:
    """A FarmBlock's observed statistics, starting at the contract's sentinels."""

    min_gap: int = U32_MAX
    max_gap: int = 0
    min_stake: int = I128_MAX
    max_stake: int = I128_MIN
    min_zeros: int = U32_MAX
    max_zeros: int = 0

    def bounds(self) -> protocol.BlockBounds:
        """The next block's bounds: the statistics with sentinels replaced by 0."""
        return protocol.BlockBounds(
            min_gap=0 if self.min_gap == U32_MAX else self.min_gap,
            max_gap=self.max_gap,
            min_stake=0 if self.min_stake == I128_MAX else self.min_stake,
            max_stake=0 if self.max_stake == I128_MIN else self.max_stake,
            min_zeros=0 if self.min_zeros == U32_MAX else self.min_zeros,
            max_zeros=self.max_zeros,
        )


@dataclass
class BlockBooks:
    index: int
    bounds: protocol.BlockBounds
    stats: Stats = field(default_factory=Stats)
    pails: list[Pail] = field(default_factory=list)
    staked_total: int = 0
    normalized_total: int = 0

    def plant(self, pail: Pail) -> None:
        self.pails.append(pail)
        self.staked_total += pail.stake
        self.stats.min_stake = min(self.stats.min_stake, pail.stake)
        self.stats.max_stake = max(self.stats.max_stake, pail.stake)

    def work(self, pail: Pail, gap: int, zeros: int) -> None:
        new = protocol.normalise(self.bounds, gap, pail.stake, zeros)
        self.normalized_total += new.total
        if pail.zeros is None:
            self.staked_total -= pail.stake
        else:
            self.normalized_total -= protocol.normalise(
                self.bounds, gap, pail.stake, pail.zeros
            ).total
        pail.gap, pail.zeros = gap, zeros
        s = self.stats
        s.min_gap, s.max_gap = min(s.min_gap, gap), max(s.max_gap, gap)
        s.min_zeros, s.max_zeros = min(s.min_zeros, zeros), max(s.max_zeros, zeros)

    def reward(self, pail: Pail) -> int:
        assert pail.gap is not None and pail.zeros is not None
        norm = protocol.normalise(self.bounds, pail.gap, pail.stake, pail.zeros)
        return protocol.harvest_reward(
            norm.total, self.index, self.staked_total, self.normalized_total
        )


farmer_plan = st.fixed_dictionaries(
    {
        "stake": st.integers(0, 40).map(lambda k: k * KALE) | st.integers(0, 999),
        "works": st.booleans(),
        "gap": st.integers(1, 4),
        "zeros": st.integers(1, 3),
        "resubmit": st.booleans(),
    }
)
block_plan = st.lists(farmer_plan, min_size=1, max_size=4)


async def run_blocks(kit: Kit, start_index: int, blocks: list[list[dict[str, object]]]) -> int:
    farmers = await kit.new_accounts(4, trust=True, kale=10_000 * KALE)
    # One pooler account per farmer: an account has one transaction per ledger.
    poolers = await kit.new_accounts(4)
    pooler = poolers[0]
    pooler_of = {f.public_key: p for f, p in zip(farmers, poolers, strict=True)}
    previous_stats = Stats()  # the genesis FarmBlock: nothing observed
    index = start_index
    finished: BlockBooks | None = None
    harvested = 0
    for plan in [*blocks, []]:  # a last empty block opens so the final one can be harvested
        await kit.advance(300)
        index += 1
        books = BlockBooks(index=index, bounds=previous_stats.bounds())
        planters = [(farmers[i], p) for i, p in enumerate(plan)]
        if not planters:
            planters = [(pooler, {"stake": 0, "works": False})]
        # The first plant opens the block; the others follow in the next ledger.
        for group in (planters[:1], planters[1:]):
            if not group:
                continue
            sent = []
            for farmer, p in group:
                stake = int(p["stake"])  # type: ignore[call-overload]
                env = await kit.prepare_invoke(farmer, "plant", _plant_args(farmer, stake))
                sent.append((farmer, stake, await kit.send(env), env))
            closed = await kit.close()
            for farmer, stake, _, env in sent:
                assert env.hash_hex() in closed["applied"]
                books.plant(Pail(farmer, stake, closed["sequence"]))
        assert await kit.farm_index() == index

        block = await kit.block(index)
        assert block is not None
        entropy = block["entropy"]
        # Works (and resubmissions) land at their planned ledgers.
        schedule: dict[int, list[tuple[Pail, int]]] = {}
        latest = (await kit.rpc.get_latest_ledger()).sequence
        for pail, (_, p) in zip(books.pails, planters, strict=True):
            if not p["works"]:
                continue
            # The planned gap, or the next ledger if that one has passed (the opener's).
            at = max(pail.plant_ledger + int(p["gap"]), latest + 1)  # type: ignore[call-overload]
            schedule.setdefault(at, []).append((pail, int(p["zeros"])))  # type: ignore[call-overload]
            if p["resubmit"]:
                schedule.setdefault(at + 1, []).append((pail, -1))  # -1: one more zero
        for ledger in range(latest + 1, max(schedule, default=latest) + 1):
            pending = []
            for pail, target in schedule.get(ledger, []):
                want = (pail.zeros or 0) + 1 if target < 0 else target
                nonce, digest, zeros = mine(index, entropy, pail.farmer.public_key, want)
                source = pooler_of[pail.farmer.public_key]
                env = await kit.prepare_invoke(source, "work", _work_args(pail, digest, nonce))
                pending.append((pail, zeros, env))
                await kit.send(env)
            closed = await kit.close()
            assert closed["sequence"] == ledger
            for pail, zeros, env in pending:
                got = await kit.rpc.get_transaction(env.hash_hex())
                assert got.status == GetTransactionStatus.SUCCESS
                gap = ledger - pail.plant_ledger
                assert return_value(got) == gap
                books.work(pail, gap, zeros)
        assert [p.gap is not None for p in books.pails] == [bool(p["works"]) for _, p in planters]
        # The previous block is over since this one opened: harvest it.
        if finished is not None:
            harvested += await harvest_all(kit, pooler, finished)
        # The chain's block agrees with the books (and the books drive the expectation).
        block = await kit.block(index)
        assert block is not None
        assert block["normalized_total"] == books.normalized_total
        assert block["staked_total"] == books.staked_total
        previous_stats = books.stats
        finished = books
    return harvested


async def harvest_all(kit: Kit, pooler: Keypair, books: BlockBooks) -> int:
    count = 0
    for pail in books.pails:
        if pail.gap is None:
            continue
        before = await kit.balances(pail.farmer.public_key)
        got = await kit.harvest(pooler, pail.farmer.public_key, books.index)
        assert got.status == GetTransactionStatus.SUCCESS
        expected = books.reward(pail)
        assert return_value(got) == expected
        after = await kit.balances(pail.farmer.public_key)
        assert before is not None and after is not None and before.kale is not None
        assert after.kale == before.kale + expected + pail.stake
        count += 1
    return count


def _plant_args(farmer: Keypair, stake: int) -> list:  # type: ignore[type-arg]
    from stellar_sdk import scval

    return [scval.to_address(farmer.public_key), scval.to_int128(stake)]


def _work_args(pail: Pail, digest: bytes, nonce: int) -> list:  # type: ignore[type-arg]
    from stellar_sdk import scval

    return [
        scval.to_address(pail.farmer.public_key),
        scval.to_bytes(digest),
        scval.to_uint64(nonce),
    ]


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    start_index=st.sampled_from([0, 30_558 + 8_640 * 2 + 17, 30_558 + 8_640 * 40]),
    blocks=st.lists(block_plan, min_size=2, max_size=3),
)
async def test_harvest_rewards_match_the_formula(
    start_index: int, blocks: list[list[dict[str, object]]]
) -> None:
    config = devnet_config(genesis_farm_index=start_index)
    async with DevnetServer(config) as server, aiohttp.ClientSession() as http:
        kit = Kit(server, http)
        try:
            harvested = await run_blocks(kit, start_index, blocks)
            assert harvested == sum(1 for plan in blocks for p in plan if p["works"])
        finally:
            await kit.aclose()


async def test_decay_is_applied_at_late_indexes(kit: Kit) -> None:
    """A single farmer at a late block takes the whole decayed reward."""
    late = 30_558 + 8_640 * 5
    config = devnet_config(genesis_farm_index=late)
    async with DevnetServer(config) as server:
        k = Kit(server, kit.http)
        try:
            plan = [[{"stake": 0, "works": True, "gap": 1, "zeros": 1, "resubmit": False}]] * 2
            assert await run_blocks(k, late, plan) == 2
            assert protocol.block_reward(late + 1) < protocol.BLOCK_REWARD
        finally:
            await k.aclose()
