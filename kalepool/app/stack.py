"""`kale-pool up`: the whole pool on one machine, each part its own process, farming.

Order of start-up: the database (embedded PostgreSQL in the data directory unless
`DATABASE_URL` is set) and its migrations, the development certificates, then the
processes, each waited on until ready: the devnet (`kale-pool devnet --state ...`, so a
rerun continues the same chain), the wallet service (`python -m wallet_service`), the
pool service (`python -m pool_service`), and the farmers' web page (`python -m farmer_web`,
HTTPS on `KALE_POOL_WEB_LISTEN`, 127.0.0.1:8443 unless set; `--no-web` leaves it out).
Unless `--no-demo`, the local poolers are then provisioned (`kalepool.app.poolers`) and
the demo farmers registered and funded (`kalepool.app.demo`), and one `kale-pool pooler`
process per pooler is started, talking to the pool over mutual TLS exactly as a remote
mining machine does. On the devnet `up` also plays the operator for the pool's fee and
shares (`kalepool.app.fees`): its fee account, and XLM for the fee and share wallets.

Each part gets its settings in its environment (`KALE_POOL_*`, `DATABASE_URL`): every
effective setting but the secrets, and of those only the ones it uses (`PART_SECRETS`:
the master key to the wallet alone, the database to the wallet and the pool, nothing
secret to the devnet). On the embedded server the wallet and the pool each connect as
a database role of their own (`kalepool.db.roles`); `up` migrates as the migrator. Each
writes its output to `<data dir>/logs/<name>.log`. Where everything listens goes to the
run state file (`kalepool.app.runstate`) for the other commands. Ctrl-C stops the
poolers, then the pool, the wallet and the devnet; a part that stops by itself stops
everything with exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import grpc
from pydantic import SecretStr
from rich.console import Console

from kalepool.app.cycles import BlockOutcome, CycleWatcher, failure_lines, summary_table
from kalepool.app.demo import DemoFarmer, provision_demo, wait_for_deposits
from kalepool.app.fees import (
    PoolAccountFunder,
    fund_fee_account,
    read_figures,
    takings,
    up_fee_account,
)
from kalepool.app.files import open_private_append
from kalepool.app.funding import Friendbot, FundingError
from kalepool.app.observer import EVENT_LOGGER, PlainObserver, StackObserver
from kalepool.app.operator import OperatorClient
from kalepool.app.poolers import PoolerSetupError, ProvisionedPooler, provision_pooler
from kalepool.app.probes import (
    free_port,
    grpc_serving,
    http_ok,
    https_ok,
    port_taken,
    split_address,
)
from kalepool.app.runstate import ProcessInfo, RunState
from kalepool.app.supervisor import Part, PartFailed, Supervisor
from kalepool.app.view import make_view
from kalepool.chain import ChainClient, ChainConfig, ChainError, resolve_chain_config
from kalepool.db import resolve_conninfo
from kalepool.db.migrate import apply_migrations
from kalepool.db.roles import POOL, WALLET, DbRole, as_role
from kalepool.masking import RedactingFormatter
from kalepool.settings import ENV_PREFIX, Network, Settings, devnet_rpc_url
from kalepool.tls import (
    OPERATOR,
    POOL_SERVER,
    WALLET_SERVER,
    DevPki,
    ensure_dev_identities,
)
from kalepool.v1 import pool_pb2

if TYPE_CHECKING:
    from stellar_sdk import Keypair

# What each part of the stack gets of the effective settings, here and only here: every
# setting but the secrets, and of the secrets only those the part uses. A secret is a
# SecretStr setting, or a setting naming a file that holds one.
_SECRET_FILES = ("master_key_file", "pooler_channel_secrets_file")
PART_SECRETS: dict[str, frozenset[str]] = {
    "devnet": frozenset(),  # a chain of its own: no database, no key
    "wallet": frozenset({"database_url", "master_key", "master_key_file"}),
    "pool": frozenset({"database_url"}),
    # The web page holds no key and no database: every write it forwards is signed by
    # the farmer and checked by the pool.
    "web": frozenset(),
    # A mining machine has no database and no master key; its own API key and fee
    # accounts come from its pooler.env, never from the supervisor's settings.
    "pooler": frozenset(),
}
# The database role each part that uses the database connects as on the embedded server
# (a `DATABASE_URL` the operator set is given to both as it is: one URL, one role).
PART_DB_ROLES: dict[str, DbRole] = {"wallet": WALLET, "pool": POOL}
# Settings a part gets a value of its own for instead: a pooler's data directory is its
# bundle.
_PART_OWN: dict[str, tuple[str, ...]] = {"pooler": ("data_dir",)}
# How long --blocks K may take beyond K blocks before it gives up (start-up, late blocks).
_BLOCKS_SLACK_SECONDS = 180
# Blocks --blocks K may take beyond K: the first one is often too far along to plant.
_BLOCKS_EXTRA = 3
# The pool credits a deposit once its chain follower sees it: a few ledgers.
_DEPOSIT_WAIT_LEDGERS = 5
_WILDCARDS = ("0.0.0.0", "::", "")
# Where `up` serves the farmers' web page when KALE_POOL_WEB_LISTEN is not set.
DEFAULT_WEB_LISTEN = "127.0.0.1:8443"


def blocks_timeout(want: int, chain: ChainConfig) -> float:
    """How long `--blocks K` waits for K complete cycles before it gives up: blocks of the
    chain's real interval (the devnet's, or 300 s on Stellar's networks), and slack."""
    return (want + _BLOCKS_EXTRA) * chain.block_seconds + _BLOCKS_SLACK_SECONDS


