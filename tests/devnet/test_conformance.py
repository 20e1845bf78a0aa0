"""Conformance of the devnet to Stellar and to the KALE farm, as an outsider checks it.

Written from the public rules only (docs/protocol.md, stellar-core's transaction queue and
validity checks, Stellar RPC) and driven only through the unmodified stellar-sdk plus plain
HTTP for friendbot and the devnet's documented admin methods. It keeps its own books: the work
hash, the zero count, the normalisation and the reward formula are computed here, not taken
from the project's code, so a shared mistake cannot hide.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from Crypto.Hash import keccak
from stellar_sdk import (
    Account,
    Address,
    Asset,
    InvokeHostFunction,
    Keypair,
    Network,
    Preconditions,
    SorobanServer,
    SorobanServerAsync,
    TimeBounds,
    TransactionBuilder,
    TransactionEnvelope,
    scval,
    xdr,
)
from stellar_sdk.auth import authorize_entry
from stellar_sdk.contract import ContractClient
from stellar_sdk.exceptions import AccountNotFoundException, PrepareTransactionException
from stellar_sdk.soroban_rpc import (
    EventFilter,
    EventFilterType,
    GetTransactionResponse,
    GetTransactionStatus,
    SendTransactionResponse,
    SendTransactionStatus,
)
from stellar_sdk.soroban_server import Durability

from kale_devnet import DevnetConfig, DevnetServer
from kale_devnet.network import homesteader_keypair  # documented: the fixed admin key

TRC = xdr.TransactionResultCode
XLM = 10_000_000  # stroops
BASE_RESERVE = 5_000_000
U32_MAX = 2**32 - 1
I128_MAX = 2**127 - 1
I128_MIN = -(2**127)
ZERO32 = bytes(32)

# The farm's constants, from the contract's public source.
BLOCK_REWARD = 501_0000000 * 300 // 60
BLOCK_SCALE = 100_0000000000
INVERSE_DECAY = 95_0000000000
V2_GENESIS_BLOCK = 30_558
BLOCKS_PER_MONTH = 8640

BLOCK_FIELDS = [
    "entropy",
    "max_gap",
    "max_stake",
    "max_zeros",
    "min_gap",
    "min_stake",
    "min_zeros",
    "normalized_total",
    "staked_total",
    "timestamp",
]
PAIL_FIELDS = ["gap", "sequence", "stake", "zeros"]


# ---------------------------------------------------------------- the outsider's own math


def work_hash(index: int, nonce: int, entropy: bytes, farmer: str) -> bytes:
    """Keccak-256 over index ‖ nonce ‖ entropy ‖ last 32 bytes of the farmer's address XDR."""
    tail = Address(farmer).to_xdr_sc_address().to_xdr_bytes()[-32:]
    pre = index.to_bytes(4, "big") + nonce.to_bytes(8, "big") + entropy + tail
    assert len(pre) == 76
    return keccak.new(digest_bits=256, data=pre).digest()


def zeros_of(h: bytes) -> int:
    """Leading zero hex nibbles."""
    text = h.hex()
    return len(text) - len(text.lstrip("0"))


def mine(index: int, entropy: bytes, farmer: str, zeros: int, start: int = 0) -> tuple[int, bytes]:
    """The first nonce from `start` whose hash has exactly `zeros` leading zero nibbles."""
    nonce = start
    while True:
        h = work_hash(index, nonce, entropy, farmer)
        if zeros_of(h) == zeros:
            return nonce, h
        nonce += 1


@dataclass
class Stats:
    """A block's observed ranges (the min/max fields of `Block`)."""

    min_gap: int
    max_gap: int
    min_stake: int
    max_stake: int
    min_zeros: int
    max_zeros: int


def normalise(s: Stats, gap: int, stake: int, zeros: int) -> tuple[int, int, int]:
    if s.max_gap < s.min_gap or s.max_stake < s.min_stake or s.max_zeros < s.min_zeros:
        raise ValueError("BlockInvalid")
    r_gap = max(s.max_gap - s.min_gap, 1)
    r_stake = max(s.max_stake - s.min_stake, 1)
    r_zeros = max(s.max_zeros - s.min_zeros, 1)
    scale = max(r_gap, r_stake, r_zeros)

    def one(x: int, lo: int, hi: int, r: int) -> int:
        return max((min(max(x, lo), hi) - lo) * scale // r, 1)

    return (
        one(gap, s.min_gap, s.max_gap, r_gap),
        one(stake, s.min_stake, s.max_stake, r_stake),
        one(zeros, s.min_zeros, s.max_zeros, r_zeros),
    )


def block_reward(index: int) -> int:
    periods = max(index - V2_GENESIS_BLOCK, 0) // BLOCKS_PER_MONTH
    f = BLOCK_SCALE
    for _ in range(periods):
        f = f * INVERSE_DECAY // BLOCK_SCALE
    return BLOCK_REWARD * f // BLOCK_SCALE


@dataclass
class Books:
    """What the outsider expects one block to hold."""

    index: int
    stats: Stats
    staked_total: int = 0
    normalized_total: int = 0
    pails: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def plant(self, farmer: str, stake: int, seq: int) -> None:
        self.staked_total += stake
        self.pails[farmer] = {"sequence": seq, "stake": stake, "gap": None, "zeros": None}

    def work(self, farmer: str, gap: int, zeros: int) -> None:
        p = self.pails[farmer]
        stake = p["stake"]
        assert stake is not None
        self.normalized_total += sum(normalise(self.stats, gap, stake, zeros))
        if p["zeros"] is None:
            self.staked_total -= stake
        else:
            # the contract subtracts the old triple computed with the *new* gap
            self.normalized_total -= sum(normalise(self.stats, gap, stake, p["zeros"]))
        p["gap"], p["zeros"] = gap, zeros

    def reward(self, farmer: str) -> int:
        p = self.pails[farmer]
        assert p["gap"] is not None and p["zeros"] is not None and p["stake"] is not None
        n = sum(normalise(self.stats, p["gap"], p["stake"], p["zeros"]))
        return n * (block_reward(self.index) + self.staked_total) // max(self.normalized_total, 1)


def test_own_hash_reproduces_the_published_example() -> None:
    """The outsider's hash agrees with the published example (docs/protocol.md)."""
    entropy = base64.b64decode("AAAAAAn66y/43JP7M02rwTmONZoWOmu1OPYz/bmzJ8o=")
    farmer = "GBQHTQ7NTSKHVTSVM6EHUO3TU4P4BK2TAAII25V2TT2Q6OWXUJWEKALE"
    h = work_hash(37, 20495217910, entropy, farmer)
    assert h.hex() == "0000000099be0037e5a48324959cb9dd10965ae59511cfd1996f9b917aad9980"
    assert zeros_of(h) == 8


# ---------------------------------------------------------------- reading XDR


def struct(v: xdr.SCVal) -> dict[str, xdr.SCVal]:
    """A #[contracttype] struct: an ScMap keyed by field-name symbols in sorted order."""
    assert v.type == xdr.SCValType.SCV_MAP and v.map is not None
    names = []
    for e in v.map.sc_map:
        assert e.key.type == xdr.SCValType.SCV_SYMBOL
        names.append(scval.from_symbol(e.key))
    assert names == sorted(names)
    return {n: e.val for n, e in zip(names, v.map.sc_map, strict=True)}


def opt_u32(v: xdr.SCVal) -> int | None:
    if v.type == xdr.SCValType.SCV_VOID:
        return None
    return scval.from_uint32(v)


def block_dict(v: xdr.SCVal) -> dict[str, Any]:
    f = struct(v)
    assert list(f) == BLOCK_FIELDS
    assert f["timestamp"].type == xdr.SCValType.SCV_U64
    for k in ("min_gap", "max_gap", "min_zeros", "max_zeros"):
        assert f[k].type == xdr.SCValType.SCV_U32, k
    for k in ("min_stake", "max_stake", "staked_total", "normalized_total"):
        assert f[k].type == xdr.SCValType.SCV_I128, k
    entropy = scval.from_bytes(f["entropy"])
    assert len(entropy) == 32
    out: dict[str, Any] = {"entropy": entropy, "timestamp": scval.from_uint64(f["timestamp"])}
    for k in ("min_gap", "max_gap", "min_zeros", "max_zeros"):
        out[k] = scval.from_uint32(f[k])
    for k in ("min_stake", "max_stake", "staked_total", "normalized_total"):
        out[k] = scval.from_int128(f[k])
    return out


def pail_dict(v: xdr.SCVal) -> dict[str, int | None]:
    f = struct(v)
    assert list(f) == PAIL_FIELDS
    assert f["sequence"].type == xdr.SCValType.SCV_U32
    assert f["stake"].type == xdr.SCValType.SCV_I128
    for k in ("gap", "zeros"):
        assert f[k].type in (xdr.SCValType.SCV_VOID, xdr.SCValType.SCV_U32), k
    return {
        "sequence": scval.from_uint32(f["sequence"]),
        "gap": opt_u32(f["gap"]),
        "stake": scval.from_int128(f["stake"]),
        "zeros": opt_u32(f["zeros"]),
    }


def stats_of(block: dict[str, Any]) -> Stats:
    return Stats(
        block["min_gap"],
        block["max_gap"],
        block["min_stake"],
        block["max_stake"],
        block["min_zeros"],
        block["max_zeros"],
    )


def errors_in(events: Sequence[xdr.DiagnosticEvent]) -> list[xdr.SCError]:
    """Every error value carried by diagnostic events, in order."""
    found: list[xdr.SCError] = []

    def visit(v: xdr.SCVal) -> None:
        if v.type == xdr.SCValType.SCV_ERROR and v.error is not None:
            found.append(v.error)
        elif v.type == xdr.SCValType.SCV_VEC and v.vec is not None:
            for x in v.vec.sc_vec:
                visit(x)

    for d in events:
        body = d.event.body.v0
        assert body is not None
        for t in body.topics:
            visit(t)
        visit(body.data)
    return found


def contract_codes_in(events: Sequence[xdr.DiagnosticEvent]) -> list[int]:
    """Every Error(Contract, #N) carried by diagnostic events, in order."""
    return [
        e.contract_code.uint32
        for e in errors_in(events)
        if e.type == xdr.SCErrorType.SCE_CONTRACT and e.contract_code is not None
    ]


def sim_code(exc: PrepareTransactionException) -> int:
    err = exc.simulate_transaction_response.error or ""
    m = re.search(r"Error\(Contract, #(\d+)\)", err)
    assert m, err
    return int(m.group(1))


def result_code(xdr_b64: str | None) -> xdr.TransactionResultCode:
    assert xdr_b64 is not None
    return xdr.TransactionResult.from_xdr(xdr_b64).result.code


def op_result(res: GetTransactionResponse) -> xdr.OperationResultTr:
    r = xdr.TransactionResult.from_xdr(res.result_xdr or "")
    assert r.result.results is not None
    tr = r.result.results[0].tr
    assert tr is not None
    return tr


# ---------------------------------------------------------------- the chain, from outside


class SimFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"Error(Contract, #{code})")
        self.code = code


