"""What a farm transaction did, read back by its hash: whoever built, paid and sent it.

`read_farm_call` reads the call a transaction made at its top level: the pool checks a
pooler's claimed work this way (the transaction's ledger, that it is
`work(farmer, hash, nonce)` for the claimed farmer, hash and nonce, and the gap it
returned). `read_pail_changes` reads what a transaction did to the farm's storage, from
its result meta, whoever called the farm and however deep: the pails it created (plants)
and removed (harvests), which is how a harvest made from inside another contract's call
is recognised, and how a plant is located after its pail is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from stellar_sdk import Address, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.fee_bump_transaction_envelope import FeeBumpTransactionEnvelope
from stellar_sdk.operation import InvokeHostFunction
from stellar_sdk.soroban_rpc import GetTransactionResponse, GetTransactionStatus
from stellar_sdk.transaction_envelope import TransactionEnvelope

from kalepool.chain.client import ChainClient
from kalepool.chain.errors import ChainDataError, NotAFarmCallError
from kalepool.chain.farm_state import Pail, decode_pail
from kalepool.chain.submit import SignedTx, TxOutcome, TxStatus, contract_call, outcome_of

FUNCTIONS = ("plant", "work", "harvest")
_SV = stellar_xdr.SCValType
_SA = stellar_xdr.SCAddressType
_CT = stellar_xdr.LedgerEntryChangeType
_DECODE_ERRORS = (ValueError, TypeError, IndexError, EOFError, AttributeError)


@dataclass(frozen=True, slots=True)
class FarmCall:
    """One applied call of the farm contract and what it returned."""

    tx_hash: str
    ledger: int
    succeeded: bool
    source: str  # the transaction's source account (of the inner one, under a fee bump)
    function: str  # "plant" | "work" | "harvest"
    farmer: str  # the farmer Address argument (G… or C…)
    amount: int | None = None  # plant: the stake
    hash: bytes | None = None  # work: the 32-byte hash
    nonce: int | None = None  # work: the nonce
    index: int | None = None  # harvest: the block index argument
    returned: int | None = None  # work: the gap (u32); harvest: the reward (i128)


@dataclass(frozen=True, slots=True)
class PailChanges:
    """What one applied transaction did to the farm's pails (any call, at any depth)."""

    tx_hash: str
    ledger: int
    succeeded: bool
    # The transaction's source account (of the inner one, under a fee bump): a harvest a
    # custodial account sent itself was signed with its key, which only the wallet holds.
    source: str
    created: tuple[Pail, ...]  # pails it opened (a plant): farmer, index, sequence, stake
    removed: tuple[Pail, ...]  # pails it removed (a harvest), as they were just before

    def created_for(self, farmer: str) -> list[Pail]:
        return [p for p in self.created if p.farmer == farmer]

    def removed_for(self, farmer: str) -> list[Pail]:
        return [p for p in self.removed if p.farmer == farmer]


async def _applied(
    client: ChainClient, tx_hash: str
) -> tuple[str, GetTransactionResponse, TransactionEnvelope] | None:
    """(hash, answer, inner envelope) of an applied transaction; None when the server does
    not know it. ChainDataError for an answer without envelope or ledger, an envelope that
    does not decode or hashes otherwise (another network)."""
    wanted = tx_hash.lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise ValueError(f"not a transaction hash: {tx_hash!r}")

    async def lookup() -> GetTransactionResponse:
        return await client.rpc.get_transaction(wanted)

    got = await client.call("getTransaction", lookup)
    if got.status == GetTransactionStatus.NOT_FOUND:
        return None
    if not got.envelope_xdr or got.ledger is None:
        raise ChainDataError(f"getTransaction {wanted}: the answer lacks the envelope or ledger")
    passphrase = client.config.network_passphrase
    try:
        envelope = TransactionBuilder.from_xdr(got.envelope_xdr, passphrase)
    except _DECODE_ERRORS:
        raise ChainDataError(f"transaction {wanted}: its envelope does not decode") from None
    if envelope.hash_hex() != wanted:
        raise ChainDataError(
            f"transaction {wanted}: its envelope hashes otherwise on this network: "
            "is the server on another network?"
        )
    inner = (
        envelope.transaction.inner_transaction_envelope
        if isinstance(envelope, FeeBumpTransactionEnvelope)
        else envelope
    )
    return wanted, got, inner


