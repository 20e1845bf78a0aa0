"""Typed settings for every kale-pool process.

Read from the environment (prefix ``KALE_POOL_``; ``DATABASE_URL`` also works
unprefixed, as every PostgreSQL tool expects) and from a ``.env`` file. A
*profile* (``devnet``, ``testnet``, ``mainnet``) fills in the chain facts of
that network; anything set explicitly wins. A bad or missing required setting
raises :class:`SettingsError` with one line naming it, which the CLI prints.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "KALE_POOL_"


class Network(StrEnum):
    """The chain a deployment talks to."""

    DEVNET = "devnet"
    TESTNET = "testnet"
    MAINNET = "mainnet"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it in one line."""


# Chain facts per network (docs/protocol.md). The devnet's ids are derived by the
# devnet itself at start-up and read from its /devnet endpoint, so they stay unset here;
# its RPC URL follows `devnet_port` (see `_devnet_rpc_url`).
# Testnet has several published farm deployments: that id is configuration, never a default.
_PROFILES: dict[Network, dict[str, Any]] = {
    Network.DEVNET: {},
    Network.TESTNET: {
        "rpc_url": "https://soroban-testnet.stellar.org",
        "network_passphrase": "Test SDF Network ; September 2015",
        "asset_code": "KALE",
        "asset_issuer": "GCHPTWXMT3HYF4RLZHWBNRF4MPXLTJ76ISHMSYIWCCDXWUYOQG5MR2AB",
        "sac_contract_id": "CAAVU2UQJLMZ3GUZFM56KVNHLPA3ZSSNR4VP2U53YBXFD2GI3QLIVHZZ",
        "friendbot_url": "https://friendbot.stellar.org/",
    },
    Network.MAINNET: {
        "network_passphrase": "Public Global Stellar Network ; September 2015",
        "farm_contract_id": "CDL74RF5BLYR2YBLCCI7F5FB6TPSCLKEJUBSD2RSVWZ4YHF3VMFAIGWA",
        "asset_code": "KALE",
        "asset_issuer": "GBDVX4VELCDSQ54KQJYTNHXAHFLBCA77ZY2USQBM4CSHTTV7DME7KALE",
        "sac_contract_id": "CB23WRDQWGSP6YPMY4UV5C4OW5CBTXKYN3XEATG7KJEZCXMJBYEHOUOV",
    },
}

# Stellar's networks close a ledger about every 5 to 6 seconds (the devnet: as set).
STELLAR_LEDGER_SECONDS = 6

# What a real network cannot run without (the devnet supplies its own).
_REQUIRED_OFF_DEVNET = ("rpc_url", "network_passphrase", "farm_contract_id", "sac_contract_id")


def default_data_dir() -> Path:
    """The user's data directory for kale-pool (platform convention)."""
    return platformdirs.user_data_path("kale-pool")


