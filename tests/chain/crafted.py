"""Crafted chain answers for what the devnet cannot run: another contract calling the farm.

The devnet has no Wasm VM, so a harvest made from inside another contract's call never
happens there. These build, in stellar-core's shape, the transaction meta such a call
leaves (every removed entry's STATE before its REMOVED), the envelope of a call to that
other contract, and a stand-in RPC answering them (unit tests only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stellar_sdk import Account, Keypair, StrKey, TransactionBuilder, scval
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.soroban_rpc import (
    EventInfo,
    GetEventsResponse,
    GetTransactionResponse,
    GetTransactionStatus,
)

from kale_devnet import farm as devnet_farm
from kale_devnet.ledger import Entry, contract_data_key
from kalepool.chain import ChainConfig

CT = stellar_xdr.LedgerEntryChangeType
TEMPORARY = stellar_xdr.ContractDataDurability.TEMPORARY
PASSPHRASE = "Test SDF Network ; September 2015"
FARM = StrKey.encode_contract(bytes(range(32)))
ROUTER = StrKey.encode_contract(bytes(range(1, 33)))  # a contract that calls the farm
ASSET = StrKey.encode_contract(bytes(range(2, 34)))  # stands for the KALE asset contract
ISSUER = Keypair.random().public_key


def config() -> ChainConfig:
    """A chain configuration naming the crafted farm and asset (no server behind it)."""
    return ChainConfig(
        rpc_url="http://127.0.0.1:9",
        network_passphrase=PASSPHRASE,
        farm_contract_id=FARM,
        sac_contract_id=ASSET,
        asset_code="KALE",
        asset_issuer=ISSUER,
    )


def pail_entry(contract: str, farmer: str, index: int, pail: devnet_farm.Pail) -> Entry:
    """`Pail(farmer, index)` as `contract` stores it (temporary storage)."""
    key = contract_data_key(contract, devnet_farm.pail_key(farmer, index), TEMPORARY)
    assert key.contract_data is not None
    data = stellar_xdr.LedgerEntryData(
        stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.ContractDataEntry(
            stellar_xdr.ExtensionPoint(0),
            key.contract_data.contract,
            key.contract_data.key,
            TEMPORARY,
            pail.to_scval(),
        ),
    )
    return Entry(data, last_modified=90)


def data_entry(
    contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
) -> Entry:
    """Some other contract data entry (a u32 value)."""
    sc_address = scval.to_address(contract).address
    assert sc_address is not None
    data = stellar_xdr.LedgerEntryData(
        stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.ContractDataEntry(
            stellar_xdr.ExtensionPoint(0), sc_address, key, durability, scval.to_uint32(7)
        ),
    )
    return Entry(data, last_modified=90)


def key_of(entry: Entry) -> stellar_xdr.LedgerKey:
    cd = entry.data.contract_data
    assert cd is not None
    return stellar_xdr.LedgerKey(
        stellar_xdr.LedgerEntryType.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(cd.contract, cd.key, cd.durability),
    )


def change(kind: stellar_xdr.LedgerEntryChangeType, entry: Entry) -> stellar_xdr.LedgerEntryChange:
    if kind == CT.LEDGER_ENTRY_REMOVED:
        return stellar_xdr.LedgerEntryChange(kind, removed=key_of(entry))
    name = {
        CT.LEDGER_ENTRY_CREATED: "created",
        CT.LEDGER_ENTRY_UPDATED: "updated",
        CT.LEDGER_ENTRY_STATE: "state",
        CT.LEDGER_ENTRY_RESTORED: "restored",
    }[kind]
    return stellar_xdr.LedgerEntryChange(kind, **{name: entry.ledger_entry()})


def removed(entry: Entry) -> list[stellar_xdr.LedgerEntryChange]:
    """An entry's removal as stellar-core writes it: its STATE, then REMOVED."""
    return [change(CT.LEDGER_ENTRY_STATE, entry), change(CT.LEDGER_ENTRY_REMOVED, entry)]


def nested_harvest(
    farmer: str, index: int, pail: devnet_farm.Pail, *, planter: str | None = None
) -> list[stellar_xdr.LedgerEntryChange]:
    """The storage a router contract's call leaves when it harvests `farmer`'s pail of
    block `index` through the farm (and, with `planter`, plants the next block for it),
    next to its own entries: one shaped like a pail, the farm's instance updated."""
    router = data_entry(
        ROUTER,
        scval.to_vec([scval.to_symbol("Runs")]),
        stellar_xdr.ContractDataDurability.PERSISTENT,
    )
    instance = data_entry(
        FARM,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
        stellar_xdr.ContractDataDurability.PERSISTENT,
    )
    out = [change(CT.LEDGER_ENTRY_STATE, router), change(CT.LEDGER_ENTRY_UPDATED, router)]
    out += removed(pail_entry(FARM, farmer, index, pail))
    if planter is not None:
        planted = devnet_farm.Pail(160, None, 10_000_000, None)
        out.append(change(CT.LEDGER_ENTRY_CREATED, pail_entry(FARM, planter, index + 1, planted)))
    out += removed(pail_entry(ROUTER, farmer, index, pail))  # the router's lookalike
    out += [change(CT.LEDGER_ENTRY_STATE, instance), change(CT.LEDGER_ENTRY_UPDATED, instance)]
    return out


