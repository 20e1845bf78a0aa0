"""The devnet chain: genesis, the transaction queue, ledger close, history and simulation.

Single-threaded by design: every method runs to completion on the event loop, so the
state never changes under a request. Transactions wait in the queue (one per source
account, as stellar-core's queue allows) and apply, in order, when a ledger closes.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stellar_sdk import Account, Asset, TransactionBuilder
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import classic, farm, sac, soroban, txn
from kale_devnet import values as v
from kale_devnet.config import DevnetConfig
from kale_devnet.errors import HostError
from kale_devnet.host import AuthMode, LedgerInfo
from kale_devnet.ledger import (
    AccountRec,
    Entry,
    LedgerState,
    StateView,
    contract_code_key,
    instance_key,
    load_account,
    load_trustline,
    store_account,
)
from kale_devnet.network import (
    FARM_WASM,
    FRIENDBOT_CHANNELS,
    PROTOCOL_VERSION,
    DevnetIdentity,
    farm_wasm,
    friendbot_channel_keypair,
    friendbot_keypair,
    homesteader_keypair,
    identity,
    is_farm_wasm,
)

log = logging.getLogger(__name__)
TRC = stellar_xdr.TransactionResultCode

TOTAL_COINS = 100_000_000_000 * 10_000_000  # 100 billion XLM in stroops
CHANNEL_BALANCE = 1_000_000_000 * 10_000_000
HOMESTEADER_BALANCE = 1_000_000 * 10_000_000
FRIENDBOT_TIMEOUT_SECONDS = 300
# stellar-core's transaction queue (HerderImpl, TransactionQueue)
BAN_LEDGERS = 10  # TRANSACTION_QUEUE_BAN_LEDGERS: how long an applied or dropped hash is banned
FEE_MULTIPLIER = 10  # a fee bump replaces a queued transaction at ten times its fee rate
EXPECTED_CLOSE_TIME_MULT = 2  # maxTime must outlast twice the expected ledger time


@dataclass
class LedgerRecord:
    """A closed ledger's header and the transactions it applied."""

    seq: int
    close_time: int
    hash: bytes
    header_b64: str
    tx_hashes: list[str] = field(default_factory=list)
    tx_set_b64: str = ""
    evicted: list[str] = field(default_factory=list)
    meta_b64: str | None = None  # built on first request


@dataclass
class TxRecord:
    """An applied transaction as getTransaction reports it."""

    hash: str
    ledger: int
    close_time: int
    application_order: int
    fee_bump: bool
    successful: bool
    envelope: str
    result: str
    meta: str
    fee_changes: str
    diagnostics: list[str]
    transaction_events: list[str]
    contract_events: list[list[str]]


@dataclass
class EventRecord:
    """A contract event as getEvents reports it."""

    id: str
    ledger: int
    close_time: int
    tx_index: int
    op_index: int
    contract_id: str
    topics: list[str]
    value: str
    tx_hash: str
    successful: bool = True
    type: str = "contract"


@dataclass
class SubmitOutcome:
    status: str
    hash: str
    error_result: str | None = None
    diagnostics: list[str] = field(default_factory=list)


def _b64(value: Any) -> str:
    return str(value.to_xdr())


def _xdr_int(value: int) -> bytes:
    return struct.pack(">i", value)


def _xdr_uint(value: int) -> bytes:
    return struct.pack(">I", value)


def _contract_str(contract_id: stellar_xdr.ContractID) -> str:
    return v.address_str(
        stellar_xdr.SCAddress(
            stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_CONTRACT, contract_id=contract_id
        )
    )


def event_id(ledger: int, tx_index: int, op_index: int, event_index: int) -> str:
    """Stellar RPC's event id: the operation's TOID (19 digits) and the event's index."""
    toid = (ledger << 32) | (tx_index << 12) | op_index
    return f"{toid:019d}-{event_index:010d}"