async def read_farm_call(client: ChainClient, tx_hash: str) -> FarmCall | None:
    """The farm call transaction `tx_hash` made, or None when the server does not know it
    (never applied, or older than its history window).

    Raises NotAFarmCallError (a ChainDataError) when the transaction is something else
    than one `plant`, `work` or `harvest` call of the configured farm
    (`client.config.farm_contract_id`) at its top level; a plain ChainDataError when the
    answer cannot be read (no envelope, an envelope that does not decode, or one signed
    for another network); ChainUnavailableError when the server cannot be reached;
    ValueError for a hash that is not 64 hex digits (before any request).
    """
    found = await _applied(client, tx_hash)
    if found is None:
        return None
    wanted, got, inner = found
    ops = inner.transaction.operations
    call = (
        contract_call(ops[0]) if len(ops) == 1 and isinstance(ops[0], InvokeHostFunction) else None
    )
    farm = client.config.farm_contract_id
    if call is None or call.contract_id != farm or call.function not in FUNCTIONS:
        what = (
            f"{call.function} on {call.contract_id}"
            if call is not None
            else f"{len(ops)} operation(s), not one contract call"
        )
        raise NotAFarmCallError(
            f"transaction {wanted} is not a plant, work or harvest call of the farm {farm}: {what}"
        )
    try:
        args = _arguments(call.function, call.args)
    except ValueError as exc:
        raise NotAFarmCallError(f"transaction {wanted}: {call.function} {exc}") from None
    assert got.ledger is not None  # _applied checked it
    outcome = outcome_of(client, SignedTx.describing(inner), got)
    return FarmCall(
        tx_hash=wanted,
        ledger=got.ledger,
        succeeded=outcome.status is TxStatus.SUCCESS,
        source=inner.transaction.source.account_id,
        function=call.function,
        farmer=args.farmer,
        amount=args.amount,
        hash=args.hash,
        nonce=args.nonce,
        index=args.index,
        returned=outcome.value,
    )


@dataclass(frozen=True, slots=True)
class _Arguments:
    farmer: str
    amount: int | None = None
    hash: bytes | None = None
    nonce: int | None = None
    index: int | None = None


_SIGNATURES = {
    "plant": ("(farmer: Address, amount: i128)", (_SV.SCV_ADDRESS, _SV.SCV_I128)),
    "work": (
        "(farmer: Address, hash: BytesN<32>, nonce: u64)",
        (_SV.SCV_ADDRESS, _SV.SCV_BYTES, _SV.SCV_U64),
    ),
    "harvest": ("(farmer: Address, index: u32)", (_SV.SCV_ADDRESS, _SV.SCV_U32)),
}


def _arguments(function: str, args: list[stellar_xdr.SCVal]) -> _Arguments:
    """The call's arguments; ValueError when they are not the farm's (such a call fails)."""
    signature, types = _SIGNATURES[function]
    farmer = args[0].address if args else None
    if (
        tuple(a.type for a in args) != types
        or farmer is None
        or farmer.type not in (_SA.SC_ADDRESS_TYPE_ACCOUNT, _SA.SC_ADDRESS_TYPE_CONTRACT)
    ):
        raise ValueError(f"arguments are not {signature}")
    who = str(Address.from_xdr_sc_address(farmer).address)
    if function == "plant":
        return _Arguments(who, amount=scval.from_int128(args[1]))
    if function == "work":
        digest = scval.from_bytes(args[1])
        if len(digest) != 32:
            raise ValueError(f"arguments are not {signature}: the hash has {len(digest)} bytes")
        return _Arguments(who, hash=digest, nonce=scval.from_uint64(args[2]))
    return _Arguments(who, index=scval.from_uint32(args[1]))


# --- what a transaction did to the farm's pails ------------------------------------------


async def read_pail_changes(client: ChainClient, tx_hash: str) -> PailChanges | None:
    """The farm pails transaction `tx_hash` created and removed, from its result meta;
    None when the server does not know the transaction (never applied, or older than its
    history window).

    It reads storage, not calls: a harvest made from inside another contract's call, by
    anyone, shows as the removal of `Pail(farmer, index)` all the same. A failed
    transaction changed nothing. Raises ChainDataError when the answer cannot be read (no
    envelope or meta, XDR that does not decode, a pail that is not the farm's struct, a
    removed pail without its state before, another network); ChainUnavailableError when
    the server cannot be reached; ValueError for a hash that is not 64 hex digits.
    """
    found = await _applied(client, tx_hash)
    if found is None:
        return None
    wanted, got, envelope = found
    assert got.ledger is not None  # _applied checked it
    succeeded = got.status == GetTransactionStatus.SUCCESS
    if not got.result_meta_xdr:
        raise ChainDataError(f"getTransaction {wanted}: the answer lacks the result meta")
    try:
        meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
    except _DECODE_ERRORS:
        raise ChainDataError(f"transaction {wanted}: its result meta does not decode") from None
    try:
        created, removed = pail_changes(meta, client.config.farm_contract_id)
    except ChainDataError as exc:
        raise ChainDataError(f"transaction {wanted}: {exc}") from None
    source = envelope.transaction.source.account_id
    return PailChanges(wanted, got.ledger, succeeded, source, created, removed)