@dataclass
class Applied:
    """A transaction's outcome as getTransaction reports it."""

    res: GetTransactionResponse
    meta: xdr.TransactionMeta

    @property
    def ok(self) -> bool:
        return self.res.status == GetTransactionStatus.SUCCESS

    @property
    def fee_charged(self) -> int:
        return xdr.TransactionResult.from_xdr(self.res.result_xdr or "").fee_charged.int64

    @property
    def return_value(self) -> xdr.SCVal:
        assert self.meta.v4 is not None and self.meta.v4.soroban_meta is not None
        rv = self.meta.v4.soroban_meta.return_value
        assert rv is not None
        return rv

    def diagnostics(self) -> list[xdr.DiagnosticEvent]:
        events: list[xdr.DiagnosticEvent] = []
        if self.meta.v4 is not None:
            events += self.meta.v4.diagnostic_events
        for e in self.res.diagnostic_events_xdr or []:
            events.append(xdr.DiagnosticEvent.from_xdr(e))
        return events

    def contract_codes(self) -> list[int]:
        return contract_codes_in(self.diagnostics())

    def host_error_types(self) -> set[xdr.SCErrorType]:
        return {e.type for e in errors_in(self.diagnostics())}


class Chain:
    """A devnet seen only through its RPC, friendbot, /devnet and the admin methods."""

    def __init__(self, url: str, http: aiohttp.ClientSession, info: dict[str, Any]) -> None:
        self.url = url
        self.http = http
        self.info = info
        self.rpc = SorobanServerAsync(url)
        self.passphrase: str = info["network_passphrase"]
        self.farm: str = info["farm_contract_id"]
        self.sac: str = info["sac_contract_id"]
        self.kale = Asset(info["asset_code"], info["asset_issuer"])

    # -- clock and ledgers

    async def admin(self, method: str, **params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.http.post(self.url, json=body) as r:
            answer = await r.json()
        assert "result" in answer, answer
        return answer["result"]

    async def close(self, count: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = await self.admin("devnet_closeLedger", count=count)
        return out

    async def latest(self) -> tuple[int, int]:
        ll = await self.rpc.get_latest_ledger()
        return ll.sequence, int(ll.close_time)

    async def next_close_at(self, when: int) -> None:
        """Make the next ledger close at exactly `when`."""
        info = await self.admin("devnet_info")
        delta = when - int(info["next_close_time"])
        assert delta >= 0, (when, info["next_close_time"])
        if delta:
            await self.admin("devnet_advanceTime", seconds=delta)

    # -- accounts

    async def friendbot(self, addr: str, **extra: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/friendbot", params={"addr": addr, **extra}) as r:
            assert r.status == 200, await r.text()
            out: dict[str, Any] = await r.json()
            return out

    async def fund(self, *kps: Keypair) -> None:
        for kp in kps:
            await self.friendbot(kp.public_key)
        await self.close()

    async def account(self, addr: str) -> xdr.AccountEntry | None:
        key = xdr.LedgerKey(
            xdr.LedgerEntryType.ACCOUNT,
            account=xdr.LedgerKeyAccount(Keypair.from_public_key(addr).xdr_account_id()),
        )
        got = await self.rpc.get_ledger_entries([key])
        if not got.entries:
            return None
        data = xdr.LedgerEntryData.from_xdr(got.entries[0].xdr)
        assert data.account is not None
        return data.account

    async def balance(self, addr: str) -> int:
        acc = await self.account(addr)
        assert acc is not None
        return acc.balance.int64

    async def seq(self, addr: str) -> int:
        acc = await self.account(addr)
        assert acc is not None
        return acc.seq_num.sequence_number.int64

    async def kale_balance(self, addr: str) -> int:
        key = xdr.LedgerKey(
            xdr.LedgerEntryType.TRUSTLINE,
            trust_line=xdr.LedgerKeyTrustLine(
                Keypair.from_public_key(addr).xdr_account_id(),
                self.kale.to_trust_line_asset_xdr_object(),
            ),
        )
        got = await self.rpc.get_ledger_entries([key])
        assert got.entries, "no KALE trustline"
        data = xdr.LedgerEntryData.from_xdr(got.entries[0].xdr)
        assert data.trust_line is not None
        return data.trust_line.balance.int64

    async def trust_and_mint(self, *pairs: tuple[Keypair, int]) -> None:
        """A KALE trustline for each account, then KALE from friendbot's devnet extension."""
        for kp, _ in pairs:
            await self.send_ok(
                await self.classic(kp, lambda b: b.append_change_trust_op(self.kale))
            )
        await self.close()
        for kp, amount in pairs:
            if amount:
                await self.friendbot(kp.public_key, kale=str(amount))
        await self.close()

    # -- transactions

    async def bounds(self, ahead: int = 600) -> tuple[int, int]:
        _, now = await self.latest()
        return 0, now + ahead

    async def classic(
        self,
        kp: Keypair,
        add_ops: Callable[[TransactionBuilder], Any],
        *,
        fee: int | None = None,
        seq: int | None = None,
        time_bounds: tuple[int, int] | None = None,
        passphrase: str | None = None,
        signers: Sequence[Keypair] | None = None,
    ) -> TransactionEnvelope:
        """A signed classic transaction; `seq` is the one the envelope carries."""
        if seq is None:
            seq = await self.seq(kp.public_key) + 1
        builder = TransactionBuilder(
            Account(kp.public_key, seq - 1), passphrase or self.passphrase, base_fee=100
        )
        add_ops(builder)
        lo, hi = time_bounds or await self.bounds()
        builder.add_time_bounds(lo, hi)
        env = builder.build()
        if fee is not None:
            env.transaction.fee = fee
        for s in [kp] if signers is None else signers:
            env.sign(s)
        return env

    async def send(self, env: TransactionEnvelope) -> SendTransactionResponse:
        return await self.rpc.send_transaction(env)

    async def send_ok(self, env: TransactionEnvelope) -> str:
        r = await self.send(env)
        assert r.status == SendTransactionStatus.PENDING, r
        assert r.hash == env.hash_hex()
        return r.hash

    async def outcome(self, tx_hash: str) -> Applied:
        res = await self.rpc.get_transaction(tx_hash)
        assert res.status != GetTransactionStatus.NOT_FOUND, tx_hash
        assert res.result_meta_xdr is not None
        return Applied(res, xdr.TransactionMeta.from_xdr(res.result_meta_xdr))

    async def apply(self, env: TransactionEnvelope) -> Applied:
        h = await self.send_ok(env)
        await self.close()
        return await self.outcome(h)

    async def rejected(self, env: TransactionEnvelope) -> xdr.TransactionResultCode:
        r = await self.send(env)
        assert r.status == SendTransactionStatus.ERROR, r
        return result_code(r.error_result_xdr)

    # -- contract calls

    async def prepared(
        self, kp: Keypair, fn: str, args: list[xdr.SCVal], contract: str | None = None
    ) -> TransactionEnvelope:
        """Build, simulate and assemble a call; raises SimFailed with the contract error."""
        acc = await self.rpc.load_account(kp.public_key)
        lo, hi = await self.bounds()
        tx = (
            TransactionBuilder(acc, self.passphrase, base_fee=100)
            .append_invoke_contract_function_op(contract or self.farm, fn, args)
            .add_time_bounds(lo, hi)
            .build()
        )
        try:
            tx = await self.rpc.prepare_transaction(tx)
        except PrepareTransactionException as e:
            raise SimFailed(sim_code(e)) from e
        tx.sign(kp)
        return tx

    async def call(
        self, kp: Keypair, fn: str, args: list[xdr.SCVal], contract: str | None = None
    ) -> Applied:
        return await self.apply(await self.prepared(kp, fn, args, contract))

    async def sim_error(
        self, kp: Keypair, fn: str, args: list[xdr.SCVal], contract: str | None = None
    ) -> int:
        with pytest.raises(SimFailed) as ei:
            await self.prepared(kp, fn, args, contract)
        return ei.value.code

    # -- the farm's storage, read as the public farmers read it

    def data_key(self, key: xdr.SCVal, durability: xdr.ContractDataDurability) -> xdr.LedgerKey:
        return xdr.LedgerKey(
            xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=xdr.LedgerKeyContractData(
                Address(self.farm).to_xdr_sc_address(), key, durability
            ),
        )

    async def instance(self) -> dict[str, xdr.SCVal]:
        key = self.data_key(
            xdr.SCVal(xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            xdr.ContractDataDurability.PERSISTENT,
        )
        got = await self.rpc.get_ledger_entries([key])
        assert len(got.entries) == 1
        data = xdr.LedgerEntryData.from_xdr(got.entries[0].xdr)
        assert data.contract_data is not None
        inst = data.contract_data.val.instance
        assert inst is not None and inst.storage is not None
        out: dict[str, xdr.SCVal] = {}
        raw_keys = []
        for e in inst.storage.sc_map:
            assert e.key.type == xdr.SCValType.SCV_VEC and e.key.vec is not None
            assert len(e.key.vec.sc_vec) == 1, "instance keys are Vec[Symbol(name)]"
            name = scval.from_symbol(e.key.vec.sc_vec[0])
            raw_keys.append(name)
            out[name] = e.val
        assert raw_keys == sorted(raw_keys), "the host keeps maps sorted"
        return out

    async def farm_index(self) -> int:
        v = (await self.instance()).get("FarmIndex")
        return 0 if v is None else scval.from_uint32(v)

    async def farm_block(self) -> dict[str, Any]:
        return block_dict((await self.instance())["FarmBlock"])

    async def temp_entry(self, key: xdr.SCVal) -> tuple[xdr.SCVal, int, int | None] | None:
        got = await self.rpc.get_ledger_entries(
            [self.data_key(key, xdr.ContractDataDurability.TEMPORARY)]
        )
        if not got.entries:
            return None
        e = got.entries[0]
        data = xdr.LedgerEntryData.from_xdr(e.xdr)
        assert data.contract_data is not None
        assert data.contract_data.durability == xdr.ContractDataDurability.TEMPORARY
        return data.contract_data.val, e.last_modified_ledger, e.live_until_ledger

    async def block(self, index: int) -> dict[str, Any] | None:
        got = await self.temp_entry(block_key(index))
        return None if got is None else block_dict(got[0])

    async def pail(self, farmer: str, index: int) -> dict[str, int | None] | None:
        got = await self.temp_entry(pail_key(farmer, index))
        return None if got is None else pail_dict(got[0])

    # -- farm calls

    async def plant(self, kp: Keypair, amount: int) -> Applied:
        out = await self.call(
            kp, "plant", [scval.to_address(kp.public_key), scval.to_int128(amount)]
        )
        assert out.ok, out.res
        return out

    def work_args(self, farmer: str, h: bytes, nonce: int) -> list[xdr.SCVal]:
        return [scval.to_address(farmer), scval.to_bytes(h), scval.to_uint64(nonce)]

    def harvest_args(self, farmer: str, index: int) -> list[xdr.SCVal]:
        return [scval.to_address(farmer), scval.to_uint32(index)]


def block_key(index: int) -> xdr.SCVal:
    return scval.to_vec([scval.to_symbol("Block"), scval.to_uint32(index)])


def pail_key(farmer: str, index: int) -> xdr.SCVal:
    return scval.to_vec([scval.to_symbol("Pail"), scval.to_address(farmer), scval.to_uint32(index)])


WEEK = 7 * 86400


@asynccontextmanager
async def devnet(**overrides: Any) -> AsyncIterator[Chain]:
    """A fresh manual devnet; its clock starts a week back so wall-clock timeouts stay valid."""
    cfg = DevnetConfig(port=0, manual=True, genesis_time=int(time.time()) - WEEK, **overrides)
    async with DevnetServer(cfg) as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/devnet") as r:
            info = await r.json()
        chain = Chain(server.url, http, info)
        try:
            yield chain
        finally:
            await chain.rpc.close()


@pytest.fixture
async def chain() -> AsyncIterator[Chain]:
    async with devnet() as c:
        yield c


# ================================================================ accounts and submission


async def test_new_account_sequence_number_is_ledger_shifted_32(chain: Chain) -> None:
    a, b = Keypair.random(), Keypair.random()
    answer = await chain.friendbot(a.public_key)
    assert answer["status"] == "PENDING"
    with pytest.raises(AccountNotFoundException):
        await chain.rpc.load_account(a.public_key)
    closed = await chain.close()
    acc = await chain.rpc.load_account(a.public_key)
    assert acc.sequence == closed["sequence"] << 32
    assert await chain.balance(a.public_key) == 10_000 * XLM

    # a CreateAccount a few ledgers later: the sequence number follows the ledger it applied in
    await chain.close(3)
    env = await chain.classic(
        a, lambda t: t.append_create_account_op(b.public_key, starting_balance="5")
    )
    out = await chain.apply(env)
    assert out.ok
    assert out.res.ledger is not None
    assert await chain.seq(b.public_key) == out.res.ledger << 32
    assert await chain.balance(b.public_key) == 5 * XLM

    # friendbot tops up an existing account by the same amount
    before = await chain.balance(a.public_key)
    await chain.friendbot(a.public_key)
    await chain.close()
    assert await chain.balance(a.public_key) == before + 10_000 * XLM


async def test_reserves(chain: Chain) -> None:
    a, b, c, d = (Keypair.random() for _ in range(4))
    await chain.fund(a)

    async def create(kp: Keypair, stroops: int) -> Applied:
        amount = f"{stroops / XLM:.7f}"
        return await chain.apply(
            await chain.classic(
                a, lambda t: t.append_create_account_op(kp.public_key, starting_balance=amount)
            )
        )

    low = await create(b, 2 * BASE_RESERVE - 1)
    assert not low.ok
    assert result_code(low.res.result_xdr) == TRC.txFAILED
    assert op_result(low.res).create_account_result is not None
    assert (
        op_result(low.res).create_account_result.code  # type: ignore[union-attr]
        == xdr.CreateAccountResultCode.CREATE_ACCOUNT_LOW_RESERVE
    )
    assert low.fee_charged == 100
    assert await chain.account(b.public_key) is None

    # B: exactly the 1.5 XLM a trustline needs, plus three fees
    assert (await create(b, 3 * BASE_RESERVE + 300)).ok
    trust = await chain.apply(
        await chain.classic(b, lambda t: t.append_change_trust_op(chain.kale))
    )
    assert trust.ok
    assert await chain.balance(b.public_key) == 3 * BASE_RESERVE + 200
    acc = await chain.account(b.public_key)
    assert acc is not None and acc.num_sub_entries.uint32 == 1
    pay = await chain.apply(
        await chain.classic(
            b,
            lambda t: t.append_payment_op(a.public_key, Asset.native(), "0.0000100"),
        )
    )
    assert pay.ok
    assert await chain.balance(b.public_key) == 3 * BASE_RESERVE
    # nothing above the reserve is left for a fee
    env = await chain.classic(
        b, lambda t: t.append_payment_op(a.public_key, Asset.native(), "0.0000001")
    )
    assert await chain.rejected(env) == TRC.txINSUFFICIENT_BALANCE

    # C: a payment that would dip below the reserve fails, its fee is still taken
    assert (await create(c, 2 * BASE_RESERVE + 300)).ok
    under = await chain.apply(
        await chain.classic(
            c, lambda t: t.append_payment_op(a.public_key, Asset.native(), "0.0000201")
        )
    )
    assert not under.ok
    assert (
        op_result(under.res).payment_result.code  # type: ignore[union-attr]
        == xdr.PaymentResultCode.PAYMENT_UNDERFUNDED
    )
    assert await chain.balance(c.public_key) == 2 * BASE_RESERVE + 200

    # D: a trustline without the reserve for it
    assert (await create(d, 2 * BASE_RESERVE + 200)).ok
    low_trust = await chain.apply(
        await chain.classic(d, lambda t: t.append_change_trust_op(chain.kale))
    )
    assert not low_trust.ok
    assert (
        op_result(low_trust.res).change_trust_result.code  # type: ignore[union-attr]
        == xdr.ChangeTrustResultCode.CHANGE_TRUST_LOW_RESERVE
    )
    assert await chain.balance(d.public_key) == 2 * BASE_RESERVE + 100


async def test_fees_charged(chain: Chain) -> None:
    a, b = Keypair.random(), Keypair.random()
    await chain.fund(a, b)

    def pay(n: int) -> Callable[[TransactionBuilder], Any]:
        def add(t: TransactionBuilder) -> None:
            for _ in range(n):
                t.append_payment_op(b.public_key, Asset.native(), "1")

        return add

    before = await chain.balance(a.public_key)
    out = await chain.apply(await chain.classic(a, pay(1), fee=1000))
    assert out.ok
    # no surge pricing: the base fee per operation, not the bid
    assert out.fee_charged == 100
    assert await chain.balance(a.public_key) == before - 100 - XLM

    before = await chain.balance(a.public_key)
    out = await chain.apply(await chain.classic(a, pay(3), fee=300))
    assert out.ok and out.fee_charged == 300
    assert await chain.balance(a.public_key) == before - 300 - 3 * XLM

    before, seq = await chain.balance(a.public_key), await chain.seq(a.public_key)
    assert await chain.rejected(await chain.classic(a, pay(3), fee=299)) == TRC.txINSUFFICIENT_FEE
    await chain.close()
    assert (await chain.balance(a.public_key), await chain.seq(a.public_key)) == (before, seq)


async def test_time_bounds(chain: Chain) -> None:
    a, b = Keypair.random(), Keypair.random()
    await chain.fund(a, b)
    await chain.close()
    seq0 = await chain.seq(a.public_key)
    _, now = await chain.latest()

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(b.public_key, Asset.native(), "1")

    late = await chain.classic(a, pay, time_bounds=(0, now - 1))
    assert await chain.rejected(late) == TRC.txTOO_LATE
    early = await chain.classic(a, pay, time_bounds=(now + 1000, 0))
    assert await chain.rejected(early) == TRC.txTOO_EARLY
    # stellar-core judges minTime against the last close: one second past it is too early
    early = await chain.classic(a, pay, time_bounds=(now + 1, 0))
    assert await chain.rejected(early) == TRC.txTOO_EARLY

    # stellar-core's queue wants maxTime to outlast twice the expected ledger time past the
    # last close: maxTime at the very next close time is already too late to accept
    ls = chain.info["ledger_seconds"]
    short = await chain.classic(a, pay, time_bounds=(0, now + ls))
    assert await chain.rejected(short) == TRC.txTOO_LATE
    enough = await chain.classic(a, pay, time_bounds=(now, now + 2 * ls))
    assert (await chain.apply(enough)).ok
    seq0 += 1
    assert await chain.seq(a.public_key) == seq0

    # valid when queued, expired by close time: dropped, never applied
    _, now = await chain.latest()
    env = await chain.classic(a, pay, time_bounds=(0, now + 60))
    await chain.send_ok(env)
    await chain.admin("devnet_advanceTime", seconds=120)
    await chain.close()
    got = await chain.rpc.get_transaction(env.hash_hex())
    assert got.status == GetTransactionStatus.NOT_FOUND
    assert await chain.seq(a.public_key) == seq0
    # stellar-core bans what it drops from its queue: the same envelope must wait
    assert (await chain.send(env)).status == SendTransactionStatus.TRY_AGAIN_LATER

    # maxTime 0 means no upper bound
    _, now = await chain.latest()
    out = await chain.apply(await chain.classic(a, pay, time_bounds=(now, 0)))
    assert out.ok


async def test_one_pending_transaction_per_source(chain: Chain) -> None:
    a, b, c = Keypair.random(), Keypair.random(), Keypair.random()
    await chain.fund(a, b, c)
    s = await chain.seq(a.public_key)

    def pay(memo: str) -> Callable[[TransactionBuilder], Any]:
        return lambda t: t.append_payment_op(b.public_key, Asset.native(), "1").add_text_memo(memo)

    first = await chain.classic(a, pay("one"), seq=s + 1)
    await chain.send_ok(first)
    # another source is not held up
    await chain.send_ok(await chain.classic(c, pay("c")))
    # the next sequence number, a later one, and a rival for the same one: all wait
    for env in (
        await chain.classic(a, pay("two"), seq=s + 2),
        await chain.classic(a, pay("three"), seq=s + 3),
        await chain.classic(a, pay("rival"), seq=s + 1),
    ):
        r = await chain.send(env)
        assert r.status == SendTransactionStatus.TRY_AGAIN_LATER, r
    # one older than the queued transaction is simply bad
    assert await chain.rejected(await chain.classic(a, pay("old"), seq=s)) == TRC.txBAD_SEQ

    closed = await chain.close()
    assert first.hash_hex() in closed["applied"]
    assert await chain.seq(a.public_key) == s + 1
    second = await chain.classic(a, pay("two"), seq=s + 2)
    assert (await chain.apply(second)).ok
    assert await chain.seq(a.public_key) == s + 2


async def test_identical_envelope_never_applies_twice(chain: Chain) -> None:
    """PENDING, then DUPLICATE while queued; after it applied stellar-core bans the hash for
    about ten ledgers (TRY_AGAIN_LATER), then its spent sequence number answers txBAD_SEQ."""
    a, b = Keypair.random(), Keypair.random()
    await chain.fund(a, b)
    env = await chain.classic(
        a, lambda t: t.append_payment_op(b.public_key, Asset.native(), "7"), time_bounds=(0, 0)
    )
    await chain.send_ok(env)
    again = await chain.send(env)
    assert again.status == SendTransactionStatus.DUPLICATE
    assert again.hash == env.hash_hex()
    before = await chain.balance(b.public_key)
    closed = await chain.close()
    applied_in = closed["sequence"]
    assert closed["applied"].count(env.hash_hex()) == 1

    after = await chain.send(env)
    assert after.status == SendTransactionStatus.TRY_AGAIN_LATER, after
    # banned while the latest ledger is within 8 of the one it applied in (10 ban slots,
    # shifted once at the close that applied it)
    await chain.close(8)
    assert (await chain.send(env)).status == SendTransactionStatus.TRY_AGAIN_LATER
    await chain.close()
    late = await chain.send(env)
    assert late.status == SendTransactionStatus.ERROR
    assert result_code(late.error_result_xdr) == TRC.txBAD_SEQ
    await chain.close()
    assert await chain.balance(b.public_key) == before + 7 * XLM
    got = await chain.rpc.get_transaction(env.hash_hex())
    assert got.status == GetTransactionStatus.SUCCESS and got.ledger == applied_in


async def test_signatures_and_network(chain: Chain) -> None:
    a, b, stranger = Keypair.random(), Keypair.random(), Keypair.random()
    await chain.fund(a, b)
    seq, bal = await chain.seq(a.public_key), await chain.balance(a.public_key)

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(b.public_key, Asset.native(), "1")

    assert await chain.rejected(await chain.classic(a, pay, signers=[stranger])) == TRC.txBAD_AUTH
    assert await chain.rejected(await chain.classic(a, pay, signers=[])) == TRC.txBAD_AUTH
    extra = await chain.classic(a, pay, signers=[a, stranger])
    assert await chain.rejected(extra) == TRC.txBAD_AUTH_EXTRA
    # signed for another network: the signature does not cover this network's payload,
    # and the answer's hash is this network's hash of the envelope
    other = await chain.classic(a, pay, passphrase=Network.TESTNET_NETWORK_PASSPHRASE)
    r = await chain.send(other)
    assert r.status == SendTransactionStatus.ERROR
    assert result_code(r.error_result_xdr) == TRC.txBAD_AUTH
    ours = TransactionEnvelope.from_xdr(other.to_xdr(), chain.passphrase)
    assert r.hash == ours.hash_hex() != other.hash_hex()
    await chain.close()
    assert (await chain.seq(a.public_key), await chain.balance(a.public_key)) == (seq, bal)


async def test_bad_sequence_and_missing_account(chain: Chain) -> None:
    a, b, ghost = Keypair.random(), Keypair.random(), Keypair.random()
    await chain.fund(a, b)
    s = await chain.seq(a.public_key)

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(b.public_key, Asset.native(), "1")

    assert await chain.rejected(await chain.classic(a, pay, seq=s + 2)) == TRC.txBAD_SEQ
    assert await chain.rejected(await chain.classic(a, pay, seq=s)) == TRC.txBAD_SEQ
    assert await chain.rejected(await chain.classic(ghost, pay, seq=1)) == TRC.txNO_ACCOUNT
    await chain.close()
    assert await chain.seq(a.public_key) == s


async def test_which_validity_error_wins(chain: Chain) -> None:
    """stellar-core's order: time bounds, fee, source account, sequence, signatures, balance."""
    a, b, poor, stranger = (Keypair.random() for _ in range(4))
    await chain.fund(a, b)
    await chain.apply(
        await chain.classic(
            a, lambda t: t.append_create_account_op(poor.public_key, starting_balance="1")
        )
    )
    await chain.close()
    _, now = await chain.latest()
    s = await chain.seq(a.public_key)

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(b.public_key, Asset.native(), "1")

    everything = await chain.classic(
        a, pay, seq=s + 5, fee=10, time_bounds=(0, now - 1), signers=[stranger]
    )
    assert await chain.rejected(everything) == TRC.txTOO_LATE
    no_time = await chain.classic(a, pay, seq=s + 5, fee=10, signers=[stranger])
    assert await chain.rejected(no_time) == TRC.txINSUFFICIENT_FEE
    ghost = await chain.classic(stranger, pay, seq=5, fee=10)
    assert await chain.rejected(ghost) == TRC.txINSUFFICIENT_FEE
    assert await chain.rejected(await chain.classic(stranger, pay, seq=5)) == TRC.txNO_ACCOUNT
    seq_and_sig = await chain.classic(a, pay, seq=s + 5, signers=[stranger])
    assert await chain.rejected(seq_and_sig) == TRC.txBAD_SEQ
    ps = await chain.seq(poor.public_key)
    sig_and_money = await chain.classic(poor, pay, seq=ps + 1, signers=[stranger])
    assert await chain.rejected(sig_and_money) == TRC.txBAD_AUTH
    money = await chain.classic(poor, pay, seq=ps + 1)
    assert await chain.rejected(money) == TRC.txINSUFFICIENT_BALANCE


async def test_fee_bid_must_be_available(chain: Chain) -> None:
    """stellar-core wants the whole bid above the reserve, not only what it will charge."""
    a, b, poor = Keypair.random(), Keypair.random(), Keypair.random()
    await chain.fund(a, b)
    create = await chain.classic(
        a, lambda t: t.append_create_account_op(poor.public_key, starting_balance="1.0000500")
    )
    assert (await chain.apply(create)).ok

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(b.public_key, Asset.native(), "0.0000001")

    assert (
        await chain.rejected(await chain.classic(poor, pay, fee=501)) == TRC.txINSUFFICIENT_BALANCE
    )
    out = await chain.apply(await chain.classic(poor, pay, fee=500))
    assert out.ok and out.fee_charged == 100


async def test_soroban_fee_validity(chain: Chain) -> None:
    """The declared resource fee is checked with the Soroban rules (txSOROBAN_INVALID), before
    the time bounds; the inclusion fee above it must meet the base fee (txINSUFFICIENT_FEE)."""
    farmer = Keypair.random()
    await chain.fund(farmer)
    args = [scval.to_address(farmer.public_key), scval.to_int128(0)]

    async def variant(
        *, resource_delta: int = 0, fee_delta: int = 0, time_bounds: tuple[int, int] | None = None
    ) -> TransactionEnvelope:
        tx = await chain.prepared(farmer, "plant", args)
        data = tx.transaction.soroban_data
        assert data is not None
        data.resource_fee = xdr.Int64(data.resource_fee.int64 + resource_delta)
        tx.transaction.fee += fee_delta
        if time_bounds is not None:
            tx.transaction.preconditions = Preconditions(time_bounds=TimeBounds(*time_bounds))
        tx.signatures = []
        tx.sign(farmer)
        return tx

    prepared = await chain.prepared(farmer, "plant", args)
    data = prepared.transaction.soroban_data
    assert data is not None
    resource_fee = data.resource_fee.int64
    assert prepared.transaction.fee == 100 + resource_fee
    assert await chain.rejected(await variant(fee_delta=-1)) == TRC.txINSUFFICIENT_FEE
    assert await chain.rejected(await variant(fee_delta=-101)) == TRC.txSOROBAN_INVALID
    # half the resource fee the simulation asked for cannot cover the declared resources
    half = -(resource_fee // 2)
    too_low = await variant(resource_delta=half, fee_delta=half)
    assert await chain.rejected(too_low) == TRC.txSOROBAN_INVALID
    _, now = await chain.latest()
    late_and_low = await variant(resource_delta=half, time_bounds=(0, now - 1))
    assert await chain.rejected(late_and_low) == TRC.txSOROBAN_INVALID
    # what a Soroban call pays is what feeCharged says: the base inclusion fee however
    # high the bid (no surge pricing), plus the resource fee (the devnet refunds nothing)
    before = await chain.balance(farmer.public_key)
    out = await chain.apply(await variant(fee_delta=5000))
    assert out.ok
    assert await chain.balance(farmer.public_key) == before - out.fee_charged
    assert 100 < out.fee_charged <= 100 + resource_fee


async def test_fee_bumps_in_the_queue(chain: Chain) -> None:
    """A fee bump replaces a queued transaction of the same sequence number only at ten times
    its fee rate; one sponsor may pay for several queued transactions at once."""
    a, b, c, sponsor = (Keypair.random() for _ in range(4))
    await chain.fund(a, b, c, sponsor)

    def pay(t: TransactionBuilder) -> None:
        t.append_payment_op(sponsor.public_key, Asset.native(), "1")

    def bump(inner: TransactionEnvelope, base_fee: int) -> Any:
        env = TransactionBuilder.build_fee_bump_transaction(
            sponsor.public_key, base_fee, inner, chain.passphrase
        )
        env.sign(sponsor)
        return env

    inner_a = await chain.classic(a, pay)
    await chain.send_ok(inner_a)
    # inner fee 100 for 1 op; a bump counts 2 ops and needs 10 x 100 x 2 = 2000
    low = await chain.send(bump(inner_a, 999))
    assert low.status == SendTransactionStatus.ERROR
    low_result = xdr.TransactionResult.from_xdr(low.error_result_xdr or "")
    assert low_result.result.code == TRC.txINSUFFICIENT_FEE
    assert low_result.fee_charged.int64 == 2000
    replacing = bump(inner_a, 1000)
    h = (await chain.send(replacing)).hash
    assert h == replacing.hash_hex()
    # the queued one is now the bump: its inner envelope is a duplicate of it
    assert (await chain.send(inner_a)).status == SendTransactionStatus.DUPLICATE
    # the sponsor pays for B and C too, in the same ledger, and sends its own
    for kp in (b, c):
        r = await chain.send(bump(await chain.classic(kp, pay), 100))
        assert r.status == SendTransactionStatus.PENDING, r
    own = await chain.classic(sponsor, lambda t: t.append_bump_sequence_op(0))
    await chain.send_ok(own)
    closed = await chain.close()
    assert len(closed["applied"]) == 4
    assert inner_a.hash_hex() not in closed["applied"] and h in closed["applied"]
    assert (await chain.outcome(h)).ok
    assert await chain.seq(a.public_key) == (await chain.rpc.load_account(a.public_key)).sequence


async def test_rpc_identity(chain: Chain) -> None:
    net = await chain.rpc.get_network()
    assert net.passphrase == chain.passphrase
    assert net.protocol_version == 23
    health = await chain.rpc.get_health()
    assert health.status == "healthy"
    seq, _ = await chain.latest()
    assert health.latest_ledger == seq


# ================================================================ the farm


async def test_farm_storage_at_genesis(chain: Chain) -> None:
    inst = await chain.instance()
    assert "FarmIndex" not in inst, "FarmIndex is absent until the first rollover"
    assert "FarmPaused" not in inst or scval.from_bool(inst["FarmPaused"]) is False
    assert scval.from_address(inst["HomesteadAsset"]).address == chain.sac
    assert scval.from_address(inst["Homesteader"]).address == chain.info["homesteader"]
    fb = block_dict(inst["FarmBlock"])
    assert fb["min_gap"] == U32_MAX and fb["min_zeros"] == U32_MAX
    assert fb["min_stake"] == I128_MAX and fb["max_stake"] == I128_MIN
    assert fb["max_gap"] == 0 and fb["max_zeros"] == 0
    assert fb["entropy"] == ZERO32
    assert fb["staked_total"] == 0 and fb["normalized_total"] == 0
    assert await chain.block(0) is None
    # before the first plant there is no Block(0): work and harvest find BlockMissing (#11)
    helper = Keypair.random()
    await chain.fund(helper)
    n, h = mine(0, ZERO32, helper.public_key, 0)
    assert await chain.sim_error(helper, "work", chain.work_args(helper.public_key, h, n)) == 11
    assert await chain.sim_error(helper, "harvest", chain.harvest_args(helper.public_key, 0)) == 11
    # KALE's asset contract is the one Stellar derives for the asset
    assert chain.sac == chain.kale.contract_id(chain.passphrase)


async def test_plant_and_its_storage() -> None:
    async with devnet(temp_ttl_ledgers=40) as chain:
        a, b, broke, bare = (Keypair.random() for _ in range(4))
        await chain.fund(a, b, broke, bare)
        await chain.trust_and_mint((a, 50 * XLM), (broke, 3))
        genesis_ts = (await chain.farm_block())["timestamp"]

        # A stakes 20 KALE, B stakes nothing; both land in one ledger
        ta = await chain.prepared(
            a, "plant", [scval.to_address(a.public_key), scval.to_int128(20 * XLM)]
        )
        tb = await chain.prepared(b, "plant", [scval.to_address(b.public_key), scval.to_int128(0)])
        ha, hb = await chain.send_ok(ta), await chain.send_ok(tb)
        closed = await chain.close()
        assert closed["applied"] == [ha, hb]
        pa, pb = await chain.outcome(ha), await chain.outcome(hb)
        assert pa.ok and pb.ok
        assert pa.return_value.type == xdr.SCValType.SCV_VOID
        ledger, close_time = closed["sequence"], closed["closeTime"]

        assert await chain.farm_index() == 0
        blk = await chain.block(0)
        assert blk is not None
        assert blk["timestamp"] == close_time != genesis_ts
        assert stats_of(blk) == Stats(0, 0, 0, 0, 0, 0)
        assert blk["entropy"] == ZERO32
        assert blk["staked_total"] == 20 * XLM and blk["normalized_total"] == 0
        fb = await chain.farm_block()
        assert fb["timestamp"] == genesis_ts
        assert (fb["min_stake"], fb["max_stake"]) == (0, 20 * XLM)
        assert (fb["min_gap"], fb["max_gap"]) == (U32_MAX, 0)

        raw = await chain.temp_entry(pail_key(a.public_key, 0))
        assert raw is not None
        val, modified, live_until = raw
        assert modified == ledger
        assert live_until == ledger + 40 - 1
        assert pail_dict(val) == {"sequence": ledger, "gap": None, "stake": 20 * XLM, "zeros": None}
        assert struct(val)["gap"].type == xdr.SCValType.SCV_VOID
        assert await chain.pail(b.public_key, 0) == {
            "sequence": ledger,
            "gap": None,
            "stake": 0,
            "zeros": None,
        }
        # the stake is burned
        assert await chain.kale_balance(a.public_key) == 30 * XLM

        def plant_args(kp: Keypair, amount: int) -> list[xdr.SCVal]:
            return [scval.to_address(kp.public_key), scval.to_int128(amount)]

        assert await chain.sim_error(a, "plant", plant_args(a, 0)) == 8  # PailExists
        assert await chain.sim_error(a, "plant", plant_args(a, -1)) == 6  # PlantAmountTooLow
        # the asset contract's own errors: insufficient balance #10, no trustline #13
        assert await chain.sim_error(broke, "plant", plant_args(broke, 4)) == 10
        assert await chain.sim_error(bare, "plant", plant_args(bare, 1)) == 13
        # plant with 0 needs no trustline at all
        assert (await chain.plant(bare, 0)).ok
        # rewriting a temporary entry keeps its TTL
        again = await chain.temp_entry(block_key(0))
        assert again is not None and again[1] > ledger
        assert again[2] == ledger + 40 - 1

        # the burn is the asset contract's event
        ev = await chain.rpc.get_events(
            start_ledger=ledger,
            filters=[EventFilter(event_type=EventFilterType.CONTRACT, contract_ids=[chain.sac])],
        )
        burns = [e for e in ev.events if e.ledger == ledger]
        assert len(burns) == 1
        topics = [xdr.SCVal.from_xdr(t) for t in burns[0].topic]
        assert scval.from_symbol(topics[0]) == "burn"
        assert scval.from_address(topics[1]).address == a.public_key
        assert scval.from_string(topics[2]).decode() == f"KALE:{chain.kale.issuer}"
        assert scval.from_int128(xdr.SCVal.from_xdr(burns[0].value)) == 20 * XLM
        assert burns[0].transaction_hash == ha
        farm_events = await chain.rpc.get_events(
            start_ledger=1, filters=[EventFilter(contract_ids=[chain.farm])]
        )
        assert farm_events.events == []

        # temporary entries expire: after their TTL the pail and the block are gone
        await chain.close(40)
        assert await chain.pail(a.public_key, 0) is None
        assert await chain.block(0) is None


async def test_plant_authorized_by_the_farmer_paid_by_another(chain: Chain) -> None:
    """The farmer signs only its authorization entry; someone else sources and pays. A
    signature made for another network does not authorize."""
    farmer, payer, other = Keypair.random(), Keypair.random(), Keypair.random()
    await chain.fund(farmer, payer, other)

    async def plant_for(kp: Keypair, passphrase: str, amount: int = 0) -> Applied:
        args = [scval.to_address(kp.public_key), scval.to_int128(0)]
        acc = await chain.rpc.load_account(payer.public_key)
        tx = (
            TransactionBuilder(acc, chain.passphrase, base_fee=100)
            .append_invoke_contract_function_op(chain.farm, "plant", args)
            .add_time_bounds(*(await chain.bounds()))
            .build()
        )
        tx = await chain.rpc.prepare_transaction(tx)
        op = tx.transaction.operations[0]
        assert isinstance(op, InvokeHostFunction) and len(op.auth) == 1
        cred = op.auth[0].credentials
        assert cred.type == xdr.SorobanCredentialsType.SOROBAN_CREDENTIALS_ADDRESS
        seq, _ = await chain.latest()
        op.auth = [authorize_entry(op.auth[0], kp, seq + 20, passphrase)]
        if amount:
            op.host_function.invoke_contract.args[1] = scval.to_int128(amount)  # type: ignore[union-attr]
        tx.sign(payer)
        return await chain.apply(tx)

    before = await chain.balance(farmer.public_key)
    out = await plant_for(farmer, chain.passphrase)
    assert out.ok
    assert await chain.pail(farmer.public_key, 0) is not None
    assert await chain.balance(farmer.public_key) == before  # the payer paid
    bad = await plant_for(other, Network.TESTNET_NETWORK_PASSPHRASE)
    assert bad.res.status == GetTransactionStatus.FAILED
    assert (
        op_result(bad.res).invoke_host_function_result.code  # type: ignore[union-attr]
        == xdr.InvokeHostFunctionResultCode.INVOKE_HOST_FUNCTION_TRAPPED
    )
    assert await chain.pail(other.public_key, 0) is None
    # the host's account check fails on the signature: Error(Crypto, InvalidInput)
    assert xdr.SCErrorType.SCE_CRYPTO in bad.host_error_types()
    assert bad.contract_codes() == []
    # the farmer's authorization is checked before the amount: a call whose arguments the
    # signature does not cover fails on auth, never reaching PlantAmountTooLow (#6)
    swapped = await plant_for(other, chain.passphrase, amount=-1)
    assert swapped.res.status == GetTransactionStatus.FAILED
    assert xdr.SCErrorType.SCE_AUTH in swapped.host_error_types()
    assert 6 not in swapped.contract_codes()
    assert await chain.pail(other.public_key, 0) is None


async def test_next_block_opens_by_farm_block_timestamp() -> None:
    async with devnet(ledger_seconds=1) as chain:
        await _next_block_opens_by_farm_block_timestamp(chain)


async def _next_block_opens_by_farm_block_timestamp(chain: Chain) -> None:
    a, b, c, d = (Keypair.random() for _ in range(4))
    await chain.fund(a, b, c, d)
    bs = chain.info["block_seconds"]
    t0 = (await chain.farm_block())["timestamp"]
    _, now = await chain.latest()
    assert now < t0 + bs - 100

    await chain.next_close_at(t0 + bs - 100)
    await chain.plant(a, 0)
    blk0 = await chain.block(0)
    assert blk0 is not None and blk0["timestamp"] == t0 + bs - 100

    # one second short of FarmBlock.timestamp + block_seconds: still block 0
    await chain.next_close_at(t0 + bs - 1)
    await chain.plant(b, 0)
    assert await chain.farm_index() == 0
    assert await chain.pail(b.public_key, 0) is not None

    # exactly block_seconds after FarmBlock.timestamp (not after Block(0).timestamp): block 1
    await chain.next_close_at(t0 + bs)
    await chain.plant(c, 0)
    assert await chain.farm_index() == 1
    assert await chain.pail(c.public_key, 1) is not None
    assert await chain.pail(c.public_key, 0) is None
    blk1 = await chain.block(1)
    assert blk1 is not None and blk1["timestamp"] == t0 + bs
    # nobody worked in block 0, so block 1's entropy is zero and its ranges are copied
    # from FarmBlock with the sentinels turned into 0 (stakes: min 0, max 0)
    assert blk1["entropy"] == ZERO32
    assert stats_of(blk1) == Stats(0, 0, 0, 0, 0, 0)
    fb = await chain.farm_block()
    assert fb["timestamp"] == t0 + bs
    assert (fb["min_stake"], fb["max_stake"]) == (0, 0)
    assert (fb["min_gap"], fb["max_gap"], fb["min_zeros"], fb["max_zeros"]) == (
        U32_MAX,
        0,
        U32_MAX,
        0,
    )
    # block 0 is still there, untouched
    assert await chain.block(0) == blk0

    # and plant discovers the block by time only: D a moment later stays in block 1
    await chain.plant(d, 0)
    assert await chain.farm_index() == 1


async def test_first_plant_on_an_idle_farm_opens_block_one(chain: Chain) -> None:
    a = Keypair.random()
    await chain.fund(a)
    t0 = (await chain.farm_block())["timestamp"]
    await chain.next_close_at(t0 + chain.info["block_seconds"] + 7)
    await chain.plant(a, 0)
    assert await chain.farm_index() == 1
    assert await chain.block(0) is None
    assert await chain.pail(a.public_key, 1) is not None


async def test_work_rules(chain: Chain) -> None:
    a, b, helper, nobody = (Keypair.random() for _ in range(4))
    await chain.fund(a, b, helper)
    await chain.trust_and_mint((a, 10 * XLM))
    await chain.plant(b, 0)

    # work for B's pail, simulated now: its footprint is the model for A's same-ledger work
    nb, hb = mine(0, ZERO32, b.public_key, 0)
    sim_b = await chain.prepared(helper, "work", chain.work_args(b.public_key, hb, nb))
    data = sim_b.transaction.soroban_data
    assert data is not None
    rw = data.resources.footprint.read_write
    pb = chain.data_key(pail_key(b.public_key, 0), xdr.ContractDataDurability.TEMPORARY)
    assert pb in rw or pb in data.resources.footprint.read_only

    # A plants and, in the same ledger, someone submits A's work with a wrong hash:
    # gap 0 is checked before the hash, so #15 (GapCountTooLow) wins over #13
    plant_a = await chain.prepared(
        a, "plant", [scval.to_address(a.public_key), scval.to_int128(4 * XLM)]
    )
    pa = chain.data_key(pail_key(a.public_key, 0), xdr.ContractDataDurability.TEMPORARY)
    fp = data.resources.footprint
    fp.read_write = [pa if k == pb else k for k in fp.read_write]
    fp.read_only = [pa if k == pb else k for k in fp.read_only]
    acc = await chain.rpc.load_account(helper.public_key)
    same_ledger = (
        TransactionBuilder(acc, chain.passphrase, base_fee=100)
        .append_invoke_contract_function_op(
            chain.farm, "work", chain.work_args(a.public_key, bytes(32), 1)
        )
        .add_time_bounds(*(await chain.bounds()))
        .set_soroban_data(data)
        .build()
    )
    same_ledger.transaction.fee = 100 + data.resource_fee.int64
    same_ledger.sign(helper)
    h_plant, h_work = await chain.send_ok(plant_a), await chain.send_ok(same_ledger)
    closed = await chain.close()
    assert closed["applied"] == [h_plant, h_work]
    plant_ledger = closed["sequence"]
    assert (await chain.outcome(h_plant)).ok
    failed = await chain.outcome(h_work)
    assert failed.res.status == GetTransactionStatus.FAILED
    assert result_code(failed.res.result_xdr) == TRC.txFAILED
    assert (
        op_result(failed.res).invoke_host_function_result.code  # type: ignore[union-attr]
        == xdr.InvokeHostFunctionResultCode.INVOKE_HOST_FUNCTION_TRAPPED
    )
    assert failed.contract_codes()[:1] == [15]
    assert failed.fee_charged > 0
    # a failed transaction still spends its sequence number and pays its fee
    assert failed.res.envelope_xdr is not None
    assert await chain.seq(helper.public_key) == same_ledger.transaction.sequence

    # a wrong hash a ledger later: #13; no pail: #9
    wrong = await chain.sim_error(helper, "work", chain.work_args(a.public_key, bytes(32), 1))
    assert wrong == 13
    n0, h0 = mine(0, ZERO32, nobody.public_key, 0)
    assert await chain.sim_error(helper, "work", chain.work_args(nobody.public_key, h0, n0)) == 9

    # real work, submitted by someone else (work needs no signature from the farmer)
    await chain.close(2)
    n1, h1 = mine(0, ZERO32, a.public_key, 1)
    acc = await chain.rpc.load_account(helper.public_key)
    sim = await chain.rpc.simulate_transaction(
        TransactionBuilder(acc, chain.passphrase, base_fee=100)
        .append_invoke_contract_function_op(
            chain.farm, "work", chain.work_args(a.public_key, h1, n1)
        )
        .add_time_bounds(*(await chain.bounds()))
        .build()
    )
    assert sim.error is None and sim.results is not None
    # simulation runs at the next ledger: the gap it returns is the one a close now gives
    assert scval.from_uint32(xdr.SCVal.from_xdr(sim.results[0].xdr)) == 3
    assert sim.results[0].auth == []  # work needs no authorization
    out = await chain.call(helper, "work", chain.work_args(a.public_key, h1, n1))
    assert out.ok
    assert out.res.ledger is not None
    gap = out.res.ledger - plant_ledger
    assert gap == 3
    assert out.return_value.type == xdr.SCValType.SCV_U32
    assert scval.from_uint32(out.return_value) == gap
    assert await chain.pail(a.public_key, 0) == {
        "sequence": plant_ledger,
        "gap": gap,
        "stake": 4 * XLM,
        "zeros": 1,
    }
    blk = await chain.block(0)
    assert blk is not None
    assert blk["staked_total"] == 0  # A's own stake left staked_total with its first work
    assert blk["normalized_total"] == 3  # every term is 1 in a block with empty ranges
    fb = await chain.farm_block()
    assert fb["entropy"] == h1
    assert (fb["min_gap"], fb["max_gap"], fb["min_zeros"], fb["max_zeros"]) == (gap, gap, 1, 1)

    # the hash is checked before the zero count: a wrong hash on a resubmission is #13
    assert await chain.sim_error(helper, "work", chain.work_args(a.public_key, ZERO32, 5)) == 13
    # resubmission needs strictly more zeros
    same_n, same_h = mine(0, ZERO32, a.public_key, 1, start=n1 + 1)
    assert await chain.sim_error(helper, "work", chain.work_args(a.public_key, same_h, same_n)) == 7
    fewer_n, fewer_h = mine(0, ZERO32, a.public_key, 0)
    assert (
        await chain.sim_error(helper, "work", chain.work_args(a.public_key, fewer_h, fewer_n)) == 7
    )
    more_n, more_h = mine(0, ZERO32, a.public_key, 2)
    out = await chain.call(helper, "work", chain.work_args(a.public_key, more_h, more_n))
    assert out.ok
    assert out.res.ledger is not None
    assert scval.from_uint32(out.return_value) == out.res.ledger - plant_ledger
    pail = await chain.pail(a.public_key, 0)
    assert pail is not None
    assert (pail["gap"], pail["zeros"]) == (out.res.ledger - plant_ledger, 2)
    assert (await chain.farm_block())["entropy"] == more_h
    assert (await chain.block(0) or {})["normalized_total"] == 3


async def test_farming_blocks_and_rewards() -> None:
    """Three blocks: the first sets the ranges, the second is farmed and checked against the
    outsider's own books (normalisation, resubmission bookkeeping, reward, stake), the third
    closes the second. Started at a late index so the reward has decayed."""
    start = V2_GENESIS_BLOCK + 3 * BLOCKS_PER_MONTH + 11
    async with devnet(genesis_farm_index=start) as chain:
        p, q, a, b, c, d, opener, closer, helper = (Keypair.random() for _ in range(9))
        await chain.fund(p, q, a, b, c, d, opener, closer, helper)
        await chain.trust_and_mint((p, 100 * XLM), (a, 100 * XLM), (b, XLM), (c, 100 * XLM), (d, 0))
        bs = chain.info["block_seconds"]

        # ---- block k: observed ranges gap 1..5, stake 0..6 KALE, zeros 0..3
        await chain.next_close_at((await chain.farm_block())["timestamp"] + bs)
        await chain.plant(opener, 0)
        k = await chain.farm_index()
        assert k >= start
        kb = await chain.block(k)
        assert kb is not None
        entropy_k = kb["entropy"]
        await chain.plant(p, 6 * XLM)
        await chain.plant(q, 0)
        p_seq = (await chain.pail(p.public_key, k) or {})["sequence"]
        assert p_seq is not None
        n, h = mine(k, entropy_k, p.public_key, 3)
        out = await chain.call(helper, "work", chain.work_args(p.public_key, h, n))
        assert out.ok
        assert out.res.ledger == p_seq + 2  # gap 2 (q's plant closed a ledger in between)
        await chain.close(2)
        n, h = mine(k, entropy_k, q.public_key, 0)
        out = await chain.call(helper, "work", chain.work_args(q.public_key, h, n))
        assert out.ok and scval.from_uint32(out.return_value) == 4
        n, h_last = mine(k, entropy_k, opener.public_key, 1)
        out = await chain.call(helper, "work", chain.work_args(opener.public_key, h_last, n))
        assert out.ok
        opener_gap = scval.from_uint32(out.return_value)
        gaps = [2, 4, opener_gap]
        fb = await chain.farm_block()
        assert (fb["min_gap"], fb["max_gap"]) == (min(gaps), max(gaps))
        assert (fb["min_zeros"], fb["max_zeros"]) == (0, 3)
        assert (fb["min_stake"], fb["max_stake"]) == (0, 6 * XLM)
        assert fb["entropy"] == h_last

        # ---- block k+1 opens; its ranges and entropy come from block k
        await chain.next_close_at(fb["timestamp"] + bs)
        await chain.plant(a, 5 * XLM)
        assert await chain.farm_index() == k + 1
        blk = await chain.block(k + 1)
        assert blk is not None
        stats = Stats(min(gaps), max(gaps), 0, 6 * XLM, 0, 3)
        assert stats_of(blk) == stats
        assert blk["entropy"] == h_last
        entropy = blk["entropy"]
        books = Books(k + 1, stats)
        books.plant(
            a.public_key, 5 * XLM, (await chain.pail(a.public_key, k + 1) or {})["sequence"] or 0
        )
        for kp, stake in ((b, XLM), (c, 2 * XLM), (d, 0)):
            out = await chain.plant(kp, stake)
            assert out.res.ledger is not None
            books.plant(kp.public_key, stake, out.res.ledger)
        await chain.close(3)

        async def work(kp: Keypair, zeros: int) -> int:
            n, h = mine(k + 1, entropy, kp.public_key, zeros, start=1000 * zeros)
            out = await chain.call(helper, "work", chain.work_args(kp.public_key, h, n))
            assert out.ok, out.contract_codes()
            gap = scval.from_uint32(out.return_value)
            assert out.res.ledger is not None
            assert gap == out.res.ledger - books.pails[kp.public_key]["sequence"]  # type: ignore[operator]
            books.work(kp.public_key, gap, zeros)
            now = await chain.block(k + 1)
            assert now is not None
            assert (now["normalized_total"], now["staked_total"]) == (
                books.normalized_total,
                books.staked_total,
            )
            return gap

        await work(a, 2)
        await work(d, 1)
        total_before = books.normalized_total
        await chain.close(2)
        await work(d, 3)  # resubmission with more zeros, at a larger gap
        n_old = normalise(stats, 0, 0, 1)[2]
        n_new = normalise(stats, 0, 0, 3)[2]
        assert books.normalized_total - total_before == n_new - n_old
        await work(b, 0)
        # C planted 2 KALE and never works: its stake stays in staked_total
        assert books.staked_total == 2 * XLM

        # harvest is not possible while the block is current
        assert (
            await chain.sim_error(helper, "harvest", chain.harvest_args(a.public_key, k + 1)) == 14
        )
        # no pail beats not-ready; not-ready beats no work
        ghost = Keypair.random().public_key
        assert await chain.sim_error(helper, "harvest", chain.harvest_args(ghost, k + 1)) == 9
        assert (
            await chain.sim_error(helper, "harvest", chain.harvest_args(c.public_key, k + 1)) == 14
        )
        assert (
            await chain.sim_error(helper, "harvest", chain.harvest_args(a.public_key, k + 7)) == 11
        )
        last_entropy = (await chain.farm_block())["entropy"]

        # ---- block k+2 opens
        fb = await chain.farm_block()
        await chain.next_close_at(fb["timestamp"] + bs)
        await chain.plant(closer, 0)
        assert await chain.farm_index() == k + 2
        assert (await chain.block(k + 2) or {})["entropy"] == last_entropy
        # work for the old block now fails: the pail for the current block is missing
        n, h = mine(k + 1, entropy, c.public_key, 0)
        assert await chain.sim_error(helper, "work", chain.work_args(c.public_key, h, n)) == 9
        assert (
            await chain.sim_error(helper, "harvest", chain.harvest_args(c.public_key, k + 1)) == 10
        )

        # harvests: anyone may submit; reward by the formula, stake returned, pail removed
        paid = 0
        for kp in (a, b, d):
            stake = books.pails[kp.public_key]["stake"]
            assert stake is not None
            expect = books.reward(kp.public_key)
            before = await chain.kale_balance(kp.public_key)
            out = await chain.call(helper, "harvest", chain.harvest_args(kp.public_key, k + 1))
            assert out.ok
            assert out.return_value.type == xdr.SCValType.SCV_I128
            assert scval.from_int128(out.return_value) == expect
            assert await chain.kale_balance(kp.public_key) == before + expect + stake
            assert await chain.pail(kp.public_key, k + 1) is None
            paid += expect
            assert out.res.ledger is not None
            ev = await chain.rpc.get_events(
                start_ledger=out.res.ledger,
                filters=[
                    EventFilter(event_type=EventFilterType.CONTRACT, contract_ids=[chain.sac])
                ],
            )
            mints = [e for e in ev.events if e.transaction_hash == out.res.transaction_hash]
            assert len(mints) == 1
            topics = [xdr.SCVal.from_xdr(t) for t in mints[0].topic]
            assert scval.from_symbol(topics[0]) == "mint"
            assert len(topics) == 3  # protocol 23: no admin topic
            assert scval.from_address(topics[1]).address == kp.public_key
            assert scval.from_int128(xdr.SCVal.from_xdr(mints[0].value)) == expect + stake
        assert block_reward(k + 1) < BLOCK_REWARD
        # D resubmitted at a larger gap: normalized_total kept D's first gap term while the
        # harvest uses the final gap, so the contract pays out more than the block holds
        assert paid > block_reward(k + 1) + books.staked_total
        assert (
            await chain.sim_error(helper, "harvest", chain.harvest_args(a.public_key, k + 1)) == 9
        )
        # block k's pails are still harvestable; Q has no KALE trustline, so the asset
        # contract refuses the mint (#13) and the pail stays
        out = await chain.call(helper, "harvest", chain.harvest_args(p.public_key, k))
        assert out.ok and scval.from_int128(out.return_value) > 0
        code = await chain.sim_error(helper, "harvest", chain.harvest_args(q.public_key, k))
        assert code == 13
        assert await chain.pail(q.public_key, k) is not None


async def test_pause_rules() -> None:
    async with devnet() as chain:
        home = homesteader_keypair()
        assert home.public_key == chain.info["homesteader"]
        a, b, helper = Keypair.random(), Keypair.random(), Keypair.random()
        await chain.fund(a, b, helper)
        await chain.friendbot(home.public_key)
        await chain.close()
        await chain.plant(a, 0)
        await chain.close()

        assert (await chain.call(home, "pause", [])).ok
        assert scval.from_bool((await chain.instance())["FarmPaused"]) is True
        assert await chain.sim_error(home, "pause", []) == 4
        plant_b = [scval.to_address(b.public_key), scval.to_int128(0)]
        assert await chain.sim_error(b, "plant", plant_b) == 4
        # the amount is checked before the pause
        assert await chain.sim_error(b, "plant", [plant_b[0], scval.to_int128(-5)]) == 6
        # work does not look at the pause
        n, h = mine(0, ZERO32, a.public_key, 0)
        assert (await chain.call(helper, "work", chain.work_args(a.public_key, h, n))).ok
        assert (await chain.call(home, "unpause", [])).ok
        assert await chain.sim_error(home, "unpause", []) == 5
        assert (await chain.plant(b, 0)).ok


async def test_removed_block_is_replaced_by_the_next_index() -> None:
    """`remove_block` stands in for eviction: the next plant bumps the index and builds the new
    block from FarmBlock as it is, without resetting FarmBlock (its timestamp stays)."""
    async with devnet() as chain:
        home = homesteader_keypair()
        a, b, c, helper = (Keypair.random() for _ in range(4))
        await chain.fund(a, b, c, helper, home)
        t0 = (await chain.farm_block())["timestamp"]
        await chain.next_close_at(t0 + chain.info["block_seconds"])
        await chain.plant(a, 0)
        assert await chain.farm_index() == 1
        entropy1 = (await chain.block(1) or {})["entropy"]
        await chain.close()
        n, h = mine(1, entropy1, a.public_key, 1)
        out = await chain.call(helper, "work", chain.work_args(a.public_key, h, n))
        assert out.ok
        gap = scval.from_uint32(out.return_value)
        fb = await chain.farm_block()

        assert (await chain.call(home, "remove_block", [scval.to_uint32(1)])).ok
        assert await chain.block(1) is None
        assert await chain.pail(a.public_key, 1) is not None
        await chain.plant(b, 0)
        assert await chain.farm_index() == 2
        blk2 = await chain.block(2)
        assert blk2 is not None
        assert blk2["entropy"] == h == fb["entropy"]
        assert stats_of(blk2) == Stats(gap, gap, 0, 0, 1, 1)
        after = await chain.farm_block()
        assert after["timestamp"] == fb["timestamp"] == t0 + chain.info["block_seconds"]
        assert after["entropy"] == h and (after["min_gap"], after["max_gap"]) == (gap, gap)
        # the removed block's pail can no longer be harvested
        code = await chain.sim_error(helper, "harvest", chain.harvest_args(a.public_key, 1))
        assert code == 11
        await chain.plant(c, 0)
        assert await chain.farm_index() == 2


async def test_contract_address_farmer(chain: Chain) -> None:
    """A C… farmer: the devnet cannot deploy a custom account contract to authorize its plant,
    but the farm treats the address like any other (no pail: #9), and the hash binds the
    contract id as the last 32 bytes of its address XDR."""
    helper = Keypair.random()
    await chain.fund(helper)
    await chain.plant(helper, 0)
    c_farmer = chain.sac
    tail = Address(c_farmer).to_xdr_sc_address().to_xdr_bytes()[-32:]
    assert tail == Address(c_farmer).key
    n, h = mine(0, ZERO32, c_farmer, 0)
    assert await chain.sim_error(helper, "work", chain.work_args(c_farmer, h, n)) == 9


# ================================================================ as a new user runs it


def _farm_one_block_sync(url: str) -> None:
    """The docs' path: plain synchronous stellar-sdk against `kale-pool devnet`."""
    info = requests.get(f"{url}/devnet", timeout=30).json()
    passphrase, farm = info["network_passphrase"], info["farm_contract_id"]
    kale = Asset(info["asset_code"], info["asset_issuer"])
    rpc = SorobanServer(url)
    farmer, opener = Keypair.random(), Keypair.random()
    for kp in (farmer, opener):
        funded = requests.get(f"{url}/friendbot", params={"addr": kp.public_key}, timeout=60)
        assert funded.status_code == 200 and funded.json()["successful"], funded.text
    trust = (
        TransactionBuilder(rpc.load_account(farmer.public_key), passphrase, 100)
        .append_change_trust_op(kale)
        .set_timeout(60)
        .build()
    )
    trust.sign(farmer)
    assert rpc.poll_transaction(rpc.send_transaction(trust).hash).status.value == "SUCCESS"
    minted = requests.get(
        f"{url}/friendbot", params={"addr": farmer.public_key, "kale": "100000000"}, timeout=60
    )
    assert minted.status_code == 200, minted.text

    client = ContractClient(farm, url, passphrase)
    me = scval.to_address(farmer.public_key)

    def invoke(kp: Keypair, fn: str, args: list[xdr.SCVal]) -> xdr.SCVal:
        out = client.invoke(fn, args, source=kp.public_key, signer=kp).sign_and_submit()
        assert isinstance(out, xdr.SCVal)
        return out

    invoke(farmer, "plant", [me, scval.to_int128(30_000_000)])

    def instance() -> dict[str, Any]:
        got = rpc.get_contract_data(farm, xdr.SCVal(xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE))
        assert got is not None
        data = xdr.LedgerEntryData.from_xdr(got.xdr).contract_data
        assert data is not None and data.val.instance is not None
        storage = data.val.instance.storage or xdr.SCMap([])
        return {scval.to_native(e.key)[0]: scval.to_native(e.val) for e in storage.sc_map}

    index = instance().get("FarmIndex", 0)
    got = rpc.get_contract_data(farm, block_key(index), Durability.TEMPORARY)
    assert got is not None
    block = scval.to_native(xdr.LedgerEntryData.from_xdr(got.xdr).contract_data.val)  # type: ignore[union-attr]
    nonce = 7
    h = work_hash(index, nonce, block["entropy"], farmer.public_key)
    gap = scval.from_uint32(invoke(farmer, "work", [me, scval.to_bytes(h), scval.to_uint64(nonce)]))
    assert gap >= 1

    # the block ends only when someone plants block_seconds after it started
    opened_at = instance()["FarmBlock"]["timestamp"]
    while int(rpc.get_latest_ledger().close_time) < opened_at + info["block_seconds"]:
        time.sleep(0.2)
    invoke(opener, "plant", [scval.to_address(opener.public_key), scval.to_int128(0)])
    assert instance()["FarmIndex"] == index + 1
    reward = scval.from_int128(invoke(farmer, "harvest", [me, scval.to_uint32(index)]))
    # one farmer in a block with empty ranges: every term is 1, the whole reward is theirs
    assert reward == block_reward(index)
    line = rpc.get_ledger_entries(
        [
            xdr.LedgerKey(
                xdr.LedgerEntryType.TRUSTLINE,
                trust_line=xdr.LedgerKeyTrustLine(
                    farmer.xdr_account_id(), kale.to_trust_line_asset_xdr_object()
                ),
            )
        ]
    ).entries[0]
    balance = xdr.LedgerEntryData.from_xdr(line.xdr).trust_line.balance.int64  # type: ignore[union-attr]
    assert balance == 100_000_000 + reward
    client.server.close()
    rpc.close()


async def test_kale_pool_devnet_farms_a_block_for_a_synchronous_client() -> None:
    kale_pool = shutil.which("kale-pool", path=str(Path(sys.executable).parent))
    assert kale_pool is not None
    proc = await asyncio.create_subprocess_exec(
        kale_pool,
        *("devnet", "--port", "0", "--ledger-seconds", "1", "--block-seconds", "3"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        url = first.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), first
        async with aiohttp.ClientSession() as http, http.get(f"{url}/") as r:
            assert r.status == 405 and "POST JSON-RPC" in (await r.json())["detail"]
        await asyncio.wait_for(asyncio.to_thread(_farm_one_block_sync, url), 120)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
