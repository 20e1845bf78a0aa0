"""A small Soroban host: contract calls, storage under a footprint, authorization, events.

It runs the devnet's native contracts (the KALE farm and the Stellar Asset Contract)
with the host's rules that a client can observe: every ledger key a call touches must be
in the transaction's footprint (`Error(Storage, ExceededLimit)` otherwise), every
`require_auth` must be covered by an authorization entry whose signature, expiry and
nonce check out, and errors surface as `Error(Contract, #N)` or `Error(<Type>, <Code>)`.
Simulation runs the same code in recording mode, which yields the footprint, the
authorization entries and the resources a client then signs.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from stellar_sdk import StrKey
from stellar_sdk import xdr as stellar_xdr

from kale_devnet import values as v
from kale_devnet.errors import ErrCode, ErrType, HostError
from kale_devnet.ledger import (
    Durability,
    Entry,
    StateView,
    account_key,
    contract_code_key,
    contract_data_key,
    instance_key,
)

# The host's cost model, in instructions (deterministic, so a simulated count always
# covers the same call when it is applied).
COST_INVOKE = 1_500_000
COST_STORAGE = 120_000
COST_SIGNATURE = 400_000
COST_KECCAK = 60_000

WEEK_OF_LEDGERS = 60 * 60 * 24 // 5 * 7


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """What a contract sees of the ledger it runs in, and the network's TTL settings."""

    seq: int
    timestamp: int
    network_id: bytes
    min_temp_ttl: int
    min_persistent_ttl: int
    max_entry_ttl: int


class AuthMode(Enum):
    RECORD = "record"
    RECORD_ALLOW_NONROOT = "record_allow_nonroot"
    ENFORCE = "enforce"


class ContractRuntime(Protocol):
    """A natively implemented contract."""

    def invoke(
        self, host: Host, contract: str, fn: str, args: list[stellar_xdr.SCVal]
    ) -> stellar_xdr.SCVal: ...


@dataclass
class Footprint:
    """Read-only and read-write ledger keys, by their XDR bytes."""

    read_only: dict[bytes, stellar_xdr.LedgerKey] = field(default_factory=dict)
    read_write: dict[bytes, stellar_xdr.LedgerKey] = field(default_factory=dict)

    @staticmethod
    def from_xdr(fp: stellar_xdr.LedgerFootprint) -> Footprint:
        return Footprint(
            read_only={k.to_xdr_bytes(): k for k in fp.read_only},
            read_write={k.to_xdr_bytes(): k for k in fp.read_write},
        )

    def to_xdr(self) -> stellar_xdr.LedgerFootprint:
        return stellar_xdr.LedgerFootprint(
            read_only=[self.read_only[kb] for kb in sorted(self.read_only)],
            read_write=[self.read_write[kb] for kb in sorted(self.read_write)],
        )


@dataclass
class _AuthNode:
    function: stellar_xdr.SorobanAuthorizedFunction
    function_bytes: bytes
    children: list[_AuthNode] = field(default_factory=list)
    consumed: bool = False

    @staticmethod
    def from_invocation(inv: stellar_xdr.SorobanAuthorizedInvocation) -> _AuthNode:
        return _AuthNode(
            function=inv.function,
            function_bytes=inv.function.to_xdr_bytes(),
            children=[_AuthNode.from_invocation(c) for c in inv.sub_invocations],
        )

    def to_invocation(self) -> stellar_xdr.SorobanAuthorizedInvocation:
        return stellar_xdr.SorobanAuthorizedInvocation(
            function=self.function, sub_invocations=[c.to_invocation() for c in self.children]
        )


@dataclass
class _AuthEntry:
    address: str
    creds: stellar_xdr.SorobanAddressCredentials | None  # None: source-account credentials
    creds_type: stellar_xdr.SorobanCredentialsType
    root: _AuthNode
    used: bool = False


@dataclass
class _Frame:
    contract: str
    fn: str
    args: list[stellar_xdr.SCVal]
    function: stellar_xdr.SorobanAuthorizedFunction
    function_bytes: bytes
    auth_nodes: dict[str, _AuthNode] = field(default_factory=dict)


