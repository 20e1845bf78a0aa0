"""Building transactions: farm calls (`plant`, `work`, `harvest`), trustlines, KALE
payments and account closes, unsigned and ready to sign.

Every transaction gets time bounds from the chain's own clock: `min_time` is the latest
ledger's close time and `max_time` that plus `tx_timeout_seconds`. (The chain's clock,
not this machine's: a transaction is judged by ledger close times, and the bound must
bite on a devnet whose clock runs apart from the wall clock.)

Contract calls are simulated (`simulateTransaction`) and assembled with the footprint,
resources and fee the simulation reports. A simulation that fails with
`Error(Contract, #N)` raises :class:`ContractError` naming the contract that raised it.

Who signs what: the fee source signs the envelope. `plant` needs the farmer's
authorization: when the farmer is the fee source, the envelope signature covers it;
otherwise the farmer signs a Soroban authorization entry with :func:`authorize`.
`work` and `harvest` need no authorization, so anyone may pay for them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from stellar_sdk import Account, Address, Keypair, StrKey, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.auth import authorize_entry
from stellar_sdk.exceptions import AccountNotFoundException
from stellar_sdk.operation import InvokeHostFunction
from stellar_sdk.soroban_rpc import SimulateTransactionResponse
from stellar_sdk.transaction_envelope import TransactionEnvelope

from kalepool import protocol
from kalepool.amounts import exact_kale
from kalepool.chain.client import ChainClient
from kalepool.chain.errors import (
    AccountNotFoundError,
    SimulationError,
    make_contract_error,
    parse_simulation_error,
)
from kalepool.chain.farm_state import check_account, check_address, kale_balance

I64_MAX = 2**63 - 1


class TxKind(StrEnum):
    """What a transaction does, in the wallet API's words (`TxKind`). The wallet's
    database labels two of them by older names (`wallet_service.store` maps them)."""

    PLANT = "plant"
    WORK = "work"
    HARVEST = "harvest"
    TRANSFER = "transfer"  # KALE to another address (a payout)
    TRUSTLINE = "trustline"
    CLOSE = "close"  # all KALE out, the trustline removed, the account merged away


@dataclass(frozen=True, slots=True)
class UnsignedTx:
    """A transaction built (and for contract calls simulated and assembled), not yet signed.

    `needs_auth` lists the addresses whose Soroban authorization entries are still unsigned;
    :func:`authorize` clears them. `simulated_value` is what the simulation returned (for
    `work`, the gap it would get if applied in the next ledger).
    """

    envelope: TransactionEnvelope
    kind: TxKind
    source: str
    sequence: int
    min_time: int
    max_time: int
    needs_auth: tuple[str, ...] = ()
    function: str | None = None
    contract_id: str | None = None
    simulated_value: stellar_xdr.SCVal | None = None

    @property
    def fee(self) -> int:
        """The total fee the envelope offers (inclusion fee plus resource fee), in stroops."""
        return int(self.envelope.transaction.fee)


# --- the pieces every builder uses -------------------------------------------------------


async def _source_account(client: ChainClient, source: str | Account) -> Account:
    if isinstance(source, Account):
        check_account(source.account.account_id)
        return source
    check_account(source)
    try:
        return await client.call(
            "getLedgerEntries", functools.partial(client.rpc.load_account, source)
        )
    except AccountNotFoundException:
        raise AccountNotFoundError(source) from None


async def time_bounds(
    client: ChainClient, max_time: int | None = None, *, now: int | None = None
) -> tuple[int, int]:
    """(min_time, max_time) from the chain's clock: now and now + tx_timeout_seconds.
    `now`: a latest ledger's close time the caller has just read (no second read)."""
    if now is None:
        now = (await client.latest_ledger()).close_time
    if max_time is None:
        max_time = now + client.config.tx_timeout_seconds
    if max_time <= now:
        raise ValueError(f"max_time {max_time} is not after the latest ledger's close time {now}")
    return now, max_time


def _builder(client: ChainClient, account: Account, bounds: tuple[int, int]) -> TransactionBuilder:
    return TransactionBuilder(
        account, client.config.network_passphrase, base_fee=client.config.base_fee_stroops
    ).add_time_bounds(*bounds)


def _classic(
    kind: TxKind, account: Account, builder: TransactionBuilder, bounds: tuple[int, int]
) -> UnsignedTx:
    envelope = builder.build()
    return UnsignedTx(
        envelope=envelope,
        kind=kind,
        source=account.account.account_id,
        sequence=envelope.transaction.sequence,
        min_time=bounds[0],
        max_time=bounds[1],
    )


def unsigned_auth(envelope: TransactionEnvelope) -> tuple[str, ...]:
    """Addresses whose authorization entries in this envelope have no signature yet."""
    ops = envelope.transaction.operations
    if len(ops) != 1 or not isinstance(ops[0], InvokeHostFunction):
        return ()
    out: list[str] = []
    for entry in ops[0].auth:
        creds = entry.credentials.address or entry.credentials.address_v2
        if creds is None:
            continue  # the source account's own credentials: the envelope signature covers it
        if creds.signature.type == stellar_xdr.SCValType.SCV_VOID:
            out.append(Address.from_xdr_sc_address(creds.address).address)
    return tuple(out)


