"""Demo farmers for the local stack: registered, funded and farming, found again on reruns.

Each demo farmer is registered through PoolService with an idempotency key (a rerun gets
the same farmer back), its custodial account gets XLM from the friendbot, ConfirmFunding
adds its KALE trustline, and the devnet's friendbot pays it KALE to stake; the pool then
credits that deposit (it follows the chain). Its payout address is a devnet account of
its own, funded and trusting KALE, whose key is kept in `<data dir>/demo/farmers.json`
(0600, devnet keys only) so that payouts work in the demo.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc
from stellar_sdk import Keypair

from kalepool.amounts import format_kale
from kalepool.app.files import write_atomic
from kalepool.app.funding import (
    KALE,
    Friendbot,
    FundingError,
    ensure_account,
    ensure_trustline,
    wait_for_account,
)
from kalepool.app.observer import StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import ProvisionedPooler
from kalepool.chain import ChainClient, read_account
from kalepool.settings import Settings, make_private
from kalepool.v1 import common_pb2, pool_pb2

DEMO_KALE = 100 * KALE  # what each demo farmer deposits
DEMO_STAKE_BPS = 5_000  # half its balance staked in each plant
_CONFIRM_ATTEMPTS = 15


@dataclass
class DemoEntry:
    """One demo farmer as the data directory remembers it."""

    name: str
    pooler: str  # the local pooler's name
    payout_secret: str

    @property
    def payout(self) -> Keypair:
        return Keypair.from_secret(self.payout_secret)


class DemoBook:
    """`<data dir>/demo/farmers.json`: the demo farmers' poolers and payout keys."""

    def __init__(self, settings: Settings) -> None:
        self.path: Path = settings.layout().root / "demo" / "farmers.json"
        raw: dict[str, object] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                raw = loaded
        except (OSError, ValueError):
            pass
        book_id = raw.get("book_id")
        # Part of each idempotency key: two data directories on one database never
        # share a demo farmer.
        self.book_id = book_id if isinstance(book_id, str) else secrets.token_hex(8)
        self.entries: dict[str, DemoEntry] = {}
        farmers = raw.get("farmers")
        if isinstance(farmers, dict):
            for name, entry in farmers.items():
                if isinstance(entry, dict):
                    self.entries[name] = DemoEntry(name, str(entry["pooler"]), str(entry["payout"]))

    def entry(self, index: int, poolers: list[str]) -> DemoEntry:
        """Demo farmer ``index`` (1-based): as remembered, or new on the next pooler."""
        name = f"farmer-{index}"
        if name not in self.entries:
            pooler = poolers[(index - 1) % len(poolers)]
            self.entries[name] = DemoEntry(name, pooler, Keypair.random().secret)
        return self.entries[name]

    def idempotency_key(self, entry: DemoEntry) -> str:
        return f"kale-pool-demo:{self.book_id}:{entry.name}"

    def save(self) -> None:
        make_private(self.path.parent)
        body = {
            "book_id": self.book_id,
            "note": "devnet demo farmers: payout account keys (devnet money only)",
            "farmers": {
                e.name: {"pooler": e.pooler, "payout": e.payout_secret}
                for e in self.entries.values()
            },
        }
        write_atomic(self.path, json.dumps(body, indent=2) + "\n", 0o600)


@dataclass
class DemoFarmer:
    """A demo farmer after provisioning."""

    entry: DemoEntry
    farmer: pool_pb2.Farmer
    new: bool  # it was not funded before this run
    deposited: int  # KALE paid in this run, in stroops (0: it had KALE already)


async def confirm_funding(op: OperatorClient, farmer_id: str, pause: float) -> pool_pb2.Farmer:
    """ConfirmFunding until the farmer is active (its trustline transaction may be pending)."""
    detail = ""
    for _ in range(_CONFIRM_ATTEMPTS):
        got = await op.pool.ConfirmFunding(
            pool_pb2.ConfirmFundingRequest(farmer_id=farmer_id), timeout=op.timeout
        )
        if got.funded:
            return got.farmer
        detail = got.detail
        await asyncio.sleep(pause)
    raise FundingError(f"farmer {farmer_id} is not funded: {detail}")


