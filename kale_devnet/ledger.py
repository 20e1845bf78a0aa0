"""Ledger state: entries keyed by their LedgerKey XDR, with TTLs, and copy-on-write views.

The state holds the very `LedgerEntryData` values that `getLedgerEntries` returns, so
what the chain stores and what a client reads are one and the same. Entries are never
mutated in place: a change builds a new value, which keeps views and rollbacks cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache

from stellar_sdk import Keypair
from stellar_sdk import xdr as stellar_xdr

from kale_devnet.values import address as sc_address_val

LT = stellar_xdr.LedgerEntryType
Durability = stellar_xdr.ContractDataDurability

AUTHORIZED_FLAG = 1
I64_MAX = 2**63 - 1


@lru_cache(maxsize=65536)
def account_id_xdr(account_id: str) -> stellar_xdr.AccountID:
    """The AccountID of a G... strkey (cached: shared values are never mutated)."""
    return Keypair.from_public_key(account_id).xdr_account_id()


def account_id_str(account: stellar_xdr.AccountID) -> str:
    assert account.account_id.ed25519 is not None
    return str(Keypair.from_raw_ed25519_public_key(account.account_id.ed25519.uint256).public_key)


def account_key(account_id: str) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        LT.ACCOUNT, account=stellar_xdr.LedgerKeyAccount(account_id_xdr(account_id))
    )


def trustline_asset(code: str, issuer: str) -> stellar_xdr.TrustLineAsset:
    raw = code.encode()
    if len(raw) <= 4:
        return stellar_xdr.TrustLineAsset(
            type=stellar_xdr.AssetType.ASSET_TYPE_CREDIT_ALPHANUM4,
            alpha_num4=stellar_xdr.AlphaNum4(
                stellar_xdr.AssetCode4(raw.ljust(4, b"\x00")), account_id_xdr(issuer)
            ),
        )
    return stellar_xdr.TrustLineAsset(
        type=stellar_xdr.AssetType.ASSET_TYPE_CREDIT_ALPHANUM12,
        alpha_num12=stellar_xdr.AlphaNum12(
            stellar_xdr.AssetCode12(raw.ljust(12, b"\x00")), account_id_xdr(issuer)
        ),
    )


def trustline_key(account_id: str, code: str, issuer: str) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        LT.TRUSTLINE,
        trust_line=stellar_xdr.LedgerKeyTrustLine(
            account_id_xdr(account_id), trustline_asset(code, issuer)
        ),
    )


def contract_data_key(
    contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
) -> stellar_xdr.LedgerKey:
    sc_address = sc_address_val(contract).address
    assert sc_address is not None
    return stellar_xdr.LedgerKey(
        LT.CONTRACT_DATA,
        contract_data=stellar_xdr.LedgerKeyContractData(sc_address, key, durability),
    )


def instance_key(contract: str) -> stellar_xdr.LedgerKey:
    return contract_data_key(
        contract,
        stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
        Durability.PERSISTENT,
    )


def contract_code_key(wasm_hash: bytes) -> stellar_xdr.LedgerKey:
    return stellar_xdr.LedgerKey(
        LT.CONTRACT_CODE,
        contract_code=stellar_xdr.LedgerKeyContractCode(stellar_xdr.Hash(wasm_hash)),
    )


def key_of(data: stellar_xdr.LedgerEntryData) -> stellar_xdr.LedgerKey:
    """The LedgerKey that addresses an entry."""
    if data.type == LT.ACCOUNT and data.account is not None:
        return stellar_xdr.LedgerKey(
            LT.ACCOUNT, account=stellar_xdr.LedgerKeyAccount(data.account.account_id)
        )
    if data.type == LT.TRUSTLINE and data.trust_line is not None:
        tl = data.trust_line
        return stellar_xdr.LedgerKey(
            LT.TRUSTLINE, trust_line=stellar_xdr.LedgerKeyTrustLine(tl.account_id, tl.asset)
        )
    if data.type == LT.CONTRACT_DATA and data.contract_data is not None:
        cd = data.contract_data
        return stellar_xdr.LedgerKey(
            LT.CONTRACT_DATA,
            contract_data=stellar_xdr.LedgerKeyContractData(cd.contract, cd.key, cd.durability),
        )
    if data.type == LT.CONTRACT_CODE and data.contract_code is not None:
        return stellar_xdr.LedgerKey(
            LT.CONTRACT_CODE,
            contract_code=stellar_xdr.LedgerKeyContractCode(data.contract_code.hash),
        )
    raise ValueError(f"the devnet does not store {data.type.name} entries")


def is_temporary(key: stellar_xdr.LedgerKey) -> bool:
    return (
        key.type == LT.CONTRACT_DATA
        and key.contract_data is not None
        and key.contract_data.durability == Durability.TEMPORARY
    )


@dataclass(frozen=True, slots=True)
class AccountRec:
    """An account as the devnet models it: master key only, default thresholds."""

    account_id: str
    balance: int
    seq_num: int
    num_sub_entries: int = 0

    def to_data(self) -> stellar_xdr.LedgerEntryData:
        return stellar_xdr.LedgerEntryData(
            LT.ACCOUNT,
            account=stellar_xdr.AccountEntry(
                account_id=account_id_xdr(self.account_id),
                balance=stellar_xdr.Int64(self.balance),
                seq_num=stellar_xdr.SequenceNumber(stellar_xdr.Int64(self.seq_num)),
                num_sub_entries=stellar_xdr.Uint32(self.num_sub_entries),
                inflation_dest=None,
                flags=stellar_xdr.Uint32(0),
                home_domain=stellar_xdr.String32(b""),
                thresholds=stellar_xdr.Thresholds(b"\x01\x00\x00\x00"),
                signers=[],
                ext=stellar_xdr.AccountEntryExt(0),
            ),
        )

    @staticmethod
    def from_data(data: stellar_xdr.LedgerEntryData) -> AccountRec:
        acc = data.account
        assert acc is not None
        return AccountRec(
            account_id=account_id_str(acc.account_id),
            balance=acc.balance.int64,
            seq_num=acc.seq_num.sequence_number.int64,
            num_sub_entries=acc.num_sub_entries.uint32,
        )


@dataclass(frozen=True, slots=True)
class TrustlineRec:
    """A credit trustline (no liabilities: the devnet has no offers)."""

    account_id: str
    code: str
    issuer: str
    balance: int
    limit: int
    flags: int = AUTHORIZED_FLAG

    def to_data(self) -> stellar_xdr.LedgerEntryData:
        return stellar_xdr.LedgerEntryData(
            LT.TRUSTLINE,
            trust_line=stellar_xdr.TrustLineEntry(
                account_id=account_id_xdr(self.account_id),
                asset=trustline_asset(self.code, self.issuer),
                balance=stellar_xdr.Int64(self.balance),
                limit=stellar_xdr.Int64(self.limit),
                flags=stellar_xdr.Uint32(self.flags),
                ext=stellar_xdr.TrustLineEntryExt(0),
            ),
        )

    @staticmethod
    def from_data(data: stellar_xdr.LedgerEntryData) -> TrustlineRec:
        tl = data.trust_line
        assert tl is not None
        asset = tl.asset
        if asset.alpha_num4 is not None:
            code = bytes(asset.alpha_num4.asset_code.asset_code4).rstrip(b"\x00").decode()
            issuer = account_id_str(asset.alpha_num4.issuer)
        else:
            assert asset.alpha_num12 is not None
            code = bytes(asset.alpha_num12.asset_code.asset_code12).rstrip(b"\x00").decode()
            issuer = account_id_str(asset.alpha_num12.issuer)
        return TrustlineRec(
            account_id=account_id_str(tl.account_id),
            code=code,
            issuer=issuer,
            balance=tl.balance.int64,
            limit=tl.limit.int64,
            flags=tl.flags.uint32,
        )


@dataclass(frozen=True)
class Entry:
    """A stored entry: its data, the ledger that last changed it, and its TTL if any."""

    data: stellar_xdr.LedgerEntryData
    last_modified: int
    live_until: int | None = None

    def ledger_entry(self) -> stellar_xdr.LedgerEntry:
        return stellar_xdr.LedgerEntry(
            last_modified_ledger_seq=stellar_xdr.Uint32(self.last_modified),
            data=self.data,
            ext=stellar_xdr.LedgerEntryExt(0),
        )

    @cached_property
    def ledger_entry_b64(self) -> str:
        """The LedgerEntry XDR, encoded once (entries never change once stored)."""
        return str(self.ledger_entry().to_xdr())


def _alive(entry: Entry, key_is_temporary: bool, seq: int) -> bool:
    # Expired temporary entries are gone for good; persistent entries never expire on the
    # devnet (the farm keeps its instance alive on every call, as on mainnet).
    return not (key_is_temporary and entry.live_until is not None and entry.live_until < seq)


class LedgerState:
    """The committed ledger: every live entry by key."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self._temporary: set[bytes] = set()
        # Keys set or deleted since the state file last took them (persist's journal
        # writes only these at a close, not every entry).
        self.touched: set[bytes] = set()

    def get(self, kb: bytes, seq: int) -> Entry | None:
        entry = self.entries.get(kb)
        if entry is None or not _alive(entry, kb in self._temporary, seq):
            return None
        return entry

    def set(self, kb: bytes, entry: Entry | None, temporary: bool) -> None:
        self.touched.add(kb)
        if entry is None:
            self.entries.pop(kb, None)
            self._temporary.discard(kb)
            return
        self.entries[kb] = entry
        if temporary:
            self._temporary.add(kb)

    def evict_expired(self, seq: int) -> list[bytes]:
        """Drop temporary entries whose TTL ended before ledger `seq`."""
        gone = [
            kb
            for kb in self._temporary
            if (live := self.entries[kb].live_until) is not None and live < seq
        ]
        for kb in gone:
            self.set(kb, None, temporary=True)
        return gone

    def is_temporary(self, kb: bytes) -> bool:
        return kb in self._temporary