class Chain:
    """The devnet's ledger state machine."""

    def __init__(self, config: DevnetConfig, *, genesis: bool = True) -> None:
        self.config = config
        self.identity: DevnetIdentity = identity()
        self.state = LedgerState()
        self.ledgers: dict[int, LedgerRecord] = {}
        self.txs: dict[str, TxRecord] = {}
        self.events: deque[EventRecord] = deque()
        self.pending: list[txn.TxFrame] = []
        self.pending_by_source: dict[str, txn.TxFrame] = {}
        # Hashes stellar-core refuses with TRY_AGAIN_LATER: what a recent ledger applied or
        # dropped. Slot 0 is the newest; each close shifts them one slot toward expiry.
        self.banned: deque[set[str]] = deque(set() for _ in range(BAN_LEDGERS))
        self.fee_pool = 0
        self.pending_advance = 0  # seconds added to the next manual close
        self.clock_offset = 0  # seconds the chain clock runs ahead of the wall clock
        self.bucket_hash = bytes(32)
        self.contracts = soroban.Contracts(
            runtimes={self.identity.farm_wasm_hash: farm.FarmContract(config.block_seconds)},
            sac=sac.StellarAssetContract(),
        )
        self.rules = txn.Rules(self.identity.network_id, config.base_fee, config.base_reserve)
        self.native_contract = txn.native_contract_id(self.identity.network_passphrase)
        self._latest: LedgerRecord | None = None
        if genesis:
            self._genesis()

    # ---- clock -----------------------------------------------------------------------

    @property
    def latest(self) -> LedgerRecord:
        assert self._latest is not None
        return self._latest

    @property
    def oldest_ledger(self) -> int:
        # Ledgers are added in order (closes, a reload): the first key is the oldest.
        return next(iter(self.ledgers)) if self.ledgers else self.latest.seq

    def next_close_time(self, wall: float | None = None) -> int:
        """The close time the next ledger will get (manual: a fixed step; auto: the wall clock)."""
        previous = self.latest.close_time
        if self.config.manual:
            return previous + self.config.ledger_seconds + self.pending_advance
        now = int(time.time() if wall is None else wall) + self.clock_offset
        return max(previous + 1, now)

    def submit_close_time(self, wall: float | None = None) -> int:
        """The close time a transaction submitted now must outlast (its `maxTime`).

        stellar-core's queue allows twice the expected ledger time past the last close, plus
        however far its clock already is past that close (getUpperBoundCloseTimeOffset).
        """
        last = self.latest.close_time
        if self.config.manual:
            now = last + self.pending_advance
        else:
            now = int(time.time() if wall is None else wall) + self.clock_offset
        return last + EXPECTED_CLOSE_TIME_MULT * self.config.ledger_seconds + max(0, now - last)

    def advance_time(self, seconds: int) -> int:
        """Move the chain clock forward; the jump shows at the next ledger close."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self.pending_advance += seconds
        self.clock_offset += seconds
        return self.next_close_time()

    def ledger_info(self, seq: int, timestamp: int) -> LedgerInfo:
        return LedgerInfo(
            seq=seq,
            timestamp=timestamp,
            network_id=self.identity.network_id,
            min_temp_ttl=self.config.temp_ttl_ledgers,
            min_persistent_ttl=self.config.persistent_ttl_ledgers,
            max_entry_ttl=self.config.max_entry_ttl_ledgers,
        )

    # ---- genesis ---------------------------------------------------------------------

    def _genesis(self) -> None:
        ident = self.identity
        close_time = (
            self.config.genesis_time if self.config.genesis_time is not None else int(time.time())
        )
        seq = 1
        view = StateView(self.state, seq)
        channels = [friendbot_channel_keypair(i).public_key for i in range(FRIENDBOT_CHANNELS)]
        root_balance = TOTAL_COINS - HOMESTEADER_BALANCE - CHANNEL_BALANCE * len(channels)
        store_account(view, AccountRec(ident.friendbot, root_balance, seq << 32))
        store_account(view, AccountRec(ident.homesteader, HOMESTEADER_BALANCE, seq << 32))
        for channel in channels:
            store_account(view, AccountRec(channel, CHANNEL_BALANCE, seq << 32))
        max_ttl = seq + self.config.max_entry_ttl_ledgers - 1
        view.put(
            contract_code_key(ident.farm_wasm_hash),
            stellar_xdr.LedgerEntryData(
                stellar_xdr.LedgerEntryType.CONTRACT_CODE,
                contract_code=stellar_xdr.ContractCodeEntry(
                    ext=stellar_xdr.ContractCodeEntryExt(0),
                    hash=stellar_xdr.Hash(ident.farm_wasm_hash),
                    code=FARM_WASM,
                ),
            ),
            max_ttl,
        )
        self._put_instance(
            view,
            ident.sac_contract_id,
            stellar_xdr.ContractExecutable(
                stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET
            ),
            sac.genesis_instance_storage(
                ident.asset_code, ident.asset_issuer, ident.farm_contract_id
            ),
            max_ttl,
        )
        self._put_instance(
            view,
            ident.farm_contract_id,
            stellar_xdr.ContractExecutable(
                stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM,
                wasm_hash=stellar_xdr.Hash(ident.farm_wasm_hash),
            ),
            farm.genesis_instance_storage(
                ident.homesteader,
                ident.sac_contract_id,
                close_time,
                self.config.genesis_farm_index,
            ),
            max_ttl,
        )
        view.commit()
        self._latest = self._make_ledger(seq, close_time, [], [], [], bytes(32))
        self.ledgers[seq] = self._latest

    def _put_instance(
        self,
        view: StateView,
        contract: str,
        executable: stellar_xdr.ContractExecutable,
        storage: list[tuple[stellar_xdr.SCVal, stellar_xdr.SCVal]],
        live_until: int,
    ) -> None:
        key = instance_key(contract)
        assert key.contract_data is not None
        view.put(
            key,
            stellar_xdr.LedgerEntryData(
                stellar_xdr.LedgerEntryType.CONTRACT_DATA,
                contract_data=stellar_xdr.ContractDataEntry(
                    ext=stellar_xdr.ExtensionPoint(0),
                    contract=key.contract_data.contract,
                    key=key.contract_data.key,
                    durability=stellar_xdr.ContractDataDurability.PERSISTENT,
                    val=stellar_xdr.SCVal(
                        stellar_xdr.SCValType.SCV_CONTRACT_INSTANCE,
                        instance=stellar_xdr.SCContractInstance(
                            executable, v.sorted_map(storage).map
                        ),
                    ),
                ),
            ),
            live_until,
        )

    # ---- the farm's homestead controls (devnet admin) ------------------------------------

    def _farm_instance(self) -> tuple[Entry, stellar_xdr.SCContractInstance]:
        entry = self.state.get(instance_key(self.identity.farm_contract_id).to_xdr_bytes(), 0)
        assert entry is not None and entry.data.contract_data is not None
        instance = entry.data.contract_data.val.instance
        assert instance is not None
        return entry, instance

    def _write_farm_instance(self, instance: stellar_xdr.SCContractInstance) -> None:
        # Written as of the latest ledger: getLedgerEntries shows it at once, as it shows
        # an applied homesteader transaction once its ledger closed.
        entry, _ = self._farm_instance()
        assert entry.data.contract_data is not None
        view = StateView(self.state, self.latest.seq)
        self._put_instance(
            view,
            self.identity.farm_contract_id,
            instance.executable,
            [(item.key, item.val) for item in instance.storage.sc_map or []]
            if instance.storage is not None
            else [],
            entry.live_until or self.latest.seq + self.config.max_entry_ttl_ledgers - 1,
        )
        view.commit()

    def farm_wasm_hash(self) -> bytes:
        """The Wasm hash the farm's instance runs now."""
        _, instance = self._farm_instance()
        assert instance.executable.wasm_hash is not None
        return bytes(instance.executable.wasm_hash.hash)

    def farm_paused(self) -> bool:
        """Whether the farm's instance storage says `FarmPaused` = true."""
        _, instance = self._farm_instance()
        key = farm.instance_key("FarmPaused").to_xdr_bytes()
        for item in instance.storage.sc_map if instance.storage is not None else []:
            if item.key.to_xdr_bytes() == key:
                return v.as_bool(item.val)
        return False

    def set_farm_paused(self, paused: bool) -> bool:
        """Pause or unpause the farm as the homesteader's `pause()` / `unpause()` leave it
        (`FarmPaused` true / false in instance storage); whether anything changed."""
        if self.farm_paused() == paused:
            return False
        _, instance = self._farm_instance()
        key = farm.instance_key("FarmPaused")
        kb = key.to_xdr_bytes()
        items = [
            (item.key, item.val)
            for item in (instance.storage.sc_map if instance.storage is not None else [])
            if item.key.to_xdr_bytes() != kb
        ]
        items.append((key, v.boolean(paused)))
        self._write_farm_instance(
            stellar_xdr.SCContractInstance(instance.executable, v.sorted_map(items).map)
        )
        log.info("farm %s", "paused" if paused else "unpaused")
        return True

    def upgrade_farm(self) -> tuple[bytes, int]:
        """Upload the farm's next code version and point the farm at it, as a homesteader's
        upload and `upgrade(wasm_hash)` leave the ledger: a new ContractCode entry and the
        instance's executable naming its hash, storage untouched. The devnet keeps running
        the same rules under the new hash. Returns (the new hash, its version)."""
        version = len(self.register_farm_code()) + 1
        code = farm_wasm(version)
        wasm_hash = hashlib.sha256(code).digest()
        view = StateView(self.state, self.latest.seq)
        view.put(
            contract_code_key(wasm_hash),
            stellar_xdr.LedgerEntryData(
                stellar_xdr.LedgerEntryType.CONTRACT_CODE,
                contract_code=stellar_xdr.ContractCodeEntry(
                    ext=stellar_xdr.ContractCodeEntryExt(0),
                    hash=stellar_xdr.Hash(wasm_hash),
                    code=code,
                ),
            ),
            self.latest.seq + self.config.max_entry_ttl_ledgers - 1,
        )
        view.commit()
        self.register_farm_code()
        _, instance = self._farm_instance()
        self._write_farm_instance(
            stellar_xdr.SCContractInstance(
                stellar_xdr.ContractExecutable(
                    stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_WASM,
                    wasm_hash=stellar_xdr.Hash(wasm_hash),
                ),
                instance.storage,
            )
        )
        log.info("farm upgraded to code version %d (%s)", version, wasm_hash.hex())
        return wasm_hash, version

    def register_farm_code(self) -> list[bytes]:
        """Run every uploaded version of the farm's code natively (a reloaded state may
        hold later versions); the hashes of all versions."""
        runtime = self.contracts.runtimes[self.identity.farm_wasm_hash]
        hashes = []
        for entry in self.state.entries.values():
            code = entry.data.contract_code
            if code is not None and is_farm_wasm(code.code):
                hashes.append(bytes(code.hash.hash))
                self.contracts.runtimes.setdefault(bytes(code.hash.hash), runtime)
        return hashes

    def _make_ledger(
        self,
        seq: int,
        close_time: int,
        applied: list[txn.Applied],
        frames: list[txn.TxFrame],
        evicted: list[str],
        change_digest: bytes,
    ) -> LedgerRecord:
        previous = self._latest.hash if self._latest is not None else bytes(32)
        tx_set = self._tx_set(previous, frames)
        result_set = stellar_xdr.TransactionResultSet(
            [
                stellar_xdr.TransactionResultPair(stellar_xdr.Hash(a.frame.hash), a.result)
                for a in applied
            ]
        )
        self.bucket_hash = hashlib.sha256(self.bucket_hash + change_digest).digest()
        header = stellar_xdr.LedgerHeader(
            ledger_version=stellar_xdr.Uint32(PROTOCOL_VERSION),
            previous_ledger_hash=stellar_xdr.Hash(previous),
            scp_value=stellar_xdr.StellarValue(
                tx_set_hash=stellar_xdr.Hash(hashlib.sha256(tx_set.to_xdr_bytes()).digest()),
                close_time=stellar_xdr.TimePoint(stellar_xdr.Uint64(close_time)),
                upgrades=[],
                ext=stellar_xdr.StellarValueExt(stellar_xdr.StellarValueType.STELLAR_VALUE_BASIC),
            ),
            tx_set_result_hash=stellar_xdr.Hash(hashlib.sha256(result_set.to_xdr_bytes()).digest()),
            bucket_list_hash=stellar_xdr.Hash(self.bucket_hash),
            ledger_seq=stellar_xdr.Uint32(seq),
            total_coins=stellar_xdr.Int64(TOTAL_COINS),
            fee_pool=stellar_xdr.Int64(self.fee_pool),
            inflation_seq=stellar_xdr.Uint32(0),
            id_pool=stellar_xdr.Uint64(0),
            base_fee=stellar_xdr.Uint32(self.config.base_fee),
            base_reserve=stellar_xdr.Uint32(self.config.base_reserve),
            max_tx_set_size=stellar_xdr.Uint32(self.config.max_tx_per_ledger),
            skip_list=[stellar_xdr.Hash(bytes(32)) for _ in range(4)],
            ext=stellar_xdr.LedgerHeaderExt(0),
        )
        raw = header.to_xdr_bytes()
        return LedgerRecord(
            seq=seq,
            close_time=close_time,
            hash=hashlib.sha256(raw).digest(),
            header_b64=base64.b64encode(raw).decode(),
            tx_hashes=[a.frame.hash_hex for a in applied],
            tx_set_b64=_b64(tx_set),
            evicted=evicted,
        )

    def _tx_set(
        self, previous: bytes, frames: list[txn.TxFrame]
    ) -> stellar_xdr.GeneralizedTransactionSet:
        base_fee = stellar_xdr.Int64(self.config.base_fee)
        classic_txs = [f.envelope for f in frames if not f.is_soroban]
        soroban_txs = [f.envelope for f in frames if f.is_soroban]
        phases = [
            stellar_xdr.TransactionPhase(
                0,
                v0_components=[
                    stellar_xdr.TxSetComponent(
                        stellar_xdr.TxSetComponentType.TXSET_COMP_TXS_MAYBE_DISCOUNTED_FEE,
                        txs_maybe_discounted_fee=stellar_xdr.TxSetComponentTxsMaybeDiscountedFee(
                            base_fee, classic_txs
                        ),
                    )
                ]
                if classic_txs
                else [],
            ),
            stellar_xdr.TransactionPhase(
                1,
                parallel_txs_component=stellar_xdr.ParallelTxsComponent(
                    base_fee,
                    [
                        stellar_xdr.ParallelTxExecutionStage(
                            [stellar_xdr.DependentTxCluster(soroban_txs)]
                        )
                    ]
                    if soroban_txs
                    else [],
                ),
            ),
        ]
        return stellar_xdr.GeneralizedTransactionSet(
            1, v1_tx_set=stellar_xdr.TransactionSetV1(stellar_xdr.Hash(previous), phases)
        )

    # ---- reading ---------------------------------------------------------------------

    def view(self) -> StateView:
        """A throwaway view of the latest closed state, as the next ledger will see it."""
        return StateView(self.state, self.latest.seq + 1)

    def get_entry(self, key: stellar_xdr.LedgerKey) -> Entry | None:
        return self.state.get(key.to_xdr_bytes(), self.latest.seq)

    def account(self, account_id: str) -> AccountRec | None:
        return load_account(StateView(self.state, self.latest.seq), account_id)

    # ---- submission ------------------------------------------------------------------

    def submit(self, envelope_b64: str) -> SubmitOutcome:
        """sendTransaction: queue a valid transaction, or say why not (raises EnvelopeError).

        The checks and their order are stellar-core's TransactionQueue::canAdd.
        """
        frame = txn.parse(envelope_b64, self.identity.network_id)
        h = frame.hash_hex
        if any(h in ledger for ledger in self.banned):
            return SubmitOutcome("TRY_AGAIN_LATER", h)
        fee = txn.fee_to_charge(frame, self.rules)
        replaced: txn.TxFrame | None = None
        queued = self.pending_by_source.get(frame.source)
        if queued is not None:
            if _duplicate(queued, frame):
                return SubmitOutcome("DUPLICATE", h)
            if frame.seq < queued.seq:
                return self._refuse(h, txn.tx_result(TRC.txBAD_SEQ, fee))
            data = frame.soroban_data
            if data is not None and soroban.check_resources(data.resources) is not None:
                return self._refuse(h, txn.tx_result(TRC.txSOROBAN_INVALID, fee))
            # one transaction per source account; only a fee bump of the same sequence
            # number may take the queued one's place, and only at ten times its fee rate
            if not frame.fee_bump or frame.seq != queued.seq:
                return SubmitOutcome("TRY_AGAIN_LATER", h)
            least = _replacement_fee(queued, frame)
            if least is not None:
                return self._refuse(h, txn.tx_result(TRC.txINSUFFICIENT_FEE, least))
            replaced = queued
        view = self.view()
        error = txn.check_valid(
            view,
            frame,
            self.submit_close_time(),
            self.latest.seq + 1,
            self.rules,
            min_time_close=self.latest.close_time,
        )
        if error is not None:
            return self._refuse(h, error)
        # a fee source must afford every fee it already owes the queue as well
        owed = sum(
            f.fee_bid
            for f in self.pending
            if f.fee_source == frame.fee_source and f is not replaced
        )
        if owed and self._available(view, frame.fee_source) - frame.fee_bid < owed:
            return self._refuse(h, txn.tx_result(TRC.txINSUFFICIENT_BALANCE, fee))
        if replaced is not None:
            self._replace(replaced, frame)
        else:
            self._enqueue(frame)
        return SubmitOutcome("PENDING", h)

    @staticmethod
    def _refuse(h: str, result: stellar_xdr.TransactionResult) -> SubmitOutcome:
        return SubmitOutcome("ERROR", h, error_result=_b64(result))

    def _available(self, view: StateView, account_id: str) -> int:
        acc = load_account(view, account_id)
        return 0 if acc is None else classic.available_balance(acc, self.rules.base_reserve)

    def _enqueue(self, frame: txn.TxFrame) -> None:
        self.pending.append(frame)
        self.pending_by_source[frame.source] = frame

    def _replace(self, old: txn.TxFrame, new: txn.TxFrame) -> None:
        index = next(i for i, f in enumerate(self.pending) if f is old)
        self.pending[index] = new
        self.pending_by_source[new.source] = new

    def _dequeue(self, frame: txn.TxFrame) -> None:
        if self.pending_by_source.get(frame.source) is frame:
            del self.pending_by_source[frame.source]

    # ---- ledger close ----------------------------------------------------------------

    def close_ledger(self, close_time: int | None = None) -> LedgerRecord:
        """Close the next ledger: evict expired entries, then apply queued transactions."""
        seq = self.latest.seq + 1
        if close_time is None:
            close_time = self.next_close_time()
        close_time = max(close_time, self.latest.close_time + 1)
        self.pending_advance = 0
        evicted = [base64.b64encode(kb).decode() for kb in self.state.evict_expired(seq)]
        view = StateView(self.state, seq)
        ctx = txn.ApplyContext(
            rules=self.rules,
            ledger=self.ledger_info(seq, close_time),
            contracts=self.contracts,
            native_contract=self.native_contract,
        )
        batch = self.pending[: self.config.max_tx_per_ledger]
        self.pending = self.pending[self.config.max_tx_per_ledger :]
        frames: list[txn.TxFrame] = []
        dropped: list[txn.TxFrame] = []
        owed: dict[str, int] = {}
        for frame in batch:
            self._dequeue(frame)
            error = txn.check_valid(view, frame, close_time, seq, self.rules)
            payer = frame.fee_source
            if error is None and (
                self._available(view, payer) - owed.get(payer, 0) < frame.fee_bid
            ):
                error = txn.tx_result(TRC.txINSUFFICIENT_BALANCE)
            if error is not None:
                # No longer valid (expired time bounds, changed balance): dropped unapplied,
                # as stellar-core drops it from its queue. getTransaction keeps NOT_FOUND.
                log.info(
                    "dropping %s at ledger %d: %s", frame.hash_hex, seq, error.result.code.name
                )
                dropped.append(frame)
                continue
            owed[payer] = owed.get(payer, 0) + frame.fee_bid
            frames.append(frame)
        charged = [txn.charge_fee(view, frame, ctx) for frame in frames]
        applied: list[txn.Applied] = []
        for frame, (fee, fee_changes, fee_event) in zip(frames, charged, strict=True):
            self.fee_pool += fee
            try:
                applied.append(txn.apply_tx(view, frame, fee, fee_changes, fee_event, ctx))
            except HostError:  # pragma: no cover - the host reports errors in results
                log.exception("host error escaped while applying %s", frame.hash_hex)
                raise
        digest = hashlib.sha256(
            b"".join(
                kb + (c.after.data.to_xdr_bytes() if c.after else b"")
                for kb, c in view.changes.items()
            )
        ).digest()
        view.commit()
        record = self._make_ledger(seq, close_time, applied, frames, evicted, digest)
        self._latest = record
        self.ledgers[seq] = record
        self._record_fee_events(record, applied)
        for order, item in enumerate(applied, start=1):
            self._record_tx(record, order, item)
        # stellar-core bans what it applied (removeApplied), shifts the ban list, then bans
        # what it found invalid in its queue: resubmitting either is TRY_AGAIN_LATER a while
        self.banned[0].update(f.hash_hex for f in frames)
        self.banned.pop()
        self.banned.appendleft({f.hash_hex for f in dropped})
        self._prune()
        return record

    def _record_fee_events(self, ledger: LedgerRecord, applied: list[txn.Applied]) -> None:
        """The fees every transaction paid before any applied, for getEvents.

        Stellar RPC serves transaction-level events too: those charged before all
        transactions get the ids `(ledger, 0, 0, n)`, numbered across the ledger, so they
        come before every operation's events (failed transactions pay fees as well).
        """
        index = 0
        for item in applied:
            for tx_event in item.transaction_events:
                event = tx_event.event
                body = event.body.v0
                assert body is not None and event.contract_id is not None
                self.events.append(
                    EventRecord(
                        id=event_id(ledger.seq, 0, 0, index),
                        ledger=ledger.seq,
                        close_time=ledger.close_time,
                        tx_index=0,
                        op_index=0,
                        contract_id=_contract_str(event.contract_id),
                        topics=[_b64(t) for t in body.topics],
                        value=_b64(body.data),
                        tx_hash=item.frame.hash_hex,
                        successful=item.successful,
                    )
                )
                index += 1

    def _record_tx(self, ledger: LedgerRecord, order: int, item: txn.Applied) -> None:
        h = item.frame.hash_hex
        self.txs[h] = TxRecord(
            hash=h,
            ledger=ledger.seq,
            close_time=ledger.close_time,
            application_order=order,
            fee_bump=item.frame.fee_bump,
            successful=item.successful,
            envelope=item.frame.b64,
            result=_b64(item.result),
            meta=_b64(item.meta),
            fee_changes=_b64(item.fee_changes),
            diagnostics=[_b64(d) for d in item.diagnostics],
            transaction_events=[_b64(e) for e in item.transaction_events],
            contract_events=[[_b64(e) for e in op] for op in item.contract_events],
        )
        for op_index, op_events in enumerate(item.contract_events):
            for index, event in enumerate(op_events):
                body = event.body.v0
                assert body is not None and event.contract_id is not None
                self.events.append(
                    EventRecord(
                        id=event_id(ledger.seq, order, op_index, index),
                        ledger=ledger.seq,
                        close_time=ledger.close_time,
                        tx_index=order,
                        op_index=op_index,
                        contract_id=_contract_str(event.contract_id),
                        topics=[_b64(t) for t in body.topics],
                        value=_b64(body.data),
                        tx_hash=h,
                    )
                )

    def _prune(self) -> None:
        self.forget_before(self.latest.seq - self.config.history_ledgers + 1)

    def forget_before(self, oldest: int) -> None:
        """Drop the ledgers, transactions and events older than ledger `oldest`."""
        for seq in [s for s in self.ledgers if s < oldest]:
            for h in self.ledgers.pop(seq).tx_hashes:
                self.txs.pop(h, None)
        while self.events and self.events[0].ledger < oldest:
            self.events.popleft()

    # ---- ledger metadata -------------------------------------------------------------

    def ledger_close_meta(self, record: LedgerRecord) -> str:
        """The LedgerCloseMeta (v2) of a ledger, built on first request.

        Assembled from the XDR already kept (the header, the transaction set, each
        transaction's result and metas), field by field in the order the XDR definition
        packs them: an XDR struct is its fields' encodings one after another and an
        array its length then its items, so the bytes are those that decoding each
        piece and encoding the whole would give, without the decoding (for a ledger of a
        thousand plants, most of the devnet's cost of getLatestLedger)."""
        if record.meta_b64 is None:
            out = [_xdr_int(2), _xdr_int(0)]  # LedgerCloseMeta v2; its ext: v0
            out += [record.hash, base64.b64decode(record.header_b64), _xdr_int(0)]
            out.append(base64.b64decode(record.tx_set_b64))
            entries = [self.txs[h] for h in record.tx_hashes if h in self.txs]
            out.append(_xdr_uint(len(entries)))
            for tx in entries:
                # TransactionResultMetaV1: ext, result (hash, result), fee changes, meta,
                # the post-apply fee changes (none).
                out += [_xdr_int(0), bytes.fromhex(tx.hash), base64.b64decode(tx.result)]
                out += [base64.b64decode(tx.fee_changes), base64.b64decode(tx.meta)]
                out.append(_xdr_uint(0))
            # No upgrades, no SCP info, no live Soroban state size; the evicted keys.
            out += [_xdr_uint(0), _xdr_uint(0), bytes(8), _xdr_uint(len(record.evicted))]
            out += [base64.b64decode(k) for k in record.evicted]
            record.meta_b64 = base64.b64encode(b"".join(out)).decode()
        return record.meta_b64

    # ---- simulation ------------------------------------------------------------------

    def simulate(
        self, envelope_b64: str, auth_mode: str | None, instruction_leeway: int
    ) -> dict[str, Any]:
        """simulateTransaction's result object (errors are reported in it, as RPC does)."""
        latest = self.latest.seq
        try:
            frame = txn.parse(envelope_b64, self.identity.network_id)
        except txn.EnvelopeError:
            return {"error": "Could not unmarshal transaction", "latestLedger": latest}
        ops = frame.ops
        if len(ops) != 1:
            return {
                "error": "Transaction contains more than one operation"
                if ops
                else "Transaction contains no operations",
                "latestLedger": latest,
            }
        op = ops[0]
        if (
            op.body.type != stellar_xdr.OperationType.INVOKE_HOST_FUNCTION
            or op.body.invoke_host_function_op is None
        ):
            return {
                "error": f"Transaction contains unsupported operation type: {op.body.type.name}",
                "latestLedger": latest,
            }
        ihf = op.body.invoke_host_function_op
        if ihf.auth:
            if auth_mode in ("record", "record_allow_nonroot"):
                return {
                    "error": "auth entries are present, so recording authorization is not possible",
                    "latestLedger": latest,
                }
            mode = AuthMode.ENFORCE
        else:
            mode = AuthMode(auth_mode) if auth_mode else AuthMode.RECORD
        seq = latest + 1
        view = self.view()
        outcome = soroban.invoke(
            view,
            self.ledger_info(seq, self.next_close_time()),
            ihf,
            frame.op_source(op),
            self.contracts,
            footprint=None,
            auth_mode=mode,
        )
        diagnostics = [_b64(d) for d in outcome.diagnostics]
        if outcome.error is not None:
            return {
                "error": format_host_error(outcome.error, outcome.diagnostics),
                "events": diagnostics,
                "latestLedger": latest,
            }
        data = soroban.simulated_transaction_data(outcome, frame.size, instruction_leeway)
        assert outcome.return_value is not None
        events = [
            _b64(stellar_xdr.DiagnosticEvent(in_successful_contract_call=True, event=e))
            for e in outcome.events
        ] + diagnostics
        changes = []
        for kind, key, before, after in view.state_changes():
            item: dict[str, Any] = {"type": kind, "key": _b64(key)}
            if before is not None:
                item["before"] = _b64(before.ledger_entry())
            if after is not None:
                item["after"] = _b64(after.ledger_entry())
            changes.append(item)
        return {
            "transactionData": _b64(data),
            "minResourceFee": str(data.resource_fee.int64),
            "events": events,
            "results": [
                {"auth": [_b64(a) for a in outcome.auth], "xdr": _b64(outcome.return_value)}
            ],
            "stateChanges": changes,
            "latestLedger": latest,
        }

    # ---- friendbot -------------------------------------------------------------------

    def friendbot(self, address: str, kale: int = 0) -> SubmitOutcome:
        """Fund (or top up) an account from a free friendbot channel; optionally mint KALE."""
        ident = self.identity
        if kale < 0:
            raise ValueError("kale must not be negative")
        exists = self.account(address) is not None
        if kale and not exists:
            raise ValueError("the account must exist and trust KALE before KALE can be minted")
        if kale:
            line = load_trustline(
                StateView(self.state, self.latest.seq),
                address,
                ident.asset_code,
                ident.asset_issuer,
            )
            if line is None:
                raise ValueError(f"{address} has no KALE trustline")
        busy = set(self.pending_by_source)
        for i in range(FRIENDBOT_CHANNELS):
            channel = friendbot_channel_keypair(i)
            if channel.public_key not in busy:
                break
        else:
            raise FriendbotBusy(
                "every friendbot channel has a pending transaction; retry after the next ledger"
            )
        account = self.account(channel.public_key)
        assert account is not None
        builder = TransactionBuilder(
            Account(channel.public_key, account.seq_num),
            ident.network_passphrase,
            base_fee=self.config.base_fee,
        )
        # The time bound follows the chain's clock, which a manual devnet runs apart from the wall.
        builder.add_time_bounds(0, self.next_close_time() + FRIENDBOT_TIMEOUT_SECONDS)
        amount = _amount(self.config.friendbot_amount)
        if exists:
            builder.append_payment_op(
                address, Asset.native(), amount, source=friendbot_keypair().public_key
            )
        else:
            builder.append_create_account_op(address, amount, source=friendbot_keypair().public_key)
        signers = [channel, friendbot_keypair()]
        if kale:
            builder.append_payment_op(
                address, ident.asset, _amount(kale), source=ident.asset_issuer
            )
            signers.append(homesteader_keypair())
        envelope = builder.build()
        for signer in signers:
            envelope.sign(signer)
        return self.submit(envelope.to_xdr())


