"""The pool's fee and the poolers' shares under `kale-pool up` on the devnet.

The pool sweeps a fee and a pooler's share out of each harvest into custodial wallets
of its own (`pool_service.shares`): the fee wallet only when `KALE_POOL_POOL_FEE_ADDRESS`
names the operator's account, and each wallet only once it exists on chain. On the
devnet `up` plays the operator for both:

- the operator's fee account: a devnet key made once into `<data dir>/demo/
  fee-account.json` (0600, kept across reruns), funded by the friendbot and trusting
  KALE; its address is the wallet's and the pool's `KALE_POOL_POOL_FEE_ADDRESS` unless
  the operator set one;
- `PoolAccountFunder`: while the stack runs, the fee and share wallets the pool made
  (read through its API: `GetPoolStats.fee_account_address`,
  `GetPoolerStats.share_account_address`) get the friendbot's XLM once, when they do not
  exist on chain yet. It only logs what goes wrong: farming never waits on it.

On testnet and mainnet both stay the operator's job (docs/operator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import aiohttp
import grpc
from stellar_sdk import Keypair

from kalepool.amounts import format_kale
from kalepool.app.files import write_atomic
from kalepool.app.funding import Friendbot, FundingError, ensure_account, ensure_trustline
from kalepool.app.observer import StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.chain import ChainClient, ChainError, read_account
from kalepool.settings import Network, Settings
from kalepool.v1 import common_pb2, pool_pb2

# How often the funder looks for wallets the pool made (the pool's sweep pass waits for
# them: a few seconds late costs a pass, never a part).
FUND_POLL_SECONDS = 3.0


def devnet_fee_account(settings: Settings) -> Keypair:
    """The devnet operator's fee account: as kept in the data directory, else made now."""
    path = settings.layout().devnet_fee_account
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return Keypair.from_secret(str(json.loads(path.read_text())["secret"]))
    keypair = Keypair.random()
    body = {
        "note": "the devnet operator's fee account (KALE_POOL_POOL_FEE_ADDRESS), devnet money only",
        "address": keypair.public_key,
        "secret": keypair.secret,
    }
    write_atomic(path, json.dumps(body, indent=2) + "\n", 0o600)
    return keypair


def up_fee_account(settings: Settings) -> Keypair | None:
    """The fee account `up` provides: the devnet's kept one, unless the operator named an
    address (then theirs is used as it is) or the network is not the devnet (the
    operator's job there)."""
    if settings.network is not Network.DEVNET or settings.pool_fee_address:
        return None
    return devnet_fee_account(settings)


async def fund_fee_account(chain: ChainClient, friendbot: Friendbot, keypair: Keypair) -> bool:
    """The fee account on chain with its KALE trustline (the fee wallet pays it KALE);
    True if it was funded now."""
    funded = await ensure_account(chain, friendbot, keypair.public_key)
    await ensure_trustline(chain, keypair)
    return funded


async def read_figures(
    op: OperatorClient,
) -> tuple[
    pool_pb2.GetPoolStatsResponse, list[pool_pb2.Pooler], list[pool_pb2.GetPoolerStatsResponse]
]:
    """The pool's stats, its poolers and each pooler's stats, as its API reports them now."""
    stats = await op.pool.GetPoolStats(pool_pb2.GetPoolStatsRequest(), timeout=op.timeout)
    listing = await op.pool.ListPoolers(
        pool_pb2.ListPoolersRequest(pagination=common_pb2.Pagination(page_size=100)),
        timeout=op.timeout,
    )
    details = await asyncio.gather(
        *(
            op.pool.GetPoolerStats(
                pool_pb2.GetPoolerStatsRequest(pooler_id=p.pooler_id), timeout=op.timeout
            )
            for p in listing.poolers
        )
    )
    return stats, list(listing.poolers), list(details)


async def pool_accounts(op: OperatorClient) -> list[tuple[str, str]]:
    """The pool's fee and share wallets made so far: (what, address) each."""
    stats, poolers, details = await read_figures(op)
    found = [("fee wallet", stats.fee_account_address)] if stats.fee_account_address else []
    found += [
        (f"{p.name}'s share wallet", d.share_account_address)
        for p, d in zip(poolers, details, strict=True)
        if d.share_account_address
    ]
    return found


class PoolAccountFunder:
    """Friendbot XLM for each fee and share wallet of the pool that is not on chain."""

    def __init__(
        self,
        op: OperatorClient,
        chain: ChainClient,
        friendbot: Friendbot,
        observer: StackObserver,
    ) -> None:
        self.op = op
        self.chain = chain
        self.friendbot = friendbot
        self.observer = observer
        self.ready: set[str] = set()  # addresses seen on chain: never looked at again
        self._warned: set[str] = set()

    async def run_once(self) -> list[str]:
        """One look: fund the wallets missing on chain; the addresses funded now."""
        funded: list[str] = []
        for what, address in await pool_accounts(self.op):
            if address in self.ready:
                continue
            if await read_account(self.chain, address) is None:
                await ensure_account(self.chain, self.friendbot, address)
                funded.append(address)
                self.observer.event(
                    f"{what} {address}: funded with the friendbot's XLM; the pool sweeps"
                    " into it from its next pass",
                    level="good",
                )
            self.ready.add(address)
        return funded

    async def run(self, stop: asyncio.Event, interval: float = FUND_POLL_SECONDS) -> None:
        """Look every ``interval`` seconds until ``stop``; a failed look is one warning
        (once per kind of failure) and the next look tries again."""
        while not stop.is_set():
            try:
                await self.run_once()
            except (grpc.aio.AioRpcError, FundingError, ChainError, aiohttp.ClientError) as exc:
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                key = type(exc).__name__
                if key not in self._warned:
                    self._warned.add(key)
                    self.observer.event(
                        f"funding the pool's fee and share wallets: {why} (tried again)",
                        level="warning",
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def takings(
    stats: pool_pb2.GetPoolStatsResponse, poolers: Sequence[pool_pb2.GetPoolerStatsResponse]
) -> str:
    """The fee and the poolers' shares taken so far, in one line."""
    share = sum(p.share_earned_stroops for p in poolers)
    share_pending = sum(p.share_pending_stroops for p in poolers)
    return (
        f"pool fee {format_kale(stats.fee_earned_stroops)} KALE"
        f" ({format_kale(stats.fee_pending_stroops)} pending),"
        f" poolers' shares {format_kale(share)} KALE ({format_kale(share_pending)} pending)"
    )