def deposit_wait(settings: Settings) -> float:
    """How long `up` waits for the pool to credit the demo farmers' deposits: a few of the
    network's ledgers, and a pass of the pool's chain follower."""
    return (
        _DEPOSIT_WAIT_LEDGERS * settings.network_ledger_seconds()
        + settings.deposit_poll_interval_seconds
        + 5.0
    )


class UpError(Exception):
    """`up` cannot run as asked; one line says why."""


@dataclass
class UpOptions:
    """`kale-pool up`'s own options."""

    poolers: int = 1
    farmers: int = 6
    blocks: int | None = None  # stop after this many complete cycles
    demo: bool = True  # False: the bare pool (services only)
    web: bool = True  # False: no farmers' web page


def check_options(settings: Settings, options: UpOptions) -> None:
    """Refuse combinations that cannot work, in one line."""
    if options.poolers < 0 or options.farmers < 0:
        raise UpError("--poolers and --farmers cannot be negative")
    if options.blocks is not None and options.blocks < 1:
        raise UpError("--blocks must be at least 1")
    if not options.demo:
        if options.blocks is not None:
            raise UpError("--blocks counts farmed blocks: it needs the demo (drop --no-demo)")
        return
    if settings.network is Network.MAINNET:
        raise UpError(
            "the demo needs a friendbot, which mainnet has not: run `kale-pool up --no-demo`"
            " and add poolers with `kale-pool pooler add`"
        )
    if options.farmers and not options.poolers:
        raise UpError("demo farmers need at least one pooler (--poolers)")
    if options.blocks is not None and not (options.farmers and options.poolers):
        raise UpError("--blocks needs poolers and farmers to farm with")