def pail_changes_of(outcome: TxOutcome, farm: str) -> PailChanges | None:
    """What an applied transaction the caller followed to its ledger did to the farm's
    pails, from the meta its outcome already holds (no second request: `read_pail_changes`
    is for a transaction known only by hash). None when the outcome carries no meta (not
    applied, or the server gave none); ChainDataError as `read_pail_changes`."""
    if outcome.meta is None or outcome.ledger is None:
        return None
    succeeded = outcome.status is TxStatus.SUCCESS
    try:
        created, removed = pail_changes(outcome.meta, farm)
    except ChainDataError as exc:
        raise ChainDataError(f"transaction {outcome.hash}: {exc}") from None
    return PailChanges(outcome.hash, outcome.ledger, succeeded, outcome.tx.source, created, removed)


def pail_changes(
    meta: stellar_xdr.TransactionMeta, farm: str
) -> tuple[tuple[Pail, ...], tuple[Pail, ...]]:
    """(created, removed) `Pail(farmer, index)` entries of the farm `farm` in the meta's
    operation changes (TransactionMeta v1 to v4).

    stellar-core writes an entry's change as CREATED (the new entry), or as its STATE
    just before followed by UPDATED or REMOVED (the key only); an entry restored from
    the archive shows as RESTORED in place of STATE. So a removed pail is read from the
    STATE (or RESTORED) entry of the same key that precedes its REMOVED. Raises
    ChainDataError for a pail entry that does not decode.
    """
    created: list[Pail] = []
    removed: list[Pail] = []
    before: dict[bytes, stellar_xdr.LedgerEntry] = {}
    for change in _operation_changes(meta):
        if change.type == _CT.LEDGER_ENTRY_CREATED and change.created is not None:
            pail = _pail_of_entry(change.created, farm)
            if pail is not None:
                created.append(pail)
        elif change.type == _CT.LEDGER_ENTRY_STATE and change.state is not None:
            before[_entry_key(change.state)] = change.state
        elif change.type == _CT.LEDGER_ENTRY_RESTORED and change.restored is not None:
            before[_entry_key(change.restored)] = change.restored
        elif change.type == _CT.LEDGER_ENTRY_REMOVED and change.removed is not None:
            where = _pail_key(change.removed, farm)
            if where is None:
                continue
            state = before.get(change.removed.to_xdr_bytes())
            if state is None:
                raise ChainDataError(
                    f"Pail({where[0]}, {where[1]}) is removed without its state before"
                )
            pail = _pail_of_entry(state, farm)
            if pail is None:
                raise ChainDataError(f"Pail({where[0]}, {where[1]}) had no pail before")
            removed.append(pail)
    return tuple(created), tuple(removed)


def _operation_changes(meta: stellar_xdr.TransactionMeta) -> list[stellar_xdr.LedgerEntryChange]:
    """Every operation's ledger entry changes, in order (a contract call's storage writes
    are its operation's; the changes before and after are fees and sequence numbers)."""
    body = meta.v4 or meta.v3 or meta.v2 or meta.v1
    operations = body.operations if body is not None else meta.operations or []
    return [change for op in operations for change in op.changes.ledger_entry_changes]


def _entry_key(entry: stellar_xdr.LedgerEntry) -> bytes:
    """The LedgerKey bytes of a contract data entry (b"" for any other entry)."""
    data = entry.data.contract_data
    if data is None:
        return b""
    key = stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(data.contract, data.key, data.durability),
    )
    return bytes(key.to_xdr_bytes())


def _pail_address(
    contract: stellar_xdr.SCAddress,
    key: stellar_xdr.SCVal,
    durability: stellar_xdr.ContractDataDurability,
    farm: str,
) -> tuple[str, int] | None:
    """(farmer, index) when this is `Pail(farmer, index)` in the farm's temporary storage."""
    if durability != stellar_xdr.ContractDataDurability.TEMPORARY:
        return None
    try:
        if Address.from_xdr_sc_address(contract).address != farm:
            return None
        parts = scval.from_vec(key)
        if len(parts) != 3 or scval.from_symbol(parts[0]) != "Pail":
            return None
        farmer = parts[1].address
        if farmer is None or farmer.type not in (
            _SA.SC_ADDRESS_TYPE_ACCOUNT,
            _SA.SC_ADDRESS_TYPE_CONTRACT,
        ):
            return None
        return str(Address.from_xdr_sc_address(farmer).address), scval.from_uint32(parts[2])
    except (ValueError, TypeError, AttributeError):
        return None  # another key of the farm's storage


def _pail_key(key: stellar_xdr.LedgerKey, farm: str) -> tuple[str, int] | None:
    data = key.contract_data
    if data is None:
        return None
    return _pail_address(data.contract, data.key, data.durability, farm)


def _pail_of_entry(entry: stellar_xdr.LedgerEntry, farm: str) -> Pail | None:
    data = entry.data.contract_data
    if data is None:
        return None
    where = _pail_address(data.contract, data.key, data.durability, farm)
    if where is None:
        return None
    return decode_pail(where[0], where[1], data.val)
