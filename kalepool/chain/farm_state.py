"""Reading the farm and accounts with `getLedgerEntries`.

The farm has no getters. Its state is where the contract stores it (docs/protocol.md):
instance storage holds `FarmIndex` (absent until the first rollover: 0), `FarmBlock`
and `FarmPaused` under `Vec[Symbol(name)]` keys; temporary storage holds `Block(i)` under
`Vec[Symbol("Block"), U32(i)]` and `Pail(farmer, i)` under
`Vec[Symbol("Pail"), Address, U32(i)]`. Structs are symbol-keyed maps, `None` is `Void`.
The same instance entry names the contract's code: its executable is the Wasm hash an
`upgrade` replaces, which the pool's contract watch compares with what an operator
acknowledged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stellar_sdk import Address, Keypair, StrKey, scval
from stellar_sdk import xdr as stellar_xdr

from kalepool import protocol
from kalepool.chain.client import ChainClient
from kalepool.chain.errors import ChainDataError

# getLedgerEntries takes at most this many keys per call.
MAX_KEYS_PER_CALL = 200


@dataclass(frozen=True, slots=True)
class FarmBlock:
    """The farm's running block statistics (instance storage `FarmBlock`).

    While nothing has been observed, min/max hold the contract's sentinels (`u32::MAX`,
    `i128::MAX`, 0, `i128::MIN`); `entropy` is the hash of the latest successful work, which
    the next block will copy.
    """

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A block (temporary storage `Block(index)`): the entropy miners hash against and the
    ranges its works are normalised with (copied from the previous block's statistics)."""

    index: int
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
    live_until_ledger: int | None = None

    def bounds(self) -> protocol.BlockBounds:
        """The normalisation ranges, for `kalepool.protocol.normalise`."""
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
    """A farmer's pail in a block (temporary storage `Pail(farmer, index)`)."""

    farmer: str
    index: int
    sequence: int  # the ledger the plant applied in
    gap: int | None  # set by work
    stake: int
    zeros: int | None  # set by work
    live_until_ledger: int | None = None

    @property
    def worked(self) -> bool:
        """Whether work was recorded (a pail without work cannot be harvested)."""
        return self.gap is not None and self.zeros is not None


@dataclass(frozen=True, slots=True)
class FarmInstance:
    """The farm's instance storage."""

    index: int  # FarmIndex (0 until the first rollover)
    farm_block: FarmBlock | None
    paused: bool
    homesteader: str | None
    asset_contract: str | None
    ledger: int  # the latest ledger when read
    # The instance's executable: the SHA-256 of the contract's Wasm (None for a built-in
    # executable such as a Stellar asset contract, never the farm's case).
    wasm_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class CurrentBlock:
    """The block farmers plant in now, as a block monitor needs it."""

    index: int
    timestamp: int  # when the block opened (FarmBlock.timestamp decides rollover)
    entropy: bytes | None  # Block(index).entropy; None until the block's first plant
    next_block_at: int  # the first close time at which a plant opens block index + 1
    paused: bool
    block: Block | None  # Block(index), None until it exists
    ledger: int  # the latest ledger when read
    wasm_hash: bytes | None = None  # the farm's code (FarmInstance.wasm_hash)

    def can_open_next(self, close_time: int) -> bool:
        """Whether a plant applied in a ledger closing at `close_time` opens the next block."""
        return close_time >= self.next_block_at

    def plant_target(self, close_time: int) -> int:
        """The only block a plant may name when the latest ledger closed at `close_time`.

        The contract's own rule: a plant opens block index + 1 once the current block is
        due (a block interval old) or its `Block` entry is gone (evicted); otherwise it
        lands in the current block. So the target is the current block while it is not
        due, and only the next one once it is: a plant naming the current block then
        would land in the next one. One rule for the pool and the wallet service alike.
        A plant sent for the target can still apply after it became due (no check can
        close that race): where its pail landed is read back from the chain.
        """
        if self.can_open_next(close_time) or (self.block is None and self.index > 0):
            return self.index + 1
        return self.index