def _raise_for_simulation(
    client: ChainClient, contract_id: str, function: str, sim: SimulateTransactionResponse
) -> None:
    if sim.error is not None:
        host_error, number, raiser = parse_simulation_error(sim.error, sim.events)
        if number is not None:
            raise make_contract_error(
                number,
                raiser or contract_id,
                function,
                farm_id=client.config.farm_contract_id,
                asset_id=client.config.sac_contract_id,
            )
        raise SimulationError(function, host_error)
    if sim.restore_preamble is not None:
        # Archived persistent entries (mainnet's state archival): not something to paper over.
        raise SimulationError(function, "archived entries", "a RestoreFootprint is needed first")
    if not sim.results or sim.transaction_data is None or sim.min_resource_fee is None:
        raise SimulationError(function, "incomplete simulation answer")


async def _simulate_and_assemble(
    client: ChainClient, envelope: TransactionEnvelope, contract_id: str, function: str
) -> tuple[TransactionEnvelope, stellar_xdr.SCVal | None]:
    sim = await client.call(
        f"simulateTransaction({function})",
        functools.partial(client.rpc.simulate_transaction, envelope),
    )
    _raise_for_simulation(client, contract_id, function, sim)
    assert sim.results is not None
    # With the simulation given, prepare_transaction only assembles (no second request).
    prepared = await client.rpc.prepare_transaction(envelope, sim)
    raw = sim.results[0].xdr
    return prepared, (stellar_xdr.SCVal.from_xdr(raw) if raw else None)


async def invoke(
    client: ChainClient,
    kind: TxKind,
    source: str | Account,
    contract_id: str,
    function: str,
    args: Sequence[stellar_xdr.SCVal],
    *,
    max_time: int | None = None,
    now: int | None = None,
) -> UnsignedTx:
    """Build, simulate and assemble one contract call paid for by `source` (`now`: see
    `time_bounds`)."""
    account = await _source_account(client, source)
    bounds = await time_bounds(client, max_time, now=now)
    envelope = (
        _builder(client, account, bounds)
        .append_invoke_contract_function_op(contract_id, function, list(args))
        .build()
    )
    prepared, value = await _simulate_and_assemble(client, envelope, contract_id, function)
    return UnsignedTx(
        envelope=prepared,
        kind=kind,
        source=account.account.account_id,
        sequence=prepared.transaction.sequence,
        min_time=bounds[0],
        max_time=bounds[1],
        needs_auth=unsigned_auth(prepared),
        function=function,
        contract_id=contract_id,
        simulated_value=value,
    )


async def authorize(
    client: ChainClient, tx: UnsignedTx, signer: Keypair, *, valid_until_ledger: int | None = None
) -> UnsignedTx:
    """Sign `signer`'s Soroban authorization entries, then simulate again.

    The second simulation prices the signature check into the resources (the first ran
    without signatures). The authorization stays valid until `valid_until_ledger`; by
    default for as many ledgers as the transaction has seconds left (ledgers take at
    least a second), so it never lapses before the transaction's own time bound.
    """
    if signer.public_key not in tx.needs_auth:
        raise ValueError(f"{tx.kind.value} needs no authorization from {signer.public_key}")
    assert tx.contract_id is not None and tx.function is not None
    latest = await client.latest_ledger()
    if valid_until_ledger is None:
        valid_until_ledger = latest.sequence + max(tx.max_time - latest.close_time, 1) + 1
    envelope = copy.deepcopy(tx.envelope)
    op = envelope.transaction.operations[0]
    assert isinstance(op, InvokeHostFunction)
    signed: list[stellar_xdr.SorobanAuthorizationEntry] = []
    for entry in op.auth:
        creds = entry.credentials.address or entry.credentials.address_v2
        if creds is not None and Address.from_xdr_sc_address(creds.address).address == (
            signer.public_key
        ):
            entry = authorize_entry(
                entry, signer, valid_until_ledger, client.config.network_passphrase
            )
        signed.append(entry)
    op.auth = signed
    prepared, value = await _simulate_and_assemble(client, envelope, tx.contract_id, tx.function)
    return replace(tx, envelope=prepared, needs_auth=unsigned_auth(prepared), simulated_value=value)


# --- the farm ----------------------------------------------------------------------------


