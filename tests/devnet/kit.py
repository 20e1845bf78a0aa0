"""A client's toolkit for the devnet tests: everything goes through the unmodified
stellar-sdk (SorobanServerAsync) or plain HTTP, as an outside user would drive it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from stellar_sdk import (
    Address,
    Keypair,
    SorobanServerAsync,
    StrKey,
    TransactionBuilder,
    TransactionEnvelope,
    scval,
)
from stellar_sdk import xdr as stellar_xdr
from stellar_sdk.auth import authorize_entry
from stellar_sdk.base_soroban_server import Durability
from stellar_sdk.exceptions import PrepareTransactionException
from stellar_sdk.soroban_rpc import (
    GetTransactionResponse,
    GetTransactionStatus,
    SendTransactionResponse,
    SendTransactionStatus,
)

from kale_devnet import DevnetConfig, DevnetServer, identity
from kalepool import protocol

try:  # the fast miner when it is built; the Python reference otherwise
    import miner_ext
except ImportError:  # pragma: no cover - depends on the build
    miner_ext = None

BASE_FEE = 100
KALE = 10_000_000  # stroops per KALE
XLM = 10_000_000
# The chain clock of a manual devnet is set a week back, so the wall-clock time bounds
# stellar-sdk puts on transactions (set_timeout) stay valid however far a test advances it.
GENESIS_LAG = 7 * 86_400


def devnet_config(**overrides: Any) -> DevnetConfig:
    """A manual devnet on a free port: ledgers close only when a test asks."""
    settings: dict[str, Any] = {
        "port": 0,
        "manual": True,
        "genesis_time": int(time.time()) - GENESIS_LAG,
        "ledger_seconds": 5,
    }
    settings.update(overrides)
    return DevnetConfig(**settings)


class AdminError(RuntimeError):
    pass


@dataclass
class Balances:
    xlm: int
    kale: int | None  # None: no trustline
    seq: int
    sub_entries: int


class Kit:
    """One devnet, an SDK client on it, and helpers to build, send and read."""

    def __init__(self, server: DevnetServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        self.rpc = SorobanServerAsync(server.url)
        ident = identity()
        self.passphrase = ident.network_passphrase
        self.farm = ident.farm_contract_id
        self.sac = ident.sac_contract_id
        self.asset = ident.asset
        self.homesteader = ident.homesteader

    # ---- admin and friendbot over HTTP ------------------------------------------------

    async def admin(self, method: str, **params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.http.post(self.server.url, json=body) as resp:
            answer = await resp.json()
        if "error" in answer:
            raise AdminError(answer["error"]["message"])
        return answer["result"]

    async def close(self, count: int = 1) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("devnet_closeLedger", count=count)
        return result

    async def advance(self, seconds: int) -> None:
        await self.admin("devnet_advanceTime", seconds=seconds)

    async def faults(self, **settings: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("devnet_setFaults", **settings)
        return result

    async def friendbot(self, address: str, kale: int = 0) -> tuple[int, dict[str, Any]]:
        params = {"addr": address}
        if kale:
            params["kale"] = str(kale)
        async with self.http.get(f"{self.server.url}/friendbot", params=params) as resp:
            return resp.status, await resp.json(content_type=None)

    async def new_accounts(
        self, count: int, *, trust: bool = False, kale: int = 0
    ) -> list[Keypair]:
        """Funded accounts (friendbot), optionally with a KALE trustline and KALE."""
        keys = [Keypair.random() for _ in range(count)]
        for chunk in _chunks(keys, 30):
            for kp in chunk:
                status, body = await self.friendbot(kp.public_key)
                assert status == 200, body
            await self.close()
        if trust or kale:
            for chunk in _chunks(keys, 200):
                for kp in chunk:
                    tx = (await self.builder(kp)).append_change_trust_op(self.asset).build()
                    tx.sign(kp)
                    sent = await self.rpc.send_transaction(tx)
                    assert sent.status == SendTransactionStatus.PENDING, sent
                await self.close()
        if kale:
            for chunk in _chunks(keys, 30):
                for kp in chunk:
                    status, body = await self.friendbot(kp.public_key, kale)
                    assert status == 200, body
                await self.close()
        return keys

    async def new_account(self, *, trust: bool = False, kale: int = 0) -> Keypair:
        return (await self.new_accounts(1, trust=trust, kale=kale))[0]

    # ---- transactions -----------------------------------------------------------------

    async def builder(self, source: Keypair | str, *, fee: int = BASE_FEE) -> TransactionBuilder:
        public = source if isinstance(source, str) else source.public_key
        account = await self.rpc.load_account(public)
        return TransactionBuilder(account, self.passphrase, base_fee=fee).set_timeout(300)

    async def send(self, envelope: TransactionEnvelope | str) -> SendTransactionResponse:
        return await self.rpc.send_transaction(envelope)

    async def submit(self, envelope: TransactionEnvelope) -> GetTransactionResponse:
        """Send, close a ledger, and read the outcome."""
        sent = await self.rpc.send_transaction(envelope)
        assert sent.status == SendTransactionStatus.PENDING, sent
        await self.close()
        got = await self.rpc.get_transaction(sent.hash)
        assert got.status != GetTransactionStatus.NOT_FOUND, got
        return got

    async def prepare_invoke(
        self,
        source: Keypair,
        fn: str,
        args: Sequence[stellar_xdr.SCVal],
        *,
        contract: str | None = None,
        signers: Sequence[Keypair] = (),
    ) -> TransactionEnvelope:
        """Build, simulate and assemble a contract call; sign address auth entries with
        `signers` (as the farmer does when someone else pays the fee), then the envelope."""
        tx = (
            (await self.builder(source))
            .append_invoke_contract_function_op(contract or self.farm, fn, list(args))
            .build()
        )
        prepared = await self.rpc.prepare_transaction(tx)
        if signers:
            latest = await self.rpc.get_latest_ledger()
            op = prepared.transaction.operations[0]
            by_address = {kp.public_key: kp for kp in signers}
            signed = []
            for entry in op.auth:  # type: ignore[attr-defined]
                creds = entry.credentials.address
                if creds is None:
                    signed.append(entry)
                    continue
                who = Address.from_xdr_sc_address(creds.address).address
                signed.append(
                    authorize_entry(entry, by_address[who], latest.sequence + 20, self.passphrase)
                )
            op.auth = signed  # type: ignore[attr-defined]
        prepared.sign(source)
        return prepared

    async def invoke(
        self,
        source: Keypair,
        fn: str,
        args: Sequence[stellar_xdr.SCVal],
        *,
        contract: str | None = None,
        signers: Sequence[Keypair] = (),
    ) -> GetTransactionResponse:
        envelope = await self.prepare_invoke(source, fn, args, contract=contract, signers=signers)
        return await self.submit(envelope)

    async def simulate_error(
        self,
        source: Keypair,
        fn: str,
        args: Sequence[stellar_xdr.SCVal],
        contract: str | None = None,
    ) -> str:
        """The error `prepare_transaction` raises with, as a client sees it on mainnet."""
        tx = (
            (await self.builder(source))
            .append_invoke_contract_function_op(contract or self.farm, fn, list(args))
            .build()
        )
        try:
            await self.rpc.prepare_transaction(tx)
        except PrepareTransactionException as exc:
            assert exc.simulate_transaction_response.error is not None
            return exc.simulate_transaction_response.error
        raise AssertionError(f"{fn} simulated without error")

    # ---- reading state ----------------------------------------------------------------

    async def balances(self, address: str) -> Balances | None:
        account_key = stellar_xdr.LedgerKey(
            stellar_xdr.LedgerEntryType.ACCOUNT,
            account=stellar_xdr.LedgerKeyAccount(Keypair.from_public_key(address).xdr_account_id()),
        )
        trust_key = stellar_xdr.LedgerKey(
            stellar_xdr.LedgerEntryType.TRUSTLINE,
            trust_line=stellar_xdr.LedgerKeyTrustLine(
                Keypair.from_public_key(address).xdr_account_id(),
                self.asset.to_trust_line_asset_xdr_object(),
            ),
        )
        got = await self.rpc.get_ledger_entries([account_key, trust_key])
        acc = tl = None
        for item in got.entries or []:
            data = stellar_xdr.LedgerEntryData.from_xdr(item.xdr)
            if data.account is not None:
                acc = data.account
            if data.trust_line is not None:
                tl = data.trust_line
        if acc is None:
            return None
        return Balances(
            xlm=acc.balance.int64,
            kale=None if tl is None else tl.balance.int64,
            seq=acc.seq_num.sequence_number.int64,
            sub_entries=acc.num_sub_entries.uint32,
        )

    async def farm_instance(self) -> dict[str, Any]:
        """The farm's instance storage, keyed by the variant name (FarmIndex, FarmBlock, ...)."""
        entry = await self.rpc.get_contract_data(
            self.farm,
            stellar_xdr.SCVal(stellar_xdr.SCValType.SCV_LEDGER_KEY_CONTRACT_INSTANCE),
            Durability.PERSISTENT,
        )
        assert entry is not None
        data = stellar_xdr.LedgerEntryData.from_xdr(entry.xdr)
        assert data.contract_data is not None and data.contract_data.val.instance is not None
        storage = data.contract_data.val.instance.storage
        out: dict[str, Any] = {}
        for item in storage.sc_map if storage else []:
            key = scval.to_native(item.key)
            assert isinstance(key, list) and len(key) == 1
            out[key[0]] = scval.to_native(item.val)
        return out

    async def farm_index(self) -> int:
        return int((await self.farm_instance()).get("FarmIndex", 0))

    async def temp_entry(self, key: stellar_xdr.SCVal) -> tuple[dict[str, Any], int] | None:
        """A temporary farm entry as native values, and its liveUntilLedgerSeq."""
        entry = await self.rpc.get_contract_data(self.farm, key, Durability.TEMPORARY)
        if entry is None:
            return None
        data = stellar_xdr.LedgerEntryData.from_xdr(entry.xdr)
        assert data.contract_data is not None
        value = scval.to_native(data.contract_data.val)
        assert isinstance(value, dict) and entry.live_until_ledger is not None
        return value, entry.live_until_ledger

    async def block(self, index: int) -> dict[str, Any] | None:
        got = await self.temp_entry(
            scval.to_vec([scval.to_symbol("Block"), scval.to_uint32(index)])
        )
        return None if got is None else got[0]

    async def pail(self, farmer: str, index: int) -> dict[str, Any] | None:
        got = await self.temp_entry(
            scval.to_vec(
                [scval.to_symbol("Pail"), scval.to_address(farmer), scval.to_uint32(index)]
            )
        )
        return None if got is None else got[0]

    # ---- farming ----------------------------------------------------------------------

    async def plant(self, farmer: Keypair, amount: int) -> GetTransactionResponse:
        return await self.invoke(
            farmer, "plant", [scval.to_address(farmer.public_key), scval.to_int128(amount)]
        )

    async def work(
        self, source: Keypair, farmer: str, hash_: bytes, nonce: int
    ) -> GetTransactionResponse:
        return await self.invoke(
            source,
            "work",
            [scval.to_address(farmer), scval.to_bytes(hash_), scval.to_uint64(nonce)],
        )

    async def harvest(self, source: Keypair, farmer: str, index: int) -> GetTransactionResponse:
        return await self.invoke(
            source, "harvest", [scval.to_address(farmer), scval.to_uint32(index)]
        )

    async def aclose(self) -> None:
        await self.rpc.close()