@dataclass(frozen=True, slots=True)
class Trustline:
    """A classic trustline to KALE."""

    balance: int
    limit: int
    authorized: bool


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account's XLM side and its KALE trustline (None: no trustline)."""

    account_id: str
    xlm_balance: int
    sequence: int
    sub_entries: int
    kale: Trustline | None
    ledger: int


# --- ledger keys -----------------------------------------------------------------------


def _contract_data_key(
    contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(
            contract=Address(contract).to_xdr_sc_address(), key=key, durability=durability
        ),
    )


def instance_key(contract: str) -> stellar_xdr.LedgerKey:
    """The contract instance entry (persistent), which holds instance storage."""
    return _contract_data_key(
        contract,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
        stellar_xdr.ContractDataDurability.PERSISTENT,
    )


def block_key(farm: str, index: int) -> stellar_xdr.LedgerKey:
    """`Block(index)` in the farm's temporary storage."""
    _check_u32("block index", index)
    return _contract_data_key(
        farm,
        scval.to_vec([scval.to_symbol("Block"), scval.to_uint32(index)]),
        stellar_xdr.ContractDataDurability.TEMPORARY,
    )


def pail_key(farm: str, farmer: str, index: int) -> stellar_xdr.LedgerKey:
    """`Pail(farmer, index)` in the farm's temporary storage."""
    _check_u32("block index", index)
    return _contract_data_key(
        farm,
        scval.to_vec(
            [
                scval.to_symbol("Pail"),
                scval.to_address(check_address(farmer)),
                scval.to_uint32(index),
            ]
        ),
        stellar_xdr.ContractDataDurability.TEMPORARY,
    )


def account_key(account_id: str) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.ACCOUNT,
        account=stellar_xdr.LedgerKeyAccount(Keypair.from_public_key(account_id).xdr_account_id()),
    )


def trustline_key(client: ChainClient, account_id: str) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.TRUSTLINE,
        trust_line=stellar_xdr.LedgerKeyTrustLine(
            Keypair.from_public_key(account_id).xdr_account_id(),
            client.config.asset.to_trust_line_asset_xdr_object(),
        ),
    )


def sac_balance_key(client: ChainClient, contract: str) -> stellar_xdr.LedgerKey:
    """A contract's KALE balance entry in the asset contract (persistent `Balance(addr)`)."""
    return _contract_data_key(
        client.config.sac_contract_id,
        scval.to_vec([scval.to_symbol("Balance"), scval.to_address(contract)]),
        stellar_xdr.ContractDataDurability.PERSISTENT,
    )


def check_address(address: str) -> str:
    """An account (G…) or contract (C…) address, or a clear ValueError."""
    if not isinstance(address, str) or not (
        StrKey.is_valid_ed25519_public_key(address) or StrKey.is_valid_contract(address)
    ):
        raise ValueError(f"not a Stellar account or contract address: {address!r}")
    return address


def check_account(account_id: str) -> str:
    """An account address (G…), or a clear ValueError."""
    if not isinstance(account_id, str) or not StrKey.is_valid_ed25519_public_key(account_id):
        raise ValueError(f"not a Stellar account address (G…): {account_id!r}")
    return account_id