def meta_v4(changes: list[stellar_xdr.LedgerEntryChange]) -> stellar_xdr.TransactionMeta:
    return stellar_xdr.TransactionMeta(
        4,
        v4=stellar_xdr.TransactionMetaV4(
            ext=stellar_xdr.ExtensionPoint(0),
            tx_changes_before=stellar_xdr.LedgerEntryChanges([]),
            operations=[
                stellar_xdr.OperationMetaV2(
                    stellar_xdr.ExtensionPoint(0), stellar_xdr.LedgerEntryChanges(changes), []
                )
            ],
            tx_changes_after=stellar_xdr.LedgerEntryChanges([]),
            soroban_meta=None,
            events=[],
            diagnostic_events=[],
        ),
    )


def meta_v3(changes: list[stellar_xdr.LedgerEntryChange]) -> stellar_xdr.TransactionMeta:
    return stellar_xdr.TransactionMeta(
        3,
        v3=stellar_xdr.TransactionMetaV3(
            ext=stellar_xdr.ExtensionPoint(0),
            tx_changes_before=stellar_xdr.LedgerEntryChanges([]),
            operations=[stellar_xdr.OperationMeta(stellar_xdr.LedgerEntryChanges(changes))],
            tx_changes_after=stellar_xdr.LedgerEntryChanges([]),
            soroban_meta=None,
        ),
    )


def router_call(function: str, *args: stellar_xdr.SCVal, sequence: int = 1) -> str:
    """The signed envelope of a call to the router contract, by a random account."""
    source = Keypair.random()
    envelope = (
        TransactionBuilder(Account(source.public_key, sequence), PASSPHRASE, 100)
        .append_invoke_contract_function_op(ROUTER, function, list(args))
        .set_timeout(60)
        .build()
    )
    envelope.sign(source)
    return str(envelope.to_xdr())


def tx_hash_of(envelope_xdr: str) -> str:
    return str(TransactionBuilder.from_xdr(envelope_xdr, PASSPHRASE).hash_hex())


def answer(
    tx_hash: str, envelope_xdr: str | None, meta: str | None, *, ledger: int = 161
) -> GetTransactionResponse:
    return GetTransactionResponse(
        status=GetTransactionStatus.SUCCESS,
        txHash=tx_hash,
        latestLedger=200,
        latestLedgerCloseTime=2000,
        oldestLedger=1,
        oldestLedgerCloseTime=10,
        envelopeXdr=envelope_xdr,
        resultMetaXdr=meta,
        ledger=ledger,
    )


def not_found(tx_hash: str) -> GetTransactionResponse:
    return GetTransactionResponse(
        status=GetTransactionStatus.NOT_FOUND,
        txHash=tx_hash,
        latestLedger=200,
        latestLedgerCloseTime=2000,
        oldestLedger=1,
        oldestLedgerCloseTime=10,
    )


def event_id(ledger: int, tx: int, index: int) -> str:
    return f"{(ledger << 32) | (tx << 12):019d}-{index:010d}"


def token_event(
    kind: str,
    to: str,
    amount: int,
    tx_hash: str,
    *,
    ledger: int,
    tx: int,
    index: int = 0,
    sender: str | None = None,
) -> EventInfo:
    """A KALE movement as getEvents serves it (CAP-67 shapes)."""
    name = scval.to_string("KALE:" + Keypair.random().public_key)
    topics = [scval.to_symbol(kind)]
    if kind == "transfer":
        topics.append(scval.to_address(sender or Keypair.random().public_key))
    topics += [scval.to_address(to), name]
    return EventInfo(
        type="contract",
        ledger=ledger,
        ledgerClosedAt="2025-01-01T00:00:00Z",
        contractId=ASSET,
        id=event_id(ledger, tx, index),
        topic=[t.to_xdr() for t in topics],
        value=scval.to_int128(amount).to_xdr(),
        operationIndex=0,
        transactionIndex=tx,
        txHash=tx_hash,
    )


@dataclass
class StubRpc:
    """getEvents serving a list of events once, getTransaction answering by hash: the RPC
    of a unit test. `latest` is the ledger the chain has reached."""

    events: list[EventInfo]
    transactions: dict[str, GetTransactionResponse] = field(default_factory=dict)
    latest: int = 200

    async def get_events(
        self,
        start_ledger: int | None = None,
        filters: Any = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> GetEventsResponse:
        after = cursor if cursor is not None else event_id(start_ledger or 1, 0, 0)
        found = [e for e in self.events if e.id > after or (cursor is None and e.id == after)]
        found = found[: limit or len(found)]
        end = found[-1].id if found else event_id(self.latest, 0xFFFFF, 0)
        return GetEventsResponse(
            events=found,
            latestLedger=self.latest,
            oldestLedger=1,
            latestLedgerCloseTime=2000,
            oldestLedgerCloseTime=10,
            cursor=end,
        )

    async def get_transaction(self, tx_hash: str) -> GetTransactionResponse:
        return self.transactions.get(tx_hash) or not_found(tx_hash)