def _check_int(what: str, value: int, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return value


async def build_plant(
    client: ChainClient,
    farmer: str,
    amount: int,
    *,
    source: str | Account | None = None,
    max_time: int | None = None,
    now: int | None = None,
) -> UnsignedTx:
    """`plant(farmer, amount)`: open the farmer's pail, staking `amount` stroops of KALE.

    Paid by `source` (default: the farmer). When someone else pays, the result
    `needs_auth` the farmer: call :func:`authorize` with the farmer's key. `now`: the
    chain's clock just read (the plant's block check reads it), for the time bounds.
    """
    check_address(farmer)
    _check_int("plant amount", amount, 0, protocol.I128_MAX)
    return await invoke(
        client,
        TxKind.PLANT,
        farmer if source is None else source,
        client.config.farm_contract_id,
        "plant",
        [scval.to_address(farmer), scval.to_int128(amount)],
        max_time=max_time,
        now=now,
    )


async def build_work(
    client: ChainClient,
    farmer: str,
    hash_: bytes,
    nonce: int,
    *,
    source: str | Account,
    max_time: int | None = None,
) -> UnsignedTx:
    """`work(farmer, hash, nonce) -> gap`: no authorization, so any account may pay."""
    check_address(farmer)
    if not isinstance(hash_, bytes) or len(hash_) != 32:
        raise ValueError("work hash must be 32 bytes")
    _check_int("nonce", nonce, 0, protocol.U64_MAX)
    return await invoke(
        client,
        TxKind.WORK,
        source,
        client.config.farm_contract_id,
        "work",
        [scval.to_address(farmer), scval.to_bytes(hash_), scval.to_uint64(nonce)],
        max_time=max_time,
    )


async def build_harvest(
    client: ChainClient,
    farmer: str,
    index: int,
    *,
    source: str | Account,
    max_time: int | None = None,
) -> UnsignedTx:
    """`harvest(farmer, index) -> reward`: no authorization; the reward goes to the farmer."""
    check_address(farmer)
    _check_int("block index", index, 0, protocol.U32_MAX)
    return await invoke(
        client,
        TxKind.HARVEST,
        source,
        client.config.farm_contract_id,
        "harvest",
        [scval.to_address(farmer), scval.to_uint32(index)],
        max_time=max_time,
    )


# --- classic operations ------------------------------------------------------------------


async def build_trustline(
    client: ChainClient,
    account_id: str | Account,
    *,
    remove: bool = False,
    max_time: int | None = None,
) -> UnsignedTx:
    """ChangeTrust to KALE: add the trustline (maximum limit), or remove it (limit 0)."""
    account = await _source_account(client, account_id)
    bounds = await time_bounds(client, max_time)
    builder = _builder(client, account, bounds).append_change_trust_op(
        client.config.asset, limit="0" if remove else None
    )
    return _classic(TxKind.TRUSTLINE, account, builder, bounds)


async def build_payment(
    client: ChainClient,
    source: str | Account,
    destination: str,
    amount: int,
    *,
    max_time: int | None = None,
) -> UnsignedTx:
    """Pay `amount` stroops of KALE: a classic Payment to an account (G… or muxed M…), or
    the asset contract's `transfer` to a contract (C…)."""
    _check_int("payment amount", amount, 1, I64_MAX)
    if StrKey.is_valid_contract(destination):
        account = await _source_account(client, source)
        return await invoke(
            client,
            TxKind.TRANSFER,
            account,
            client.config.sac_contract_id,
            "transfer",
            [
                scval.to_address(account.account.account_id),
                scval.to_address(destination),
                scval.to_int128(amount),
            ],
            max_time=max_time,
        )
    if not (
        StrKey.is_valid_ed25519_public_key(destination)
        or StrKey.is_valid_med25519_public_key(destination)
    ):
        raise ValueError(f"not a payment destination (G…, M… or C…): {destination!r}")
    account = await _source_account(client, source)
    bounds = await time_bounds(client, max_time)
    builder = _builder(client, account, bounds).append_payment_op(
        destination, client.config.asset, exact_kale(amount)
    )
    return _classic(TxKind.TRANSFER, account, builder, bounds)


async def build_close(
    client: ChainClient,
    account_id: str | Account,
    destination: str,
    *,
    max_time: int | None = None,
) -> UnsignedTx:
    """Close an account into `destination` in one transaction: a Payment of all its KALE
    (when it holds any), the removal of its KALE trustline (when it has one), and an
    AccountMerge sending it all its XLM. The KALE balance is the one read now: a deposit
    landing before the transaction applies fails the trustline removal, so nothing
    applies and nothing is lost."""
    if not (
        StrKey.is_valid_ed25519_public_key(destination)
        or StrKey.is_valid_med25519_public_key(destination)
    ):
        raise ValueError(f"not a close destination (G… or M…): {destination!r}")
    account = await _source_account(client, account_id)
    kale = await kale_balance(client, account.account.account_id)
    bounds = await time_bounds(client, max_time)
    builder = _builder(client, account, bounds)
    if kale is not None:
        if kale > 0:
            builder.append_payment_op(destination, client.config.asset, exact_kale(kale))
        builder.append_change_trust_op(client.config.asset, limit="0")
    builder.append_account_merge_op(destination)
    return _classic(TxKind.CLOSE, account, builder, bounds)