def _check_u32(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= protocol.U32_MAX:
        raise ValueError(f"{what} must be an integer in 0..{protocol.U32_MAX}, got {value!r}")


# --- fetching --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    data: stellar_xdr.LedgerEntryData
    live_until: int | None


async def get_entries(
    client: ChainClient, keys: Sequence[stellar_xdr.LedgerKey]
) -> tuple[list[_Entry | None], int]:
    """The entries for `keys`, in order (None where absent), and the latest ledger."""
    found: dict[bytes, _Entry] = {}
    latest = 0
    for start in range(0, len(keys), MAX_KEYS_PER_CALL):
        chunk = list(keys[start : start + MAX_KEYS_PER_CALL])
        got = await client.call(
            "getLedgerEntries", functools.partial(client.rpc.get_ledger_entries, chunk)
        )
        latest = max(latest, got.latest_ledger)
        for item in got.entries or []:
            # Match by the key's canonical bytes, not by the server's base64 spelling.
            key = stellar_xdr.LedgerKey.from_xdr(item.key).to_xdr_bytes()
            found[key] = _Entry(
                stellar_xdr.LedgerEntryData.from_xdr(item.xdr), item.live_until_ledger
            )
    return [found.get(key.to_xdr_bytes()) for key in keys], latest


# --- decoding --------------------------------------------------------------------------


def _struct(
    val: stellar_xdr.SCVal, fields: Iterable[str], what: str
) -> dict[str, stellar_xdr.SCVal]:
    try:
        raw = scval.from_map(val)
        out = {scval.from_symbol(k): v for k, v in raw.items()}
    except ValueError as exc:
        raise ChainDataError(f"{what} is not a struct: {exc}") from None
    expected = set(fields)
    if set(out) != expected:
        raise ChainDataError(f"{what} has fields {sorted(out)}, expected {sorted(expected)}")
    return out


def _decode(what: str, fn: object, val: stellar_xdr.SCVal) -> int:
    try:
        result = fn(val)  # type: ignore[operator]
    except ValueError as exc:
        raise ChainDataError(f"{what}: {exc}") from None
    assert isinstance(result, int)
    return result


def _option_u32(what: str, val: stellar_xdr.SCVal) -> int | None:
    if val.type == stellar_xdr.SCValType.SCV_VOID:
        return None
    return _decode(what, scval.from_uint32, val)


def _bytes32(what: str, val: stellar_xdr.SCVal) -> bytes:
    try:
        raw = scval.from_bytes(val)
    except ValueError as exc:
        raise ChainDataError(f"{what}: {exc}") from None
    if len(raw) != 32:
        raise ChainDataError(f"{what} has {len(raw)} bytes, expected 32")
    return raw


def _block_fields(val: stellar_xdr.SCVal, what: str) -> dict[str, int | bytes]:
    f = _struct(val, protocol.BLOCK_FIELDS, what)
    u32, u64, i128 = scval.from_uint32, scval.from_uint64, scval.from_int128
    return {
        "timestamp": _decode(f"{what}.timestamp", u64, f["timestamp"]),
        "min_gap": _decode(f"{what}.min_gap", u32, f["min_gap"]),
        "min_stake": _decode(f"{what}.min_stake", i128, f["min_stake"]),
        "min_zeros": _decode(f"{what}.min_zeros", u32, f["min_zeros"]),
        "max_gap": _decode(f"{what}.max_gap", u32, f["max_gap"]),
        "max_stake": _decode(f"{what}.max_stake", i128, f["max_stake"]),
        "max_zeros": _decode(f"{what}.max_zeros", u32, f["max_zeros"]),
        "entropy": _bytes32(f"{what}.entropy", f["entropy"]),
        "staked_total": _decode(f"{what}.staked_total", i128, f["staked_total"]),
        "normalized_total": _decode(f"{what}.normalized_total", i128, f["normalized_total"]),
    }


def decode_farm_block(val: stellar_xdr.SCVal) -> FarmBlock:
    """`FarmBlock` from its SCVal."""
    return FarmBlock(**_block_fields(val, "FarmBlock"))  # type: ignore[arg-type]


def decode_block(index: int, val: stellar_xdr.SCVal, live_until: int | None = None) -> Block:
    """`Block(index)` from its SCVal."""
    return Block(index=index, live_until_ledger=live_until, **_block_fields(val, f"Block({index})"))  # type: ignore[arg-type]


def decode_pail(
    farmer: str, index: int, val: stellar_xdr.SCVal, live_until: int | None = None
) -> Pail:
    """`Pail(farmer, index)` from its SCVal."""
    what = f"Pail({farmer}, {index})"
    f = _struct(val, protocol.PAIL_FIELDS, what)
    return Pail(
        farmer=farmer,
        index=index,
        sequence=_decode(f"{what}.sequence", scval.from_uint32, f["sequence"]),
        gap=_option_u32(f"{what}.gap", f["gap"]),
        stake=_decode(f"{what}.stake", scval.from_int128, f["stake"]),
        zeros=_option_u32(f"{what}.zeros", f["zeros"]),
        live_until_ledger=live_until,
    )


def _contract_value(entry: _Entry | None, what: str) -> stellar_xdr.SCVal | None:
    if entry is None:
        return None
    if entry.data.contract_data is None:
        raise ChainDataError(f"{what} is not contract data")
    return entry.data.contract_data.val


def decode_instance(data: stellar_xdr.LedgerEntryData, ledger: int) -> FarmInstance:
    """The farm's instance storage from its instance entry."""
    if data.contract_data is None or data.contract_data.val.instance is None:
        raise ChainDataError("the farm's instance entry holds no contract instance")
    instance = data.contract_data.val.instance
    storage = instance.storage
    executable = instance.executable
    wasm_hash = (
        bytes(executable.wasm_hash.hash)
        if executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM
        and executable.wasm_hash is not None
        else None
    )
    items: dict[str, stellar_xdr.SCVal] = {}
    for item in storage.sc_map if storage is not None else []:
        try:
            key = scval.from_vec(item.key)
            if len(key) != 1:
                continue  # not a unit variant of the farm's storage enum
            items[scval.from_symbol(key[0])] = item.val
        except ValueError:
            continue
    index = items.get("FarmIndex")
    farm_block = items.get("FarmBlock")
    paused = items.get("FarmPaused")
    homesteader = items.get("Homesteader")
    asset = items.get("HomesteadAsset")
    try:
        return FarmInstance(
            index=0 if index is None else _decode("FarmIndex", scval.from_uint32, index),
            farm_block=None if farm_block is None else decode_farm_block(farm_block),
            paused=False if paused is None else scval.from_bool(paused),
            homesteader=None if homesteader is None else scval.from_address(homesteader).address,
            asset_contract=None if asset is None else scval.from_address(asset).address,
            ledger=ledger,
            wasm_hash=wasm_hash,
        )
    except ValueError as exc:
        raise ChainDataError(f"farm instance storage: {exc}") from None


# --- reading the farm ------------------------------------------------------------------


async def read_farm(client: ChainClient) -> FarmInstance:
    """The farm's instance storage (FarmIndex, FarmBlock, paused, homesteader, asset) and
    its code's Wasm hash, in one read."""
    (entry,), latest = await get_entries(client, [instance_key(client.config.farm_contract_id)])
    if entry is None:
        raise ChainDataError(f"no farm contract instance at {client.config.farm_contract_id}")
    return decode_instance(entry.data, latest)


async def read_block(client: ChainClient, index: int) -> Block | None:
    """`Block(index)`, or None when it does not exist (not yet created, or evicted)."""
    (entry,), _ = await get_entries(client, [block_key(client.config.farm_contract_id, index)])
    val = _contract_value(entry, f"Block({index})")
    return None if val is None or entry is None else decode_block(index, val, entry.live_until)


async def read_pail(client: ChainClient, farmer: str, index: int) -> Pail | None:
    """`Pail(farmer, index)`, or None (never planted, harvested, or expired)."""
    return (await read_pails(client, [(farmer, index)]))[(farmer, index)]


async def read_pails(
    client: ChainClient, pails: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], Pail | None]:
    """Many pails at once (batched `getLedgerEntries`), keyed by (farmer, index)."""
    farm = client.config.farm_contract_id
    keys = [pail_key(farm, farmer, index) for farmer, index in pails]
    entries, _ = await get_entries(client, keys)
    out: dict[tuple[str, int], Pail | None] = {}
    for (farmer, index), entry in zip(pails, entries, strict=True):
        val = _contract_value(entry, f"Pail({farmer}, {index})")
        out[(farmer, index)] = (
            None
            if val is None or entry is None
            else decode_pail(farmer, index, val, entry.live_until)
        )
    return out