def return_value(got: GetTransactionResponse) -> Any:
    """The contract's return value, read from TransactionMeta as the SDK's client does."""
    assert got.result_meta_xdr is not None
    meta = stellar_xdr.TransactionMeta.from_xdr(got.result_meta_xdr)
    body = meta.v4 or meta.v3
    assert body is not None and body.soroban_meta is not None
    assert body.soroban_meta.return_value is not None
    return scval.to_native(body.soroban_meta.return_value)


def result_code(xdr_b64: str) -> str:
    return stellar_xdr.TransactionResult.from_xdr(xdr_b64).result.code.name


def fee_charged(got: GetTransactionResponse) -> int:
    assert got.result_xdr is not None
    return int(stellar_xdr.TransactionResult.from_xdr(got.result_xdr).fee_charged.int64)


def mine(
    index: int, entropy: bytes, farmer: str, min_zeros: int, start: int = 0
) -> tuple[int, bytes, int]:
    """A nonce whose work hash has at least `min_zeros` leading zero nibbles."""
    raw = StrKey.decode_ed25519_public_key(farmer)
    if miner_ext is not None and hasattr(miner_ext, "search"):
        found = miner_ext.search(
            index, entropy, raw, start_nonce=start, target_zeros=min_zeros, threads=1
        )
        return found.nonce, found.hash, found.zeros
    for nonce in itertools.count(start):
        digest = protocol.kale_hash(index, nonce, entropy, raw)
        zeros = protocol.leading_zeros(digest)
        if zeros >= min_zeros:
            return nonce, digest, zeros
    raise AssertionError("unreachable")


def _chunks(items: list[Keypair], size: int) -> list[list[Keypair]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def tx_error(got: GetTransactionResponse) -> str:
    """The host error a failed contract call reported, e.g. `Error(Contract, #8)`."""
    for raw in got.diagnostic_events_xdr or []:
        event = stellar_xdr.DiagnosticEvent.from_xdr(raw).event
        body = event.body.v0
        assert body is not None
        if body.topics and scval.to_native(body.topics[0]) == "error":
            err = body.topics[1].error
            assert err is not None
            if err.contract_code is not None:
                return f"Error(Contract, #{err.contract_code.uint32})"
            assert err.code is not None
            return f"Error({err.type.name}, {err.code.name})"
    raise AssertionError("no error event in the diagnostics")
