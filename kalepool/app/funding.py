"""Test-network money for the local stack: friendbot XLM (and devnet KALE), trustlines.

Used by `kale-pool up`'s provisioning (pooler accounts, demo farmers and their payout
accounts) and by `kale-pool farmer fund`. Only networks with a friendbot have any of it;
mainnet money comes from its owners.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from stellar_sdk import Keypair

from kalepool.amounts import STROOPS_PER_KALE as KALE
from kalepool.chain import ChainClient, build_trustline, read_account, sign, submit
from kalepool.chain.config import fetch_devnet_info
from kalepool.masking import mask_url
from kalepool.settings import Network, Settings

__all__ = ["KALE", "Friendbot", "FundingError", "ensure_account", "ensure_trustline"]
# Friendbot calls at once: the devnet's friendbot pays from 32 channel accounts.
_CONCURRENCY = 16


class FundingError(Exception):
    """A friendbot or trustline step failed; the message says which and why."""


class Friendbot:
    """A network's friendbot: XLM for any account, and KALE on the devnet."""

    def __init__(self, url: str, *, kale: bool) -> None:
        self.url = url
        self.kale = kale
        self._limit = asyncio.Semaphore(_CONCURRENCY)
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    async def for_network(cls, settings: Settings, rpc_url: str) -> Friendbot | None:
        """The friendbot of this network (the devnet's from its /devnet answer), or None."""
        if settings.network is Network.DEVNET:
            info = await fetch_devnet_info(rpc_url)
            url = info.get("friendbot_url")
            if not isinstance(url, str) or not url:
                raise FundingError(f"the devnet at {mask_url(rpc_url)} names no friendbot")
            return cls(url, kale=True)
        if settings.friendbot_url:
            return cls(settings.friendbot_url, kale=False)
        return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _get(self, params: dict[str, str]) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with (
            self._limit,
            self._http.get(
                self.url, params=params, timeout=aiohttp.ClientTimeout(total=120)
            ) as response,
        ):
            body = await response.json(content_type=None)
            if response.status != 200:
                detail = body.get("detail") if isinstance(body, dict) else None
                raise FundingError(
                    f"friendbot refused {params['addr']}: HTTP {response.status}"
                    + (f" ({detail})" if detail else "")
                )
        if not isinstance(body, dict):
            raise FundingError("friendbot did not answer a JSON object")
        if body.get("successful") is False:
            raise FundingError(f"friendbot's payment to {params['addr']} failed")
        return body

    async def xlm(self, address: str) -> None:
        """Create ``address`` with the friendbot's XLM (or top it up)."""
        try:
            await self._get({"addr": address})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FundingError(f"friendbot at {mask_url(self.url)}: {exc!r}") from None

    async def kale_stroops(self, address: str, stroops: int) -> None:
        """Pay ``stroops`` of KALE from the issuer (devnet only; the account trusts KALE)."""
        if not self.kale:
            raise FundingError("only the devnet's friendbot pays KALE")
        try:
            await self._get({"addr": address, "kale": str(stroops)})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FundingError(f"friendbot at {mask_url(self.url)}: {exc!r}") from None


async def ensure_account(chain: ChainClient, friendbot: Friendbot, address: str) -> bool:
    """Make sure ``address`` exists on chain (friendbot XLM if not); True if funded now."""
    if await read_account(chain, address) is not None:
        return False
    await friendbot.xlm(address)
    await wait_for_account(chain, address)
    return True


async def wait_for_account(
    chain: ChainClient, address: str, *, kale_at_least: int | None = None, seconds: float = 60
) -> None:
    """Wait until ``address`` exists (and holds ``kale_at_least`` stroops of KALE)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        state = await read_account(chain, address)
        if state is not None and (
            kale_at_least is None
            or (state.kale is not None and state.kale.balance >= kale_at_least)
        ):
            return
        if loop.time() > deadline:
            what = "its KALE" if state is not None else "the account"
            raise FundingError(f"{address}: {what} did not appear on chain in {seconds:.0f} s")
        await asyncio.sleep(max(0.2, chain.poll_interval / 2))


async def ensure_trustline(chain: ChainClient, keypair: Keypair) -> bool:
    """Add the KALE trustline to ``keypair``'s account unless it has one; True if added."""
    state = await read_account(chain, keypair.public_key)
    if state is None:
        raise FundingError(f"{keypair.public_key} does not exist on chain")
    if state.kale is not None:
        return False
    tx = await build_trustline(chain, keypair.public_key)
    outcome = await submit(chain, sign(tx, keypair))
    if not outcome.ok:
        raise FundingError(f"the KALE trustline of {keypair.public_key}: {outcome.describe()}")
    return True