async def current_block(client: ChainClient) -> CurrentBlock:
    """The block being planted now: index, open time, entropy and when the next may open."""
    farm = await read_farm(client)
    if farm.farm_block is None:
        raise ChainDataError("the farm has no FarmBlock (not constructed?)")
    block = await read_block(client, farm.index)
    return CurrentBlock(
        index=farm.index,
        timestamp=farm.farm_block.timestamp,
        entropy=None if block is None else block.entropy,
        next_block_at=farm.farm_block.timestamp + client.config.block_seconds,
        paused=farm.paused,
        block=block,
        ledger=farm.ledger,
        wasm_hash=farm.wasm_hash,
    )


# --- accounts and balances -------------------------------------------------------------


async def read_account(client: ChainClient, account_id: str) -> AccountState | None:
    """XLM balance, sequence and KALE trustline of an account; None when it does not exist."""
    return (await read_accounts(client, [account_id]))[account_id]


async def read_accounts(
    client: ChainClient, account_ids: Sequence[str]
) -> dict[str, AccountState | None]:
    """Many accounts at once (batched `getLedgerEntries`: each account's entry and its
    KALE trustline, `MAX_KEYS_PER_CALL` keys a request), keyed by account id; None for
    one that does not exist."""
    for account_id in account_ids:
        check_account(account_id)
    keys: list[stellar_xdr.LedgerKey] = []
    for account_id in account_ids:
        keys += [account_key(account_id), trustline_key(client, account_id)]
    entries, latest = await get_entries(client, keys)
    out: dict[str, AccountState | None] = {}
    for i, account_id in enumerate(account_ids):
        out[account_id] = _account_state(account_id, entries[2 * i], entries[2 * i + 1], latest)
    return out