def contract_event(
    contract: str | None,
    etype: stellar_xdr.ContractEventType,
    topics: Sequence[stellar_xdr.SCVal],
    data: stellar_xdr.SCVal,
) -> stellar_xdr.ContractEvent:
    """A contract event from `contract` (a C… strkey; None for a system event)."""
    cid = (
        None
        if contract is None
        else stellar_xdr.ContractID(stellar_xdr.Hash(StrKey.decode_contract(contract)))
    )
    return stellar_xdr.ContractEvent(
        ext=stellar_xdr.ExtensionPoint(0),
        contract_id=cid,
        type=etype,
        body=stellar_xdr.ContractEventBody(0, stellar_xdr.ContractEventV0(list(topics), data)),
    )


def nonce_key(address: str, nonce: int) -> stellar_xdr.LedgerKey:
    return contract_data_key(
        address,
        stellar_xdr.SCVal(
            stellar_xdr.SCValType.SCV_LEDGER_KEY_NONCE,
            nonce_key=stellar_xdr.SCNonceKey(stellar_xdr.Int64(nonce)),
        ),
        Durability.TEMPORARY,
    )


def auth_preimage(
    network_id: bytes,
    creds_type: stellar_xdr.SorobanCredentialsType,
    creds: stellar_xdr.SorobanAddressCredentials,
    invocation: stellar_xdr.SorobanAuthorizedInvocation,
) -> stellar_xdr.HashIDPreimage:
    """What an address signs: legacy ADDRESS, or the address-bound ADDRESS_V2 form."""
    if creds_type == stellar_xdr.SorobanCredentialsType.SOROBAN_CREDENTIALS_ADDRESS:
        return stellar_xdr.HashIDPreimage(
            type=stellar_xdr.EnvelopeType.ENVELOPE_TYPE_SOROBAN_AUTHORIZATION,
            soroban_authorization=stellar_xdr.HashIDPreimageSorobanAuthorization(
                network_id=stellar_xdr.Hash(network_id),
                nonce=creds.nonce,
                signature_expiration_ledger=creds.signature_expiration_ledger,
                invocation=invocation,
            ),
        )
    return stellar_xdr.HashIDPreimage(
        type=stellar_xdr.EnvelopeType.ENVELOPE_TYPE_SOROBAN_AUTHORIZATION_WITH_ADDRESS,
        soroban_authorization_with_address=stellar_xdr.HashIDPreimageSorobanAuthorizationWithAddress(
            network_id=stellar_xdr.Hash(network_id),
            nonce=creds.nonce,
            signature_expiration_ledger=creds.signature_expiration_ledger,
            address=creds.address,
            invocation=invocation,
        ),
    )


def _auth_error(detail: str) -> HostError:
    return HostError(ErrType.SCE_AUTH, ErrCode.SCEC_INVALID_ACTION, detail)


