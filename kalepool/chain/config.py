"""Which chain to talk to: the RPC endpoint, the network and the KALE contracts.

On testnet and mainnet everything comes from the settings. The devnet derives its ids
at start-up, so for the devnet profile they are read from its `GET /devnet` endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from stellar_sdk import Asset, StrKey

from kalepool import protocol
from kalepool.masking import mask_url
from kalepool.settings import ENV_PREFIX, Network, Settings


class ChainConfigError(ValueError):
    """The chain configuration is missing a value or contradicts itself; one line says which."""


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Everything the chain client needs to know about the network it talks to."""

    rpc_url: str
    network_passphrase: str
    farm_contract_id: str
    sac_contract_id: str
    asset_code: str
    asset_issuer: str
    # The farm's block interval: 300 s on real networks, configurable on the devnet.
    block_seconds: int = protocol.BLOCK_INTERVAL_SECONDS
    # Every transaction is valid until the chain's clock passes now + this.
    tx_timeout_seconds: int = 60
    base_fee_stroops: int = 100

    @property
    def asset(self) -> Asset:
        """The KALE asset (classic code and issuer)."""
        return Asset(self.asset_code, self.asset_issuer)

    def validate(self) -> ChainConfig:
        """Check ids and numbers; the asset contract id must be the one the asset derives."""
        if not self.rpc_url.startswith(("http://", "https://")):
            raise ChainConfigError(f"rpc_url must be an http(s) URL, got {mask_url(self.rpc_url)}")
        if not self.network_passphrase:
            raise ChainConfigError("network_passphrase is empty")
        for name in ("farm_contract_id", "sac_contract_id"):
            if not StrKey.is_valid_contract(getattr(self, name)):
                raise ChainConfigError(f"{name} is not a contract id (C…): {getattr(self, name)!r}")
        if not StrKey.is_valid_ed25519_public_key(self.asset_issuer):
            raise ChainConfigError(f"asset_issuer is not an account id (G…): {self.asset_issuer!r}")
        try:
            derived = self.asset.contract_id(self.network_passphrase)
        except ValueError as exc:
            raise ChainConfigError(f"asset {self.asset_code}: {exc}") from None
        if derived != self.sac_contract_id:
            raise ChainConfigError(
                f"sac_contract_id {self.sac_contract_id} is not the contract of "
                f"{self.asset_code}:{self.asset_issuer} on this network (that is {derived})"
            )
        if self.block_seconds < 1:
            raise ChainConfigError("block_seconds must be at least 1")
        if self.tx_timeout_seconds < 1:
            raise ChainConfigError("tx_timeout_seconds must be at least 1")
        if self.base_fee_stroops < 100:
            raise ChainConfigError("base_fee_stroops must be at least 100")
        return self


def chain_config_from_settings(settings: Settings) -> ChainConfig:
    """The configuration of a testnet or mainnet deployment, from settings alone."""
    if settings.network is Network.DEVNET:
        raise ChainConfigError("the devnet's ids come from its /devnet endpoint: use resolve")
    values: dict[str, Any] = {}
    for name in (
        "rpc_url",
        "network_passphrase",
        "farm_contract_id",
        "sac_contract_id",
        "asset_issuer",
    ):
        value = getattr(settings, name)
        if not value:
            raise ChainConfigError(
                f"{ENV_PREFIX}{name.upper()} is required on {settings.network.value}"
            )
        values[name] = value
    return ChainConfig(
        asset_code=settings.asset_code,
        tx_timeout_seconds=settings.tx_timeout_seconds,
        base_fee_stroops=settings.base_fee_stroops,
        **values,
    ).validate()


async def fetch_devnet_info(
    rpc_url: str, *, session: aiohttp.ClientSession | None = None, wait_seconds: float = 10.0
) -> dict[str, Any]:
    """The devnet's `GET /devnet` answer (ids, clock, block interval)."""
    url = rpc_url.rstrip("/") + "/devnet"
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=wait_seconds)) as resp:
            if resp.status != 200:
                raise ChainConfigError(
                    f"devnet at {mask_url(rpc_url)} answered /devnet with HTTP {resp.status}"
                )
            info = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChainConfigError(
            f"cannot reach the devnet at {mask_url(rpc_url)}: {type(exc).__name__}"
        ) from None
    finally:
        if own:
            await http.close()
    if not isinstance(info, dict):
        raise ChainConfigError(f"{mask_url(rpc_url)}/devnet did not answer a JSON object")
    return info


async def resolve_chain_config(
    settings: Settings, *, session: aiohttp.ClientSession | None = None
) -> ChainConfig:
    """The chain configuration for these settings; on the devnet, asks the devnet for its ids.

    A setting given explicitly must agree with what the devnet reports (pointing the pool
    at the wrong chain is refused here rather than failing later in obscure ways).
    """
    if settings.network is not Network.DEVNET:
        return chain_config_from_settings(settings)
    if not settings.rpc_url:
        raise ChainConfigError(f"{ENV_PREFIX}RPC_URL is required")
    info = await fetch_devnet_info(settings.rpc_url, session=session)
    values: dict[str, Any] = {}
    for name in (
        "network_passphrase",
        "farm_contract_id",
        "sac_contract_id",
        "asset_code",
        "asset_issuer",
    ):
        reported = info.get(name)
        if not isinstance(reported, str) or not reported:
            raise ChainConfigError(f"the devnet's /devnet answer lacks {name}")
        explicit = getattr(settings, name)
        # asset_code always has a default ("KALE"), so only a different explicit value counts.
        if explicit and explicit != reported:
            raise ChainConfigError(
                f"{ENV_PREFIX}{name.upper()} is {explicit!r} but the devnet at "
                f"{mask_url(settings.rpc_url)} has {reported!r}"
            )
        values[name] = reported
    block_seconds = info.get("block_seconds", protocol.BLOCK_INTERVAL_SECONDS)
    if not isinstance(block_seconds, int) or isinstance(block_seconds, bool):
        raise ChainConfigError("the devnet's /devnet answer has a bad block_seconds")
    return ChainConfig(
        rpc_url=settings.rpc_url,
        block_seconds=block_seconds,
        tx_timeout_seconds=settings.tx_timeout_seconds,
        base_fee_stroops=settings.base_fee_stroops,
        **values,
    ).validate()
