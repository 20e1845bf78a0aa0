"""What a farm transaction did, read back by its hash: whoever built, paid and sent it.

The pool checks a pooler's claimed work this way (the transaction's ledger, that it is
`work(farmer, hash, nonce)` for the claimed farmer, hash and nonce, and the gap it
returned), and settles harvests someone else made.
"""

from __future__ import annotations

from dataclasses import dataclass

from stellar_sdk import Address, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.fee_bump_transaction_envelope import FeeBumpTransactionEnvelope
from stellar_sdk.operation import InvokeHostFunction
from stellar_sdk.soroban_rpc import GetTransactionResponse, GetTransactionStatus

from kalepool.chain.client import ChainClient
from kalepool.chain.errors import ChainDataError
from kalepool.chain.submit import SignedTx, TxStatus, contract_call, outcome_of

FUNCTIONS = ("plant", "work", "harvest")
_SV = stellar_xdr.SCValType
_SA = stellar_xdr.SCAddressType


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


async def read_farm_call(client: ChainClient, tx_hash: str) -> FarmCall | None:
    """The farm call transaction `tx_hash` made, or None when the server does not know it
    (never applied, or older than its history window).

    Raises ChainDataError when the transaction is something else than one `plant`, `work`
    or `harvest` call of the configured farm (`client.config.farm_contract_id`), or was
    signed for another network; ChainUnavailableError when the server cannot be reached;
    ValueError for a hash that is not 64 hex digits (before any request).
    """
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
    except (ValueError, TypeError, IndexError, EOFError):
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
        raise ChainDataError(
            f"transaction {wanted} is not a plant, work or harvest call of the farm {farm}: {what}"
        )
    try:
        args = _arguments(call.function, call.args)
    except ValueError as exc:
        raise ChainDataError(f"transaction {wanted}: {call.function} {exc}") from None
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