@dataclass
class _Change:
    key: stellar_xdr.LedgerKey
    temporary: bool
    before: Entry | None
    after: Entry | None


@dataclass
class StateView:
    """A copy-on-write view over the ledger (or over another view) at ledger `seq`."""

    parent: LedgerState | StateView
    seq: int
    changes: dict[bytes, _Change] = field(default_factory=dict)

    def get(self, kb: bytes) -> Entry | None:
        change = self.changes.get(kb)
        if change is not None:
            return change.after
        return (
            self.parent.get(kb, self.seq)
            if isinstance(self.parent, LedgerState)
            else self.parent.get(kb)
        )

    def load(self, key: stellar_xdr.LedgerKey) -> Entry | None:
        return self.get(key.to_xdr_bytes())

    def put(
        self,
        key: stellar_xdr.LedgerKey,
        data: stellar_xdr.LedgerEntryData,
        live_until: int | None = None,
        kb: bytes | None = None,
    ) -> Entry:
        """Write an entry; `live_until` None keeps the current TTL (or none for classic)."""
        kb = kb if kb is not None else key.to_xdr_bytes()
        current = self.get(kb)
        if live_until is None and current is not None:
            live_until = current.live_until
        entry = Entry(data=data, last_modified=self.seq, live_until=live_until)
        self._record(kb, key, entry)
        return entry

    def set_ttl(self, key: stellar_xdr.LedgerKey, live_until: int) -> None:
        kb = key.to_xdr_bytes()
        current = self.get(kb)
        if current is None or current.live_until == live_until:
            return
        self._record(kb, key, replace(current, live_until=live_until))

    def delete(self, key: stellar_xdr.LedgerKey) -> None:
        kb = key.to_xdr_bytes()
        if self.get(kb) is not None:
            self._record(kb, key, None)

    def _record(self, kb: bytes, key: stellar_xdr.LedgerKey, after: Entry | None) -> None:
        change = self.changes.get(kb)
        if change is None:
            before = (
                self.parent.get(kb, self.seq)
                if isinstance(self.parent, LedgerState)
                else self.parent.get(kb)
            )
            self.changes[kb] = _Change(key, is_temporary(key), before, after)
        else:
            change.after = after

    def child(self) -> StateView:
        return StateView(parent=self, seq=self.seq)

    def commit(self) -> None:
        """Push this view's changes into its parent."""
        for kb, change in self.changes.items():
            if isinstance(self.parent, LedgerState):
                self.parent.set(kb, change.after, change.temporary)
            else:
                self.parent._record(kb, change.key, change.after)
        self.changes = {}

    def meta_changes(self) -> stellar_xdr.LedgerEntryChanges:
        """The changes as transaction meta reports them (STATE before UPDATED/REMOVED)."""
        out: list[stellar_xdr.LedgerEntryChange] = []
        CT = stellar_xdr.LedgerEntryChangeType
        for change in self.changes.values():
            before, after = change.before, change.after
            if before is None and after is None:
                continue
            if before is None:
                assert after is not None
                out.append(
                    stellar_xdr.LedgerEntryChange(
                        CT.LEDGER_ENTRY_CREATED, created=after.ledger_entry()
                    )
                )
                continue
            if after is not None and after.data.to_xdr_bytes() == before.data.to_xdr_bytes():
                continue  # a TTL-only change: the devnet does not model TTL entries in meta
            out.append(
                stellar_xdr.LedgerEntryChange(CT.LEDGER_ENTRY_STATE, state=before.ledger_entry())
            )
            if after is None:
                out.append(
                    stellar_xdr.LedgerEntryChange(CT.LEDGER_ENTRY_REMOVED, removed=change.key)
                )
            else:
                out.append(
                    stellar_xdr.LedgerEntryChange(
                        CT.LEDGER_ENTRY_UPDATED, updated=after.ledger_entry()
                    )
                )
        return stellar_xdr.LedgerEntryChanges(out)

    def state_changes(self) -> list[tuple[str, stellar_xdr.LedgerKey, Entry | None, Entry | None]]:
        """(kind, key, before, after) per touched key, as simulateTransaction reports them."""
        out: list[tuple[str, stellar_xdr.LedgerKey, Entry | None, Entry | None]] = []
        for change in self.changes.values():
            if change.before is None and change.after is None:
                continue
            kind = (
                "created"
                if change.before is None
                else "deleted"
                if change.after is None
                else "updated"
            )
            out.append((kind, change.key, change.before, change.after))
        return out


def load_account(view: StateView, account_id: str) -> AccountRec | None:
    entry = view.load(account_key(account_id))
    return None if entry is None else AccountRec.from_data(entry.data)


def store_account(view: StateView, rec: AccountRec) -> None:
    view.put(account_key(rec.account_id), rec.to_data())


def load_trustline(view: StateView, account_id: str, code: str, issuer: str) -> TrustlineRec | None:
    entry = view.load(trustline_key(account_id, code, issuer))
    return None if entry is None else TrustlineRec.from_data(entry.data)


def store_trustline(view: StateView, rec: TrustlineRec) -> None:
    view.put(trustline_key(rec.account_id, rec.code, rec.issuer), rec.to_data())


def delete_trustline(view: StateView, rec: TrustlineRec) -> None:
    view.delete(trustline_key(rec.account_id, rec.code, rec.issuer))
