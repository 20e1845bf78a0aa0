"""The stage of the chain client tests: one devnet, driven by manual ledger closes.

Setup (friendbot, trustlines, KALE) goes over plain HTTP and the RPC; what is under
test goes through `kalepool.chain`.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from stellar_sdk import Keypair, StrKey, TransactionBuilder
from stellar_sdk.soroban_rpc import SendTransactionStatus

from kale_devnet import DevnetConfig, DevnetServer
from kalepool import protocol
from kalepool.chain import (
    ChainClient,
    RetryPolicy,
    SignedTx,
    SubmitEvent,
    SubmitStep,
    TxOutcome,
    UnsignedTx,
    resolve_chain_config,
    sign,
    submit,
)
from kalepool.settings import Settings

try:  # the fast miner when it is built; the Python reference otherwise
    import miner_ext
except ImportError:  # pragma: no cover - depends on the build
    miner_ext = None

KALE = 10_000_000  # stroops per KALE


def devnet_config(**overrides: Any) -> DevnetConfig:
    """A manual devnet on a free port, its clock a week behind the wall clock (so nothing
    can pass for a wall-clock bound by accident: every bound here comes from the chain)."""
    settings: dict[str, Any] = {
        "port": 0,
        "manual": True,
        "genesis_time": int(time.time()) - 7 * 86_400,
        "ledger_seconds": 5,
    }
    settings.update(overrides)
    return DevnetConfig(**settings)


@asynccontextmanager
async def open_stage(*, stall_seconds: float = 30.0, **devnet: Any) -> AsyncIterator[Stage]:
    """A devnet with these settings and a chain client resolved for it from Settings."""
    async with DevnetServer(devnet_config(**devnet)) as server, aiohttp.ClientSession() as http:
        with tempfile.TemporaryDirectory() as data_dir:
            settings = Settings(
                network="devnet", rpc_url=server.url, data_dir=Path(data_dir), _env_file=None
            )
            config = await resolve_chain_config(settings, session=http)
        # Polls and backoff in milliseconds: the devnet answers at once and every ledger
        # close is the test's own doing, so nothing waits on the wall clock.
        client = ChainClient(
            config,
            retry=RetryPolicy(attempts=6, initial_delay=0.01, max_delay=0.05),
            poll_interval=0.01,
            stall_seconds=stall_seconds,
        )
        try:
            yield Stage(server, http, client)
        finally:
            await client.aclose()


class AdminError(RuntimeError):
    pass


@dataclass
class Stage:
    server: DevnetServer
    http: aiohttp.ClientSession
    client: ChainClient
    applied: list[str] = field(default_factory=list)  # every hash any close applied

    # ---- the devnet's admin interface ---------------------------------------------------

    async def admin(self, method: str, **params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.http.post(self.server.url, json=body) as resp:
            answer = await resp.json()
        if "error" in answer:
            raise AdminError(answer["error"]["message"])
        return answer["result"]

    async def close(self, count: int = 1) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("devnet_closeLedger", count=count)
        self.applied.extend(result["applied"])
        return result

    async def advance(self, seconds: int) -> None:
        await self.admin("devnet_advanceTime", seconds=seconds)

    async def faults(self, **settings: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("devnet_setFaults", **settings)
        return result

    async def info(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.admin("devnet_info")
        return result

    # ---- accounts ---------------------------------------------------------------------

    async def friendbot(self, address: str, kale: int = 0) -> None:
        params = {"addr": address}
        if kale:
            params["kale"] = str(kale)
        async with self.http.get(f"{self.server.url}/friendbot", params=params) as resp:
            assert resp.status == 200, await resp.text()

    async def accounts(self, count: int, *, kale: int = 0, trust: bool = False) -> list[Keypair]:
        """Funded accounts; with `kale` (stroops) or `trust`, a KALE trustline too."""
        keys = [Keypair.random() for _ in range(count)]
        for kp in keys:
            await self.friendbot(kp.public_key)
        await self.close()
        if kale or trust:
            cfg = self.client.config
            for kp in keys:
                account = await self.client.rpc.load_account(kp.public_key)
                tx = (
                    TransactionBuilder(account, cfg.network_passphrase, 100)
                    .append_change_trust_op(cfg.asset)
                    .set_timeout(3600)
                    .build()
                )
                tx.sign(kp)
                sent = await self.client.rpc.send_transaction(tx)
                assert sent.status == SendTransactionStatus.PENDING, sent
            await self.close()
        if kale:
            for kp in keys:
                await self.friendbot(kp.public_key, kale)
            await self.close()
        return keys

    async def account(self, *, kale: int = 0, trust: bool = False) -> Keypair:
        return (await self.accounts(1, kale=kale, trust=trust))[0]

    # ---- driving submissions ----------------------------------------------------------

    def closer(
        self,
        on: Iterable[SubmitStep] = (
            SubmitStep.SENT,
            SubmitStep.DUPLICATE,
            SubmitStep.TRY_AGAIN_LATER,
        ),
        events: list[SubmitEvent] | None = None,
    ) -> Callable[[SubmitEvent], Awaitable[None]]:
        """An observer that closes a ledger at the given steps (and logs every event)."""
        steps = set(on)

        async def observe(event: SubmitEvent) -> None:
            if events is not None:
                events.append(event)
            if event.step in steps:
                await self.close()

        return observe

    async def run(self, tx: UnsignedTx, *signers: Keypair) -> TxOutcome:
        """Sign, submit and settle, closing a ledger whenever the envelope is queued."""
        return await self.settle(sign(tx, *signers))

    async def settle(self, signed: SignedTx) -> TxOutcome:
        return await submit(self.client, signed, observe=self.closer())


def mine(index: int, entropy: bytes, farmer: str, min_zeros: int) -> tuple[int, bytes, int]:
    """A nonce whose work hash has at least `min_zeros` leading zero nibbles."""
    raw = StrKey.decode_ed25519_public_key(farmer)
    if miner_ext is not None and hasattr(miner_ext, "search"):
        found = miner_ext.search(index, entropy, raw, target_zeros=min_zeros, threads=1)
        return found.nonce, found.hash, found.zeros
    for nonce in itertools.count():
        digest = protocol.kale_hash(index, nonce, entropy, raw)
        zeros = protocol.leading_zeros(digest)
        if zeros >= min_zeros:
            return nonce, digest, zeros
    raise AssertionError("unreachable")