def _duplicate(queued: txn.TxFrame, new: txn.TxFrame) -> bool:
    """stellar-core's isDuplicateTx: the same envelope, or the inner one of a queued fee bump."""
    if queued.envelope.type == new.envelope.type:
        return queued.hash == new.hash
    return queued.fee_bump and queued.inner_hash == new.hash


def _inclusion_fee(frame: txn.TxFrame) -> int:
    data = frame.soroban_data
    return frame.fee_bid - (data.resource_fee.int64 if data is not None else 0)


def _replacement_fee(queued: txn.TxFrame, new: txn.TxFrame) -> int | None:
    """None when `new` may replace `queued`, else the least fee that would (canReplaceByFee)."""
    new_ops = max(1, len(new.ops) + (1 if new.fee_bump else 0))
    old_ops = max(1, len(queued.ops) + (1 if queued.fee_bump else 0))
    new_fee = _inclusion_fee(new)
    least_total = _inclusion_fee(queued) * new_ops * FEE_MULTIPLIER
    if new_fee >= 0 and new_fee * old_ops >= least_total:
        return None
    return -(-least_total // old_ops) + (new.fee_bid - new_fee)


def _amount(stroops: int) -> str:
    """Stroops as the decimal string stellar-sdk's operations take (exact, no floats)."""
    return f"{stroops // 10_000_000}.{stroops % 10_000_000:07d}"


class FriendbotBusy(RuntimeError):
    """Every friendbot channel already has a transaction in this ledger."""


def format_host_error(err: HostError, diagnostics: list[stellar_xdr.DiagnosticEvent]) -> str:
    """The error string Stellar RPC returns for a failed simulation."""
    lines = [f"HostError: {err.display()}", "", "Event log (newest first):"]
    for i, diag in enumerate(reversed(diagnostics)):
        event = diag.event
        body = event.body.v0
        assert body is not None
        prefix = ""
        if event.contract_id is not None:
            contract = v.address_str(
                stellar_xdr.SCAddress(
                    stellar_xdr.SCAddressType.SC_ADDRESS_TYPE_CONTRACT,
                    contract_id=event.contract_id,
                )
            )
            prefix = f"contract:{contract}, "
        topics = ", ".join(v.display(t) for t in body.topics)
        lines.append(
            f"   {i}: [Diagnostic Event] {prefix}topics:[{topics}], data:{v.display(body.data)}"
        )
    return "\n".join(lines)