class Host:
    """One host function invocation against a state view."""

    def __init__(
        self,
        view: StateView,
        ledger: LedgerInfo,
        *,
        source_account: str,
        footprint: Footprint | None,
        auth_mode: AuthMode,
        auth_entries: Sequence[stellar_xdr.SorobanAuthorizationEntry],
        runtimes: dict[bytes, ContractRuntime],
        sac_runtime: ContractRuntime,
    ) -> None:
        self.view = view
        self.ledger = ledger
        self.source_account = source_account
        self.footprint = footprint
        self.recorded = Footprint()
        self.auth_mode = auth_mode
        self.runtimes = runtimes
        self.sac_runtime = sac_runtime
        self.frames: list[_Frame] = []
        self.instructions = 0
        self.read_bytes = 0
        self._read_seen: set[bytes] = set()
        self.events: list[stellar_xdr.ContractEvent] = []
        self.diagnostics: list[stellar_xdr.DiagnosticEvent] = []
        self._entries: list[_AuthEntry] = []
        self._recorded_auth: list[_AuthEntry] = []
        if auth_mode == AuthMode.ENFORCE:
            self._entries = [self._load_entry(e) for e in auth_entries]

    # ---- storage -------------------------------------------------------------------

    def _access(self, key: stellar_xdr.LedgerKey, write: bool) -> bytes:
        kb = key.to_xdr_bytes()
        self.instructions += COST_STORAGE
        if self.footprint is None:
            if write:
                self.recorded.read_only.pop(kb, None)
                self.recorded.read_write[kb] = key
            elif kb not in self.recorded.read_write:
                self.recorded.read_only[kb] = key
        else:
            in_rw = kb in self.footprint.read_write
            if write and not in_rw:
                raise HostError(
                    ErrType.SCE_STORAGE,
                    ErrCode.SCEC_EXCEEDED_LIMIT,
                    "trying to write a ledger key outside the read-write footprint",
                )
            if not in_rw and kb not in self.footprint.read_only:
                raise HostError(
                    ErrType.SCE_STORAGE,
                    ErrCode.SCEC_EXCEEDED_LIMIT,
                    "trying to access a ledger key outside the footprint",
                )
        if kb not in self._read_seen:
            self._read_seen.add(kb)
            entry = self.view.get(kb)
            if entry is not None:
                self.read_bytes += len(entry.data.to_xdr_bytes())
        return kb

    def get_entry(self, key: stellar_xdr.LedgerKey) -> Entry | None:
        return self.view.get(self._access(key, write=False))

    def put_entry(
        self, key: stellar_xdr.LedgerKey, data: stellar_xdr.LedgerEntryData, live_until: int | None
    ) -> None:
        kb = self._access(key, write=True)
        self.view.put(key, data, live_until, kb=kb)

    def delete_entry(self, key: stellar_xdr.LedgerKey) -> None:
        self._access(key, write=True)
        self.view.delete(key)

    def write_bytes(self) -> int:
        """Bytes of every entry this invocation wrote (as the ledger will store them)."""
        total = 0
        for kb in self.view.changes:
            entry = self.view.get(kb)
            if entry is not None:
                total += len(entry.data.to_xdr_bytes())
        return total

    # ---- contract data --------------------------------------------------------------

    def _new_ttl(self, durability: stellar_xdr.ContractDataDurability) -> int:
        ttl = (
            self.ledger.min_temp_ttl
            if durability == Durability.TEMPORARY
            else self.ledger.min_persistent_ttl
        )
        return self.ledger.seq + ttl - 1

    def data_get(
        self, contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
    ) -> stellar_xdr.SCVal | None:
        entry = self.get_entry(contract_data_key(contract, key, durability))
        if entry is None:
            return None
        assert entry.data.contract_data is not None
        return entry.data.contract_data.val

    def data_has(
        self, contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
    ) -> bool:
        return self.data_get(contract, key, durability) is not None

    def data_set(
        self,
        contract: str,
        key: stellar_xdr.SCVal,
        val: stellar_xdr.SCVal,
        durability: stellar_xdr.ContractDataDurability,
    ) -> None:
        lk = contract_data_key(contract, key, durability)
        kb = self._access(lk, write=True)
        current = self.view.get(kb)
        # A new entry gets the minimum TTL; overwriting keeps the TTL it has.
        live_until = current.live_until if current is not None else self._new_ttl(durability)
        assert lk.contract_data is not None
        data = stellar_xdr.LedgerEntryData(
            stellar_xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=stellar_xdr.ContractDataEntry(
                ext=stellar_xdr.ExtensionPoint(0),
                contract=lk.contract_data.contract,
                key=key,
                durability=durability,
                val=val,
            ),
        )
        self.view.put(lk, data, live_until, kb=kb)

    def data_remove(
        self, contract: str, key: stellar_xdr.SCVal, durability: stellar_xdr.ContractDataDurability
    ) -> None:
        self.delete_entry(contract_data_key(contract, key, durability))

    def _instance(self, contract: str) -> stellar_xdr.SCContractInstance:
        entry = self.get_entry(instance_key(contract))
        if entry is None or entry.data.contract_data is None:
            raise HostError(
                ErrType.SCE_STORAGE, ErrCode.SCEC_MISSING_VALUE, "contract instance is missing"
            )
        instance = entry.data.contract_data.val.instance
        assert instance is not None
        return instance

    def instance_get(self, contract: str, key: stellar_xdr.SCVal) -> stellar_xdr.SCVal | None:
        storage = self._instance(contract).storage
        kb = key.to_xdr_bytes()
        for item in storage.sc_map if storage else []:
            if item.key.to_xdr_bytes() == kb:
                return item.val
        return None

    def instance_set(self, contract: str, key: stellar_xdr.SCVal, val: stellar_xdr.SCVal) -> None:
        instance = self._instance(contract)
        kb = key.to_xdr_bytes()
        items = [
            (e.key, e.val)
            for e in (instance.storage.sc_map if instance.storage else [])
            if e.key.to_xdr_bytes() != kb
        ]
        items.append((key, val))
        storage = v.sorted_map(items).map
        self._write_instance(contract, stellar_xdr.SCContractInstance(instance.executable, storage))

    def _write_instance(self, contract: str, instance: stellar_xdr.SCContractInstance) -> None:
        lk = instance_key(contract)
        assert lk.contract_data is not None
        data = stellar_xdr.LedgerEntryData(
            stellar_xdr.LedgerEntryType.CONTRACT_DATA,
            contract_data=stellar_xdr.ContractDataEntry(
                ext=stellar_xdr.ExtensionPoint(0),
                contract=lk.contract_data.contract,
                key=lk.contract_data.key,
                durability=Durability.PERSISTENT,
                val=stellar_xdr.SCVal(
                    stellar_xdr.SCValType.SCV_CONTRACT_INSTANCE, instance=instance
                ),
            ),
        )
        self.put_entry(lk, data, None)

    def instance_wasm_hash(self, contract: str) -> bytes | None:
        wasm = self._instance(contract).executable.wasm_hash
        return None if wasm is None else bytes(wasm.hash)

    def max_ttl(self) -> int:
        """What `env.storage().max_ttl()` returns."""
        return self.ledger.max_entry_ttl - 1

    def extend_ttl(self, key: stellar_xdr.LedgerKey, threshold: int, extend_to: int) -> None:
        entry = self.get_entry(key)
        if entry is None or entry.live_until is None:
            return
        if entry.live_until - self.ledger.seq < threshold:
            self.view.set_ttl(key, self.ledger.seq + extend_to)

    def extend_instance_ttl(self, contract: str, threshold: int, extend_to: int) -> None:
        """Extend the instance and, for a Wasm contract, its code (as the host does)."""
        instance = self._instance(contract)
        self.extend_ttl(instance_key(contract), threshold, extend_to)
        wasm = instance.executable.wasm_hash
        if wasm is not None:
            self.extend_ttl(contract_code_key(wasm.hash), threshold, extend_to)

    # ---- calls and events ---------------------------------------------------------

    @property
    def current_contract(self) -> str:
        return self.frames[-1].contract

    def call(self, contract: str, fn: str, args: list[stellar_xdr.SCVal]) -> stellar_xdr.SCVal:
        """Invoke `fn` on `contract`; errors propagate as HostError (no try_call here)."""
        self.instructions += COST_INVOKE
        self.diagnostics.append(
            stellar_xdr.DiagnosticEvent(
                in_successful_contract_call=True,
                event=contract_event(
                    None,
                    stellar_xdr.ContractEventType.DIAGNOSTIC,
                    [
                        v.symbol("fn_call"),
                        v.bytes_val(StrKey.decode_contract(contract)),
                        v.symbol(fn),
                    ],
                    v.vec(args),
                ),
            )
        )
        instance = self._instance(contract)
        runtime: ContractRuntime
        executable = instance.executable
        if executable.type == stellar_xdr.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET:
            runtime = self.sac_runtime
        else:
            assert executable.wasm_hash is not None
            code = self.get_entry(contract_code_key(executable.wasm_hash.hash))
            found = self.runtimes.get(executable.wasm_hash.hash)
            if code is None or found is None:
                raise HostError(
                    ErrType.SCE_STORAGE, ErrCode.SCEC_MISSING_VALUE, "contract code is missing"
                )
            runtime = found
        address = v.address(contract).address
        assert address is not None
        function = stellar_xdr.SorobanAuthorizedFunction(
            stellar_xdr.SorobanAuthorizedFunctionType.SOROBAN_AUTHORIZED_FUNCTION_TYPE_CONTRACT_FN,
            contract_fn=stellar_xdr.InvokeContractArgs(
                contract_address=address,
                function_name=stellar_xdr.SCSymbol(fn.encode()),
                args=args,
            ),
        )
        self.frames.append(_Frame(contract, fn, args, function, function.to_xdr_bytes()))
        try:
            result = runtime.invoke(self, contract, fn, args)
        except HostError as err:
            if err.contract is None and err.etype == ErrType.SCE_CONTRACT:
                err.contract = contract
            self.log_error(contract, err)
            raise
        finally:
            self.frames.pop()
        self.diagnostics.append(
            stellar_xdr.DiagnosticEvent(
                in_successful_contract_call=True,
                event=contract_event(
                    contract,
                    stellar_xdr.ContractEventType.DIAGNOSTIC,
                    [v.symbol("fn_return"), v.symbol(fn)],
                    result,
                ),
            )
        )
        return result

    def log_error(self, contract: str, err: HostError) -> None:
        if err.diagnosed:
            return
        err.diagnosed = True
        message = err.detail or "escalating error to VM trap from failed host function call"
        self.diagnostics.append(
            stellar_xdr.DiagnosticEvent(
                in_successful_contract_call=False,
                event=contract_event(
                    contract,
                    stellar_xdr.ContractEventType.DIAGNOSTIC,
                    [v.symbol("error"), v.error_val(err)],
                    v.string_val(message),
                ),
            )
        )

    def emit(self, topics: Sequence[stellar_xdr.SCVal], data: stellar_xdr.SCVal) -> None:
        """A contract event from the current contract."""
        self.events.append(
            contract_event(
                self.current_contract, stellar_xdr.ContractEventType.CONTRACT, topics, data
            )
        )

    # ---- authorization --------------------------------------------------------------

    def _load_entry(self, entry: stellar_xdr.SorobanAuthorizationEntry) -> _AuthEntry:
        creds = entry.credentials
        CT = stellar_xdr.SorobanCredentialsType
        root = _AuthNode.from_invocation(entry.root_invocation)
        if creds.type == CT.SOROBAN_CREDENTIALS_SOURCE_ACCOUNT:
            return _AuthEntry(self.source_account, None, creds.type, root)
        addr_creds = creds.address if creds.type == CT.SOROBAN_CREDENTIALS_ADDRESS else None
        if creds.type == CT.SOROBAN_CREDENTIALS_ADDRESS_V2:
            addr_creds = creds.address_v2
        if addr_creds is None:
            raise _auth_error("unsupported authorization credentials")
        return _AuthEntry(v.address_str(addr_creds.address), addr_creds, creds.type, root)

    def require_auth(self, address: str) -> None:
        """`address.require_auth()` in the current frame."""
        frame = self.frames[-1]
        # A contract is authorized for calls it makes itself (the invoker).
        if len(self.frames) >= 2 and self.frames[-2].contract == address:
            return
        if self.auth_mode == AuthMode.ENFORCE:
            self._enforce(frame, address)
        else:
            self._record(frame, address)

    def _parent_node(self, address: str) -> _AuthNode | None:
        for ancestor in reversed(self.frames[:-1]):
            node = ancestor.auth_nodes.get(address)
            if node is not None:
                return node
        return None

    def _record(self, frame: _Frame, address: str) -> None:
        parent = self._parent_node(address)
        node = _AuthNode(frame.function, frame.function_bytes)
        frame.auth_nodes[address] = node
        if parent is not None:
            parent.children.append(node)
            return
        if len(self.frames) > 1 and self.auth_mode == AuthMode.RECORD:
            raise _auth_error(
                "[recording authorization only] encountered authorization not tied to the root "
                "contract invocation for an address. Use `require_auth()` in the top invocation "
                "or enable non-root authorization."
            )
        CT = stellar_xdr.SorobanCredentialsType
        if address == self.source_account:
            self._recorded_auth.append(
                _AuthEntry(address, None, CT.SOROBAN_CREDENTIALS_SOURCE_ACCOUNT, node)
            )
            return
        nonce = random.randint(-(2**63), 2**63 - 1)
        sc_address = v.address(address).address
        assert sc_address is not None
        creds = stellar_xdr.SorobanAddressCredentials(
            address=sc_address,
            nonce=stellar_xdr.Int64(nonce),
            signature_expiration_ledger=stellar_xdr.Uint32(0),
            signature=v.void(),
        )
        self._recorded_auth.append(_AuthEntry(address, creds, CT.SOROBAN_CREDENTIALS_ADDRESS, node))
        # Exactly what enforcing will do, so the recorded footprint and budget cover it:
        # read then write the nonce, read the account, verify one signature.
        self._access(nonce_key(address, nonce), write=False)
        self._access(nonce_key(address, nonce), write=True)
        if v.is_account(address):
            self._access(account_key(address), write=False)
            self.instructions += COST_SIGNATURE

    def _enforce(self, frame: _Frame, address: str) -> None:
        parent = self._parent_node(address)
        if parent is not None:
            for child in parent.children:
                if not child.consumed and child.function_bytes == frame.function_bytes:
                    child.consumed = True
                    frame.auth_nodes[address] = child
                    return
        for entry in self._entries:
            if entry.used or entry.address != address:
                continue
            if entry.root.function_bytes != frame.function_bytes:
                continue
            self._authenticate(entry)
            entry.used = True
            entry.root.consumed = True
            frame.auth_nodes[address] = entry.root
            return
        raise _auth_error(f"Unauthorized function call for address {address}")

    def _authenticate(self, entry: _AuthEntry) -> None:
        creds = entry.creds
        if creds is None:
            return  # the envelope's signature already covers the source account
        expiration = creds.signature_expiration_ledger.uint32
        if expiration < self.ledger.seq:
            raise HostError(ErrType.SCE_AUTH, ErrCode.SCEC_INVALID_INPUT, "signature has expired")
        if expiration > self.ledger.seq + self.ledger.max_entry_ttl - 1:
            raise HostError(
                ErrType.SCE_AUTH,
                ErrCode.SCEC_INVALID_INPUT,
                "signature expiration is too late",
            )
        key = nonce_key(entry.address, creds.nonce.int64)
        if self.get_entry(key) is not None:
            raise HostError(
                ErrType.SCE_AUTH, ErrCode.SCEC_EXISTING_VALUE, "nonce already exists for address"
            )
        assert key.contract_data is not None
        self.put_entry(
            key,
            stellar_xdr.LedgerEntryData(
                stellar_xdr.LedgerEntryType.CONTRACT_DATA,
                contract_data=stellar_xdr.ContractDataEntry(
                    ext=stellar_xdr.ExtensionPoint(0),
                    contract=key.contract_data.contract,
                    key=key.contract_data.key,
                    durability=Durability.TEMPORARY,
                    val=v.void(),
                ),
            ),
            expiration,
        )
        if not v.is_account(entry.address):
            raise _auth_error("the devnet has no custom account contracts")
        if self.get_entry(account_key(entry.address)) is None:
            raise HostError(ErrType.SCE_AUTH, ErrCode.SCEC_INVALID_INPUT, "account is missing")
        payload = hashlib.sha256(
            auth_preimage(
                self.ledger.network_id, entry.creds_type, creds, entry.root.to_invocation()
            ).to_xdr_bytes()
        ).digest()
        self._check_account_signatures(entry.address, creds.signature, payload)

    def _check_account_signatures(
        self, account: str, signature: stellar_xdr.SCVal, payload: bytes
    ) -> None:
        bad_shape = HostError(
            ErrType.SCE_AUTH, ErrCode.SCEC_INVALID_INPUT, "malformed account signatures"
        )
        if signature.type != stellar_xdr.SCValType.SCV_VEC or signature.vec is None:
            raise bad_shape
        master = StrKey.decode_ed25519_public_key(account)
        weight = 0
        previous = b""
        for item in signature.vec.sc_vec:
            try:
                fields = v.struct_fields(item, ("public_key", "signature"))
                public_key = v.as_bytes(fields["public_key"], 32)
                sig = v.as_bytes(fields["signature"], 64)
            except HostError:
                raise bad_shape from None
            if public_key <= previous:
                raise bad_shape  # signatures must be sorted by key, without duplicates
            previous = public_key
            self.instructions += COST_SIGNATURE
            try:
                VerifyKey(public_key).verify(payload, sig)
            except BadSignatureError:
                raise HostError(
                    ErrType.SCE_CRYPTO, ErrCode.SCEC_INVALID_INPUT, "failed ed25519 verification"
                ) from None
            if public_key != master:
                raise _auth_error("signer does not belong to the account")
            weight += 1
        if weight < 1:
            raise _auth_error("signature weight is lower than the account's threshold")

    def recorded_auth(self) -> list[stellar_xdr.SorobanAuthorizationEntry]:
        CT = stellar_xdr.SorobanCredentialsType
        out = []
        for entry in self._recorded_auth:
            if entry.creds is None:
                creds = stellar_xdr.SorobanCredentials(CT.SOROBAN_CREDENTIALS_SOURCE_ACCOUNT)
            else:
                creds = stellar_xdr.SorobanCredentials(
                    CT.SOROBAN_CREDENTIALS_ADDRESS, address=entry.creds
                )
            out.append(
                stellar_xdr.SorobanAuthorizationEntry(
                    credentials=creds, root_invocation=entry.root.to_invocation()
                )
            )
        return out