def _account_state(
    account_id: str, acc: _Entry | None, tl: _Entry | None, latest: int
) -> AccountState | None:
    if acc is None or acc.data.account is None:
        return None
    account = acc.data.account
    trust = None
    if tl is not None and tl.data.trust_line is not None:
        line = tl.data.trust_line
        trust = Trustline(
            balance=line.balance.int64,
            limit=line.limit.int64,
            authorized=bool(line.flags.uint32 & stellar_xdr.TrustLineFlags.AUTHORIZED_FLAG.value),
        )
    return AccountState(
        account_id=account_id,
        xlm_balance=account.balance.int64,
        sequence=account.seq_num.sequence_number.int64,
        sub_entries=account.num_sub_entries.uint32,
        kale=trust,
        ledger=latest,
    )


async def kale_balance(client: ChainClient, address: str) -> int | None:
    """The KALE balance the asset contract reports for an address, in stroops.

    For an account (G…) that is its trustline (None: no trustline, so it cannot hold KALE);
    for a contract (C…) its `Balance` entry in the asset contract (0 when it has none).
    """
    check_address(address)
    if StrKey.is_valid_ed25519_public_key(address):
        (tl,), _ = await get_entries(client, [trustline_key(client, address)])
        if tl is None or tl.data.trust_line is None:
            return None
        return int(tl.data.trust_line.balance.int64)
    (entry,), _ = await get_entries(client, [sac_balance_key(client, address)])
    val = _contract_value(entry, f"Balance({address})")
    if val is None:
        return 0
    fields = _struct(val, ("amount", "authorized", "clawback"), f"Balance({address})")
    return _decode(f"Balance({address}).amount", scval.from_int128, fields["amount"])