class Settings(BaseSettings):
    """Every setting of the pool, the wallet service and the pooler agent."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    # --- where state lives -------------------------------------------------
    network: Network = Field(Network.DEVNET, description="Chain profile: devnet, testnet, mainnet.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Embedded database, devnet state, certificates and logs live here.",
    )
    database_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("KALE_POOL_DATABASE_URL", "DATABASE_URL"),
        description=(
            "This process's PostgreSQL URL (its own role's credentials); unset means the"
            " embedded server in the data directory."
        ),
    )
    db_pool_size: int = Field(20, ge=1, le=500, description="Database connections per process.")
    db_stream_pool_size: int = Field(
        4,
        ge=1,
        le=100,
        description=(
            "Database connections of the pool service kept apart for its assignment"
            " streams' reads, so a burst of plant records never queues them."
        ),
    )
    db_timeout_seconds: float = Field(
        30.0, gt=0, description="Statement timeout of every service database connection."
    )

    # --- chain -------------------------------------------------------------
    rpc_url: str | None = Field(None, description="Stellar RPC (Soroban) JSON-RPC endpoint.")
    network_passphrase: str | None = Field(None, description="The network's passphrase.")
    farm_contract_id: str | None = Field(None, description="KALE farm contract id (C…).")
    asset_code: str = Field("KALE", min_length=1, max_length=12, description="KALE asset code.")
    asset_issuer: str | None = Field(None, description="KALE asset issuer (G…).")
    sac_contract_id: str | None = Field(None, description="KALE asset contract id (C…).")
    friendbot_url: str | None = Field(None, description="Friendbot for test networks.")
    devnet_port: int = Field(8000, ge=0, le=65535, description="Port of the local devnet RPC.")
    devnet_ledger_seconds: int | None = Field(
        None, ge=1, description="Devnet ledger close interval (default: a 30th of a block, 1-5 s)."
    )
    devnet_block_seconds: int = Field(
        60, ge=10, description="Devnet farm block interval (`kale-pool up --block-seconds`)."
    )
    tx_timeout_seconds: int = Field(
        60, ge=5, le=3600, description="Time bound (maxTime) given to every transaction."
    )
    base_fee_stroops: int = Field(100, ge=100, description="Inclusion fee per operation.")

    # --- services ----------------------------------------------------------
    pool_listen: str = Field("127.0.0.1:50051", description="pool_service gRPC address.")
    wallet_listen: str = Field("127.0.0.1:50052", description="wallet_service gRPC address.")
    pool_health_listen: str | None = Field(
        None,
        description="Plaintext address where pool_service answers gRPC health alone, for the"
        " kubelet's probes (unset: none; 0.0.0.0:50061 in a pod).",
    )
    web_listen: str | None = Field(
        None,
        description="HTTPS address of the farmers' web page and its JSON API (farmer_web;"
        " unset: not served; 127.0.0.1:8443 on a developer machine).",
    )
    web_pool_address: str | None = Field(
        None,
        description="The pool service the web page calls as farmer-web (unset: pool_listen).",
    )
    web_challenge_seconds: int = Field(
        300, ge=10, le=3600, description="How long a sign-in challenge may be answered."
    )
    web_session_seconds: int = Field(
        3600, ge=60, le=86400, description="How long a web sign-in session lasts."
    )
    web_rate_limit_ip_per_minute: int = Field(
        120, ge=1, description="Web API requests a minute per client IP (in-process bucket)."
    )
    web_rate_limit_address_per_minute: int = Field(
        10, ge=1, description="Sign-in attempts a minute per payout address (in-process bucket)."
    )
    wallet_health_listen: str | None = Field(
        None,
        description="Plaintext address where wallet_service answers gRPC health alone, for the"
        " kubelet's probes (unset: none; 0.0.0.0:50062 in a pod).",
    )
    shutdown_drain_seconds: float = Field(
        0.0,
        ge=0,
        le=120,
        description="On SIGTERM a service reports NOT_SERVING and keeps serving this long"
        " before it stops (5 in a pod).",
    )
    master_key: SecretStr | None = Field(
        None, description="Master key (base64, 32 bytes) encrypting custodial keys at rest."
    )
    master_key_file: Path | None = Field(
        None, description="File holding the master key (a mounted secret), instead of master_key."
    )
    wallet_payout_challenge_seconds: int = Field(
        900, ge=30, le=86_400, description="How long a payout-address challenge may be signed."
    )
    wallet_payout_max_kale_per_day: int = Field(
        1_000_000, ge=1, description="KALE one wallet may pay out in any 24 hours."
    )
    wallet_payout_max_transfers_per_hour: int = Field(
        30, ge=1, description="Payout transfers one wallet may make in any hour."
    )
    pool_fee_bps: int = Field(
        100,
        ge=0,
        le=10_000,
        description="The pool's fee of each harvested reward, in basis points.",
    )
    pooler_share_bps: int = Field(
        500,
        ge=0,
        le=10_000,
        description="The pooler's share of each harvested reward, in basis points.",
    )
    pooler_obligation_limit_kale: int = Field(
        10_000,
        ge=0,
        description="KALE of unpaid compensations a pooler may owe past its share balance"
        " and still be given new farmers.",
    )
    pool_fee_address: str = Field(
        "",
        pattern=r"^(G[A-Z2-7]{55})?$",
        description="The operator's account (G...) the pool's fee wallet pays out to.",
    )
    api_key_length: int = Field(32, ge=16, le=128, description="Bytes of entropy in API keys.")
    rate_limit_requests_per_minute: int = Field(
        60, ge=1, description="PoolerService calls a minute per pooler (shared by replicas)."
    )
    rate_limit_failed_auth_per_minute: int = Field(
        20, ge=1, description="Refused PoolerService attempts a minute per client certificate."
    )
    rate_limit_operator_per_minute: int = Field(
        1200, ge=1, description="PoolService calls a minute per operator certificate."
    )
    rate_limit_wallet_per_minute: int = Field(
        30000, ge=1, description="WalletService calls a minute per caller certificate."
    )
    pooler_auth_recheck_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="How often an open assignment stream re-checks its pooler, key and"
        " certificate (a disabled pooler or revoked certificate ends it within this).",
    )

    # --- pool operation limits -----------------------------------------------
    max_farmers_per_pooler: int = Field(100, ge=1, description="Farmers one pooler may hold.")
    max_harvest_batch_size: int = Field(
        1000,
        ge=1,
        description="Pails the harvest loop reads and harvests at once (a page); a pass goes"
        " on to the next page while the last one settled any.",
    )
    plant_concurrency: int = Field(
        1000,
        ge=1,
        le=10000,
        description="Wallet calls for plants (a PlantBatch is one call) and harvests the"
        " pool has in flight at once; each waits for its ledger without holding a chain RPC"
        " slot (see chain_rpc_concurrency).",
    )
    plant_batch_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Plants the pool sends the wallet in one PlantBatch call (the wallet"
        " takes at most 1000): each call costs the wallet one rate-limit token, one block"
        " check, one read of the accounts and one insert, whatever its size.",
    )
    chain_rpc_concurrency: int = Field(
        64,
        ge=1,
        le=10000,
        description="Requests one service has at the chain's RPC server at once (reads,"
        " simulations, sends, the shared confirmation scan): protects the server.",
    )
    plant_timeout_seconds: float = Field(30.0, gt=0, description="Deadline of one plant.")
    plant_reconcile_interval_seconds: float = Field(
        5.0, gt=0, description="How often plant requests without a recorded outcome are retried."
    )
    contract_watch_interval_seconds: float = Field(
        30.0,
        gt=0,
        description="How often the pool reads the farm contract's code hash and pause flag"
        " when nobody plants (every plant request checks them anyway).",
    )
    harvest_timeout_seconds: float = Field(45.0, gt=0, description="Deadline of one harvest.")
    payout_settle_interval_seconds: float = Field(
        60.0, gt=0, description="Period of the pool's pass that drives pending payouts."
    )
    share_sweep_interval_seconds: float = Field(
        10.0,
        gt=0,
        description="Period of the pool's pass that sweeps each harvest's fee and share.",
    )
    deposit_poll_interval_seconds: float = Field(
        5.0, gt=0, description="Period of the pool's chain follower (deposits, harvests)."
    )

    # --- pooler agent --------------------------------------------------------
    pooler_api_key: SecretStr | None = Field(None, description="The pooler's API key.")
    block_poll_interval_seconds: float = Field(5.0, gt=0, description="Block monitor poll period.")
    work_delay_seconds: float = Field(
        282.0, ge=0, description="Seconds after the block opens when mining ends and work is sent."
    )
    max_farmers_capacity: int = Field(50, ge=1, description="Farmers this pooler mines at once.")
    mining_threads: int | None = Field(None, ge=1, description="Mining threads (default: cores).")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Pool RPC deadline.")
    retry_attempts: int = Field(3, ge=0, le=100, description="Retries of a failed pool RPC.")
    pool_address: str = Field(
        "127.0.0.1:50051", description="Where the pooler agent reaches the pool service."
    )
    pooler_cert_name: str = Field(
        "pooler", min_length=1, description="The pooler's client certificate name under certs/."
    )
    pooler_channel_secrets: SecretStr | None = Field(
        None, description="The pooler's channel accounts' secret keys (S…), comma-separated."
    )
    pooler_channel_secrets_file: Path | None = Field(
        None, description="File of channel account secret keys, one per line, instead."
    )
    pooler_submit_margin_seconds: float = Field(
        10.0, ge=0, description="Mining ends this long before the next block may open."
    )
    pooler_min_work_window_seconds: float = Field(
        30.0,
        ge=0,
        description="A block is planted only while this long remains before the next may open.",
    )

    # --- operations ----------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint binds (0.0.0.0 in a pod)."
    )
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus metrics port.")
    pooler_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the pooler agent's Prometheus metrics on metrics_host (unset: none;"
        " `kale-pool up` runs several agents and leaves it unset).",
    )
    monitor_interval_seconds: float = Field(
        30.0,
        gt=0,
        description="Period of the pool's monitor pass: balances, poolers and database health"
        " read into the metrics, then the alert rules evaluated.",
    )
    db_health_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of the periodic `SELECT 1` behind the database gauges."
    )

    # --- alerts (pool_service/alerts.py; docs/operations.md) -------------------
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="Discord- or Slack-compatible webhook the alerts are posted to (a secret:"
        " its path holds the token); unset: alerts are only logged.",
    )
    alert_webhook_attempts: int = Field(
        4, ge=1, le=20, description="Tries of one webhook post (with backoff) before giving up."
    )
    alert_api_latency_seconds: float = Field(
        10.0, gt=0, description="Alert when an RPC's mean latency over a pass exceeds this."
    )
    alert_min_success_ratio: float = Field(
        0.95, ge=0, le=1, description="Alert when an RPC's success ratio over a pass is below."
    )
    alert_min_calls: int = Field(
        20, ge=1, description="Calls in a pass before a success or failure ratio is judged."
    )
    alert_min_xlm: float = Field(
        0.1, ge=0, description="Alert when a custodial wallet holds fewer XLM (fees)."
    )
    alert_max_contract_failure_ratio: float = Field(
        0.05, ge=0, le=1, description="Alert when more of a pass's contract calls fail."
    )
    alert_pooler_unseen_minutes: float = Field(
        5.0, gt=0, description="Alert when an active pooler has not beaten for this long."
    )
    alert_pooler_max_cpu_percent: int = Field(
        90, ge=1, le=100, description="Alert when a pooler's heartbeat reports more CPU in use."
    )
    alert_pooler_max_memory_percent: int = Field(
        90, ge=1, le=100, description="Alert when a pooler's heartbeat reports more memory."
    )
    pg_bin_dir: Path | None = Field(
        None,
        description="Directory of pg_dump and pg_restore for `kale-pool db backup` / `restore`"
        " (default: the embedded PostgreSQL's own).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Fill the network's chain facts under anything set explicitly."""
        if not isinstance(data, dict):
            return data
        raw = data.get("network", Network.DEVNET)
        try:
            network = Network(str(raw).lower())
        except ValueError:
            return data  # the field validator reports the bad value
        merged = dict(_PROFILES[network])
        merged.update({k: v for k, v in data.items() if v is not None})
        return merged

    @model_validator(mode="after")
    def _check_required(self) -> Settings:
        if self.pool_fee_bps + self.pooler_share_bps > 10_000:
            raise ValueError(
                f"{ENV_PREFIX}POOL_FEE_BPS + {ENV_PREFIX}POOLER_SHARE_BPS is"
                f" {self.pool_fee_bps + self.pooler_share_bps}; together they may take at most"
                " 10000 (the whole reward)"
            )
        if self.network is Network.DEVNET and not self.rpc_url:
            self.rpc_url = devnet_rpc_url(self.devnet_port)
        if self.network is not Network.DEVNET:
            for name in _REQUIRED_OFF_DEVNET:
                if not getattr(self, name):
                    raise ValueError(
                        f"{ENV_PREFIX}{name.upper()} is required on {self.network.value}"
                    )
        return self

    def layout(self) -> DataLayout:
        """Where each piece of state lives under the data directory."""
        return DataLayout(self.data_dir)

    def ledger_seconds(self) -> int:
        """The devnet's ledger interval: as set, else a 30th of a block (1 to 5 s), so a
        block has enough ledgers for the gap between plant and work to matter."""
        if self.devnet_ledger_seconds is not None:
            return self.devnet_ledger_seconds
        return max(1, min(5, self.devnet_block_seconds // 30))

    def network_ledger_seconds(self) -> int:
        """How often the chain this deployment talks to closes a ledger: the devnet's
        `ledger_seconds()`, about 6 s on Stellar's networks."""
        if self.network is Network.DEVNET:
            return self.ledger_seconds()
        return STELLAR_LEDGER_SECONDS


def devnet_rpc_url(port: int, host: str = "127.0.0.1") -> str:
    """The local devnet's RPC URL on ``port`` (what the devnet profile points at)."""
    return f"http://{host}:{port}/"


class DataLayout:
    """The data directory's layout: one place that names every path under it."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def postgres(self) -> Path:
        """pgdata of the embedded PostgreSQL."""
        return self.root / "postgres"

    @property
    def devnet_state(self) -> Path:
        """The local chain's saved state."""
        return self.root / "devnet" / "state.json"

    @property
    def certs(self) -> Path:
        """Development CA and service / pooler certificates."""
        return self.root / "certs"

    @property
    def backups(self) -> Path:
        """Where `kale-pool db backup` writes when given no path."""
        return self.root / "backups"

    @property
    def logs(self) -> Path:
        """Log files of background processes."""
        return self.root / "logs"

    @property
    def devnet_fee_account(self) -> Path:
        """The devnet operator's fee account key `kale-pool up` made (devnet money only)."""
        return self.root / "demo" / "fee-account.json"

    def ensure(self) -> None:
        """Create the directories, private to the user (0700): they hold keys and money.

        mkdir's mode is masked by the umask and ignored for a directory that exists, so
        each is set explicitly. One exception: as root, the embedded PostgreSQL runs as a
        system user of its own, and the wheel opens the data directory itself for it to
        traverse (r-x for others); those bits are kept, or the server could not be
        stopped or started again.
        """
        for path in (self.root, self.devnet_state.parent, self.certs, self.logs):
            make_private(path, keep_traverse=path == self.root)


def make_private(path: Path, *, keep_traverse: bool = False) -> None:
    """Create ``path`` (and parents) and make it 0700, whatever the umask or its old mode.

    ``keep_traverse`` keeps others' r-x bits when running as root (see DataLayout.ensure).
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = 0o700
    if keep_traverse and os.name == "posix" and os.geteuid() == 0:
        mode |= path.stat().st_mode & 0o055
    os.chmod(path, mode)


def _describe(error: ValidationError) -> str:
    """One line naming the first bad setting the way the user would set it."""
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return message
    name = loc[0]
    env_name = "DATABASE_URL" if name == "database_url" else f"{ENV_PREFIX}{name.upper()}"
    value = first.get("input")
    shown = (
        ""
        if name
        in {
            "database_url",
            "master_key",
            "pooler_api_key",
            "pooler_channel_secrets",
            "alert_webhook_url",
        }
        else f" (got {value!r})"
    )
    return f"{env_name}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment and .env, with explicit overrides (CLI flags) on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