async def fund_farmer(
    op: OperatorClient,
    chain: ChainClient,
    friendbot: Friendbot,
    farmer: pool_pb2.Farmer,
    *,
    kale_stroops: int,
    pause: float,
    always: bool = False,
) -> tuple[pool_pb2.Farmer, int]:
    """XLM for the custodial account, ConfirmFunding (the KALE trustline), then KALE
    (devnet) unless the account holds some already (``always``: even then); the farmer
    and the KALE paid now."""
    await ensure_account(chain, friendbot, farmer.custodial_address)
    if farmer.status != common_pb2.FARMER_STATUS_ACTIVE:
        farmer = await confirm_funding(op, farmer.farmer_id, pause)
    paid = 0
    state = await read_account(chain, farmer.custodial_address)
    holds = state.kale.balance if state is not None and state.kale is not None else 0
    if kale_stroops > 0 and friendbot.kale and (always or holds == 0):
        await friendbot.kale_stroops(farmer.custodial_address, kale_stroops)
        await wait_for_account(chain, farmer.custodial_address, kale_at_least=holds + kale_stroops)
        paid = kale_stroops
    return farmer, paid


async def provision_demo(
    op: OperatorClient,
    settings: Settings,
    chain: ChainClient,
    friendbot: Friendbot,
    poolers: list[ProvisionedPooler],
    count: int,
    observer: StackObserver,
) -> list[DemoFarmer]:
    """Register and fund ``count`` demo farmers spread over ``poolers`` (see module doc)."""
    book = DemoBook(settings)
    by_name = {p.bundle.name: p for p in poolers}
    entries = [book.entry(i, list(by_name)) for i in range(1, count + 1)]
    book.save()  # before any account gets money
    pause = float(settings.network_ledger_seconds())

    async def one(entry: DemoEntry) -> DemoFarmer | None:
        pooler = by_name.get(entry.pooler)
        if pooler is None:
            observer.event(
                f"{entry.name}: its pooler {entry.pooler} is not started in this run"
                " (start more with --poolers); left as it is",
                level="warning",
            )
            return None
        payout = entry.payout
        await ensure_account(chain, friendbot, payout.public_key)
        await ensure_trustline(chain, payout)
        try:
            made = await op.pool.RegisterFarmer(
                pool_pb2.RegisterFarmerRequest(
                    pooler_id=pooler.pooler.pooler_id,
                    payout_address=payout.public_key,
                    stake_bps=DEMO_STAKE_BPS,
                    idempotency_key=book.idempotency_key(entry),
                ),
                timeout=op.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.ALREADY_EXISTS:
                raise
            # Registered before with another pooler (its bundle was removed and the
            # pooler registered anew): that farmer stays as it is.
            observer.event(f"{entry.name}: {exc.details()}; left as it is", level="warning")
            return None
        if made.farmer.status in (
            common_pb2.FARMER_STATUS_LEAVING,
            common_pb2.FARMER_STATUS_DEPARTED,
        ):
            observer.event(f"{entry.name}: has left the pool; not farmed any more")
            return None
        new = made.needs_funding
        farmer, paid = await fund_farmer(
            op, chain, friendbot, made.farmer, kale_stroops=DEMO_KALE, pause=pause
        )
        return DemoFarmer(entry, farmer, new, paid)

    done = await asyncio.gather(*(one(e) for e in entries))
    farmers = [f for f in done if f is not None]
    new = sum(f.new for f in farmers)
    paid = sum(1 for f in farmers if f.deposited)
    observer.event(
        f"demo farmers: {len(farmers)} ready ({new} new, {paid} paid"
        f" {format_kale(DEMO_KALE)} KALE each now), spread over {len(poolers)} pooler(s)",
        level="good",
    )
    return farmers


async def wait_for_deposits(
    op: OperatorClient, farmers: list[DemoFarmer], seconds: float, observer: StackObserver
) -> bool:
    """Wait until the pool has credited the KALE paid in this run (GetFarmerBalance);
    False, with one line saying what is missing, if it has not within ``seconds``."""
    waiting = {f.farmer.farmer_id: f.deposited for f in farmers if f.deposited}
    if not waiting:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while waiting:
        for farmer_id, amount in list(waiting.items()):
            got = await op.pool.GetFarmerBalance(
                pool_pb2.GetFarmerBalanceRequest(farmer_id=farmer_id), timeout=op.timeout
            )
            if got.balance_stroops >= amount:
                del waiting[farmer_id]
        if not waiting:
            break
        if loop.time() > deadline:
            observer.event(
                f"the pool has not credited the KALE deposits of {len(waiting)} farmer(s)"
                f" after {seconds:.0f} s (it credits deposits it sees on chain); they farm"
                " with a stake of 0 until it does",
                level="warning",
            )
            return False
        await asyncio.sleep(1.0)
    observer.event("the pool credited every deposit", level="good")
    return True