def settings_env(settings: Settings, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Every effective setting as the environment variable a process reads it from."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        if name in exclude:
            continue
        value: Any = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        value = getattr(value, "value", value)  # enums
        key = "DATABASE_URL" if name == "database_url" else f"{ENV_PREFIX}{name.upper()}"
        env[key] = str(value)
    return env


def secret_settings() -> frozenset[str]:
    """The settings that hold a secret or name a file that does."""
    held = {
        name
        for name, info in Settings.model_fields.items()
        if info.annotation is SecretStr or SecretStr in get_args(info.annotation)
    }
    return frozenset(held.union(_SECRET_FILES))


def part_env(settings: Settings, role: str, *, conninfo: str = "") -> dict[str, str]:
    """The environment of one part of the stack (``role``: devnet, wallet, pool, pooler):
    `base_env()` and the effective settings, less every secret it has no use for
    (`PART_SECRETS`). A part that uses the database gets ``conninfo`` (the embedded
    server this run started) as its own role (`PART_DB_ROLES`) when `DATABASE_URL` is
    not set."""
    allowed = PART_SECRETS[role]
    withheld = tuple(sorted(secret_settings() - allowed)) + _PART_OWN.get(role, ())
    env = base_env()
    env.update(settings_env(settings, withheld))
    if "database_url" in allowed and settings.database_url is None and conninfo:
        env["DATABASE_URL"] = as_role(conninfo, PART_DB_ROLES[role])
    return env


def base_env() -> dict[str, str]:
    """The supervisor's environment without kale-pool settings (each child gets the
    effective ones explicitly), quiet gRPC C-core, unbuffered output."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "DATABASE_URL"
    }
    env.setdefault("GRPC_VERBOSITY", "NONE")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in _WILDCARDS else host


@dataclass
class Ports:
    """Where each part listens (port 0 in the settings: a free port picked now)."""

    devnet: int
    wallet_host: str
    wallet: int
    pool_host: str
    pool: int
    metrics_host: str
    pool_metrics: int
    wallet_metrics: int
    web_host: str = "127.0.0.1"
    web: int = 0  # 0: no web page

    @classmethod
    def plan(cls, settings: Settings, web: bool = True) -> Ports:
        try:
            wallet_host, wallet = split_address(settings.wallet_listen)
            pool_host, pool = split_address(settings.pool_listen)
            web_host, web_port = split_address(settings.web_listen or DEFAULT_WEB_LISTEN)
        except ValueError as error:
            raise UpError(
                f"{ENV_PREFIX}WALLET_LISTEN / POOL_LISTEN / WEB_LISTEN: {error}"
            ) from None
        metrics = settings.metrics_port
        return cls(
            devnet=settings.devnet_port or free_port(),
            wallet_host=wallet_host,
            wallet=wallet or free_port(wallet_host),
            pool_host=pool_host,
            pool=pool or free_port(pool_host),
            metrics_host=settings.metrics_host,
            pool_metrics=metrics or free_port(settings.metrics_host),
            # The wallet's metrics next to the pool's (both processes serve their own).
            wallet_metrics=metrics + 1 if metrics else free_port(settings.metrics_host),
            web_host=web_host,
            web=(web_port or free_port(web_host)) if web else 0,
        )

    def check(self, devnet: bool) -> None:
        """One line for a port already taken, before anything starts."""
        wanted = [
            ("the wallet service", self.wallet_host, self.wallet, "WALLET_LISTEN"),
            ("the pool service", self.pool_host, self.pool, "POOL_LISTEN"),
            ("the pool's metrics", self.metrics_host, self.pool_metrics, "METRICS_PORT"),
            ("the wallet's metrics", self.metrics_host, self.wallet_metrics, "METRICS_PORT"),
        ]
        if devnet:
            wanted.insert(0, ("the devnet", "127.0.0.1", self.devnet, "DEVNET_PORT"))
        if self.web:
            wanted.append(("the farmers' web page", self.web_host, self.web, "WEB_LISTEN"))
        for what, host, port, setting in wanted:
            why = port_taken(host, port)
            if why is not None:
                raise UpError(
                    f"cannot start {what} on {host}:{port}: {why} (another kale-pool up"
                    f" running? set {ENV_PREFIX}{setting})"
                )

    @property
    def wallet_address(self) -> str:
        return f"{_connect_host(self.wallet_host)}:{self.wallet}"

    @property
    def pool_address(self) -> str:
        return f"{_connect_host(self.pool_host)}:{self.pool}"

    @property
    def web_url(self) -> str:
        """The page's address in a browser ("" when it is not served)."""
        if not self.web:
            return ""
        host = _connect_host(self.web_host)
        return f"https://{f'[{host}]' if ':' in host else host}:{self.web}/"

    def metrics_url(self, port: int) -> str:
        return f"http://{_connect_host(self.metrics_host)}:{port}/metrics"


@dataclass
class Stack:
    """One `kale-pool up`: starts, provisions, farms, stops."""

    settings: Settings
    options: UpOptions
    ports: Ports
    observer: StackObserver
    console: Console
    started: float = field(default_factory=time.time)
    state: RunState | None = None
    op: OperatorClient | None = None
    chain: ChainClient | None = None
    friendbot: Friendbot | None = None
    poolers: list[ProvisionedPooler] = field(default_factory=list)
    farmers: list[DemoFarmer] = field(default_factory=list)
    conninfo: str = ""
    outcomes: list[BlockOutcome] | None = None  # --blocks: the run's blocks, for the summary
    takings: str = ""  # --blocks: the fee and shares taken, as the pool last reported them
    fee_account: Keypair | None = None  # the devnet operator's, when `up` made it

    def __post_init__(self) -> None:
        self.layout = self.settings.layout()
        self.supervisor = Supervisor(self.layout.logs, self.observer)
        self.pki = DevPki(self.layout.certs)

    # ---- the whole run ------------------------------------------------------------------

    async def run(self) -> int:
        """Start, farm until stopped (or --blocks done), stop; the exit code."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stopper = asyncio.create_task(stop.wait())
        code = 1
        try:
            startup = asyncio.create_task(self._start())
            await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                self.observer.event("interrupted: stopping what was started")
                startup.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await startup
                return 0
            startup.result()
            code = await self._farm(stop)
        except (
            PartFailed,
            UpError,
            FundingError,
            PoolerSetupError,
            ChainError,
        ) as error:
            self.observer.event(str(error), level="error")
        except grpc.aio.AioRpcError as error:
            self.observer.event(
                f"the pool refused a provisioning call ({error.code().name}): {error.details()}",
                level="error",
            )
        finally:
            stopper.cancel()
            # Asked again while stopping: no more grace periods.
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.supervisor.hurry)
            await self._close_clients()
            await self.supervisor.stop_all()
            RunState.clear(self.settings)
        if self.outcomes is not None:
            code = self._print_summary(self.outcomes, code)
            if self.takings:
                self.console.print(f"taken so far: {self.takings}", highlight=False)
        return code

    def _print_summary(self, outcomes: list[BlockOutcome], code: int) -> int:
        """The --blocks summary; the exit code (1 unless every block was accepted)."""
        want = self.options.blocks
        self.console.print(summary_table(outcomes))
        for line in failure_lines(outcomes):
            self.console.print(line, highlight=False, soft_wrap=True)
        accepted = sum(o.accepted for o in outcomes)
        self.console.print(
            f"{accepted} of {want} blocks farmed with every planted farmer worked and harvested"
            " or its failure attributed",
            highlight=False,
        )
        return code if accepted == want else 1

    async def _close_clients(self) -> None:
        if self.op is not None:
            await self.op.close()
        if self.friendbot is not None:
            await self.friendbot.close()
        if self.chain is not None:
            await self.chain.aclose()

    # ---- start-up -----------------------------------------------------------------------

    async def _start(self) -> None:
        settings = self.settings
        devnet = settings.network is Network.DEVNET
        self.observer.event(f"kale-pool up: {settings.network.value}, data in {self.layout.root}")
        ports = self.ports
        await self._database()
        names = await asyncio.to_thread(ensure_dev_identities, self.pki)
        self.observer.event(f"certificates: development CA and {', '.join(names)} ready")

        rpc_url = devnet_rpc_url(ports.devnet) if devnet else (settings.rpc_url or "")
        self.state = RunState(
            network=settings.network.value,
            rpc_url=rpc_url,
            pool_address=ports.pool_address,
            wallet_address=ports.wallet_address,
            started_at=self.started,
            supervisor_pid=os.getpid(),
            web_url=ports.web_url,
            metrics={
                "pool": ports.metrics_url(ports.pool_metrics),
                "wallet": ports.metrics_url(ports.wallet_metrics),
            },
        )
        # The settings every part shares: the chain this stack talks to, and on the devnet
        # the operator's fee account `up` keeps unless the operator named one.
        shared: dict[str, Any] = {"rpc_url": rpc_url}
        self.fee_account = await asyncio.to_thread(up_fee_account, settings)
        if self.fee_account is not None:
            shared["pool_fee_address"] = self.fee_account.public_key
        self.settings = settings = settings.model_copy(update=shared)
        if devnet:
            await self._start_part(self._devnet_part(ports, rpc_url))
        await self._start_part(self._wallet_part(ports))
        await self._start_part(self._pool_part(ports))
        if ports.web:
            # Before the demo: the page shows the poolers and farmers as they join.
            await self._start_part(self._web_part(ports))
            self.observer.event(f"farmers' web page: {ports.web_url}", level="good")
        if self.fee_account is not None:
            await self._fund_fee_account(ports)
        if self.options.demo:
            await self._provision(ports)
        web = f", farmers' web page at {ports.web_url}" if ports.web else ""
        self.observer.event(
            f"running: pool at {ports.pool_address}{web}, logs in {self.layout.logs};"
            " Ctrl-C stops everything",
            level="good",
        )

    async def _database(self) -> None:
        where = (
            "DATABASE_URL"
            if self.settings.database_url is not None
            else f"embedded PostgreSQL in {self.layout.postgres}"
        )
        # One summary line instead of the database's own line per migration.
        logging.getLogger("kalepool.db").setLevel(logging.WARNING)
        conninfo = await asyncio.to_thread(resolve_conninfo, self.settings)
        assert conninfo is not None
        self.conninfo = conninfo
        applied = await asyncio.to_thread(apply_migrations, self.conninfo)
        self.observer.event(
            f"database: {where}, schema current ({len(applied)} migrations applied now)"
        )

    async def _start_part(self, part: Part) -> None:
        child = await self.supervisor.start(part)
        assert self.state is not None
        self.state.processes[part.name] = ProcessInfo(
            pid=child.pid, role=part.role, log=str(child.log), address=part.address
        )
        self.state.save(self.settings)

    def _env(self, role: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """A service's environment: what `part_env` gives its role, and its own ports."""
        env = part_env(self.settings, role, conninfo=self.conninfo)
        env.update({f"{ENV_PREFIX}{k.upper()}": v for k, v in (overrides or {}).items()})
        return env

    def _devnet_part(self, ports: Ports, rpc_url: str) -> Part:
        s = self.settings
        argv = [
            sys.executable,
            "-m",
            "kalepool.app.cli",
            "devnet",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports.devnet),
            "--ledger-seconds",
            str(s.ledger_seconds()),
            "--block-seconds",
            str(s.devnet_block_seconds),
            "--state",
            str(self.layout.devnet_state),
        ]
        self.observer.event(
            f"devnet: blocks every {s.devnet_block_seconds} s, ledgers every"
            f" {s.ledger_seconds()} s, chain kept in {self.layout.devnet_state}"
        )
        return Part(
            name="devnet",
            role="devnet",
            argv=argv,
            env=self._env("devnet"),
            address=rpc_url,
            probe=lambda: http_ok(rpc_url.rstrip("/") + "/devnet"),
        )

    def _wallet_part(self, ports: Ports) -> Part:
        from wallet_service.keystore import ensure_devnet_master_key, load_keyring

        overrides: dict[str, str] = {
            "wallet_listen": f"{ports.wallet_host}:{ports.wallet}",
            "metrics_port": str(ports.wallet_metrics),
        }
        s = self.settings
        if s.network is Network.DEVNET and s.master_key is None and s.master_key_file is None:
            overrides["master_key_file"] = str(ensure_devnet_master_key(s))
        else:
            from wallet_service.keystore import MasterKeyError

            try:
                load_keyring(s)  # a missing key is one line now, not a dead process later
            except MasterKeyError as error:
                raise UpError(str(error)) from None
        # Health answers the operator only (kalepool.grpc_server): the probe is the operator's.
        identity = self.pki.client(OPERATOR)
        return Part(
            name="wallet",
            role="wallet",
            argv=[sys.executable, "-m", "wallet_service"],
            env=self._env("wallet", overrides),
            address=ports.wallet_address,
            probe=lambda: grpc_serving(
                ports.wallet_address,
                identity,
                self.pki.ca_pem,
                WALLET_SERVER,
                "kalepool.v1.WalletService",
            ),
        )

    def _pool_part(self, ports: Ports) -> Part:
        identity = self.pki.client(OPERATOR)
        return Part(
            name="pool",
            role="pool",
            argv=[sys.executable, "-m", "pool_service"],
            env=self._env(
                "pool",
                {
                    "pool_listen": f"{ports.pool_host}:{ports.pool}",
                    "wallet_listen": ports.wallet_address,
                    "metrics_port": str(ports.pool_metrics),
                },
            ),
            address=ports.pool_address,
            probe=lambda: grpc_serving(
                ports.pool_address,
                identity,
                self.pki.ca_pem,
                POOL_SERVER,
                "kalepool.v1.PoolService",
            ),
        )

    def _web_part(self, ports: Ports) -> Part:
        """The farmers' web page: HTTPS with the `web-server` certificate, calling the
        pool as `farmer-web`; ready once its page answers over TLS checked against the
        development CA."""
        url = ports.web_url
        return Part(
            name="web",
            role="web",
            argv=[sys.executable, "-m", "farmer_web"],
            env=self._env(
                "web",
                {
                    "web_listen": f"{ports.web_host}:{ports.web}",
                    "web_pool_address": ports.pool_address,
                },
            ),
            address=url,
            probe=lambda: https_ok(url, self.pki.ca_pem),
        )

    def _pooler_part(self, pooler: ProvisionedPooler) -> Part:
        env = self._env("pooler")
        env.update(pooler.env)
        env[f"{ENV_PREFIX}DATA_DIR"] = str(pooler.bundle.directory)
        pooler_id = pooler.pooler.pooler_id

        async def connected() -> bool:
            assert self.op is not None
            got = await self.op.pool.GetPoolerStats(
                pool_pb2.GetPoolerStatsRequest(pooler_id=pooler_id), timeout=5
            )
            return bool(got.stream_connected)

        return Part(
            name=pooler.bundle.name,
            role="pooler",
            argv=[sys.executable, "-m", "kalepool.app.cli", "pooler"],
            env=env,
            probe=connected,
            ready_timeout=120.0,
            stop_grace=self.settings.request_timeout_seconds + 10,
        )

    async def _clients(self, ports: Ports) -> Friendbot | None:
        """The operator's client of the pool, the chain and the friendbot (None: the
        network has none), made once."""
        settings = self.settings
        if self.op is None:
            self.op = OperatorClient(settings, address=ports.pool_address)
        if self.chain is None:
            self.chain = ChainClient(await resolve_chain_config(settings), poll_interval=0.5)
            assert self.state is not None
            self.friendbot = await Friendbot.for_network(settings, self.state.rpc_url)
        return self.friendbot

    async def _fund_fee_account(self, ports: Ports) -> None:
        """The devnet operator's fee account on chain, trusting KALE (the fee wallet pays
        it)."""
        friendbot = await self._clients(ports)
        assert friendbot is not None and self.chain is not None and self.fee_account is not None
        new = await fund_fee_account(self.chain, friendbot, self.fee_account)
        self.observer.event(
            f"operator's fee account {self.fee_account.public_key}:"
            f" {'funded now' if new else 'found again'}, key in"
            f" {self.layout.devnet_fee_account} (the pool's fee is paid out there)"
        )

    async def _provision(self, ports: Ports) -> None:
        settings = self.settings
        if await self._clients(ports) is None:
            raise UpError(
                f"{settings.network.value} has no friendbot to fund demo accounts:"
                " run with --no-demo"
            )
        assert self.op is not None and self.chain is not None and self.friendbot is not None
        assert self.state is not None
        names = [f"pooler-{i}" for i in range(1, self.options.poolers + 1)]
        self.poolers = list(
            await asyncio.gather(
                *(
                    provision_pooler(
                        self.op,
                        settings,
                        name,
                        pool_address=ports.pool_address,
                        rpc_url=self.state.rpc_url,
                        chain=self.chain,
                        friendbot=self.friendbot,
                        observer=self.observer,
                    )
                    for name in names
                )
            )
        )
        for p in self.poolers:
            how = "registered" if p.registered else "found again"
            self.observer.event(
                f"{p.bundle.name}: {how} (pooler {p.pooler.pooler_id}), settings in"
                f" {p.bundle.env_file}"
            )
        if self.options.farmers:
            self.farmers = await provision_demo(
                self.op,
                settings,
                self.chain,
                self.friendbot,
                self.poolers,
                self.options.farmers,
                self.observer,
            )
            await wait_for_deposits(self.op, self.farmers, deposit_wait(settings), self.observer)
        for p in self.poolers:
            await self._start_part(self._pooler_part(p))

    # ---- farming ------------------------------------------------------------------------

    async def _farm(self, stop: asyncio.Event) -> int:
        assert self.state is not None
        # The farm's view takes over from the start-up lines: live on a terminal.
        live: StackObserver = make_view(self.settings, self.state, self.console)
        self.supervisor.observer = live
        view_stop = asyncio.Event()
        view = asyncio.create_task(live.run(view_stop), name="view")
        want = self.options.blocks
        watcher = (
            CycleWatcher(self.op, self.started, live)
            if self.op is not None and self.farmers
            else None
        )
        waits: dict[str, asyncio.Task[Any]] = {
            "stop": asyncio.create_task(stop.wait()),
            "exit": asyncio.create_task(self.supervisor.unexpected_exit()),
        }
        if watcher is not None:
            waits["cycles"] = asyncio.create_task(watcher.watch(view_stop, want))
        # On the devnet the pool's fee and share wallets get XLM as the pool makes them:
        # beside the farm, never in its way (it only logs what goes wrong).
        funding: asyncio.Task[None] | None = None
        devnet = self.settings.network is Network.DEVNET
        if devnet and self.op is not None and self.friendbot is not None:
            assert self.chain is not None
            funder = PoolAccountFunder(self.op, self.chain, self.friendbot, live)
            funding = asyncio.create_task(funder.run(view_stop), name="fund-pool-accounts")
        timeout = None
        if want is not None and self.chain is not None:
            timeout = blocks_timeout(want, self.chain.config)
        code = 0
        try:
            done, _ = await asyncio.wait(
                waits.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waits["exit"] in done:
                live.event(f"{waits['exit'].result()}: stopping everything", level="error")
                code = 1
            elif "cycles" in waits and waits["cycles"] in done and want is not None:
                waits["cycles"].result()
            elif waits["stop"] in done:
                live.event("stopping (Ctrl-C)")
                code = 0 if want is None else 1
            elif not done:
                live.event(f"--blocks {want}: not complete after {timeout:.0f} s", level="error")
                code = 1
        finally:
            view_stop.set()
            for task in waits.values():
                task.cancel()
            await asyncio.gather(*waits.values(), return_exceptions=True)
            with contextlib.suppress(Exception):
                await view
            if funding is not None:
                funding.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await funding
        if want is not None and watcher is not None:
            try:
                self.outcomes = await watcher.final(want)
                assert self.op is not None
                stats, _, poolers = await read_figures(self.op)
                self.takings = takings(stats, poolers)
            except grpc.aio.AioRpcError as error:
                live.event(f"the pool's block report failed: {error.details()}", level="error")
                self.outcomes = sorted(watcher.completed.values(), key=lambda o: o.index)
        return code


@contextlib.contextmanager
def _event_log(settings: Settings) -> Iterator[None]:
    """The stack's events (the supervisor's and the view's) also go to
    `<data dir>/logs/events.log`, and only there: the terminal shows them its own way."""
    events = logging.getLogger(EVENT_LOGGER)
    path = settings.layout().logs / "events.log"
    stream = open(open_private_append(path), "a", encoding="utf-8")  # noqa: SIM115
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s"))
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False
    try:
        yield
    finally:
        events.removeHandler(handler)
        handler.close()
        stream.close()


def run_up(settings: Settings, options: UpOptions, console: Console | None = None) -> int:
    """`kale-pool up` (UpError or StackLockedError for what cannot start, in one line)."""
    from kalepool.app.runstate import StackLock

    check_options(settings, options)
    if settings.network is Network.DEVNET:
        from kalepool.app.devnet import DevnetMissingError, require_devnet

        try:
            require_devnet()  # the chain `up` runs on the devnet: say now if it is missing
        except DevnetMissingError as error:
            raise UpError(str(error)) from None
    settings.layout().ensure()
    if console is None:
        from kalepool.app.commands import _out  # standard output at a useful width

        console = _out()
    with StackLock(settings), _event_log(settings):
        ports = Ports.plan(settings, web=options.web)
        ports.check(settings.network is Network.DEVNET)
        stack = Stack(settings, options, ports, PlainObserver(console), console)
        code = asyncio.run(stack.run())
    console.print("stopped", highlight=False)
    return code
