"""The maintenance commands' work: `db migrate`, `db status`, `config show`.

They read the database and the settings directly, not through the pool's API. The
database is found as every process finds it (``DATABASE_URL`` or the embedded server in
the data directory).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kalepool.db import resolve_conninfo
from kalepool.db.migrate import apply_migrations, migration_status
from kalepool.db.roles import grant_roles
from kalepool.masking import shown_setting
from kalepool.settings import ENV_PREFIX, Network, Settings

log = logging.getLogger("kalepool")
console = Console(stderr=True)


def migrate(settings: Settings) -> None:
    """Apply pending migrations as the migrator, grant the services' roles what they need
    (roles created since the last run get their grants now), and say what was done."""
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    applied = apply_migrations(conninfo)
    if applied:
        for migration in applied:
            console.print(f"applied {migration.version:04d} {migration.name}")
    else:
        console.print("schema is current: nothing to apply")
    granted = grant_roles(conninfo)
    if granted:
        console.print(f"granted the roles {', '.join(granted)} their privileges")


def show_migrations(settings: Settings) -> None:
    """Print applied and pending migrations."""
    conninfo = resolve_conninfo(settings)
    assert conninfo is not None
    table = Table("version", "name", "state")
    for entry in migration_status(conninfo):
        table.add_row(f"{entry.version:04d}", entry.name, "applied" if entry.applied else "pending")
    Console().print(table)


def show_config(settings: Settings) -> None:
    """Print every setting as ``NAME=value`` lines (the .env format); secrets and the
    secret parts of URLs are masked (`kalepool.masking`)."""
    for name, value in settings:
        env_name = "DATABASE_URL" if name == "database_url" else f"{ENV_PREFIX}{name.upper()}"
        print(f"{env_name}={shown_setting(name, value)}")


def rotate_key(settings: Settings, *, retire: bool, new_key_file: Path | None) -> int:
    """`kale-pool wallet rotate-key`: run or continue the master key rotation
    (`wallet_service.rotation`) as the wallet's database role; the exit code.

    The keyring is where the wallet service reads it: `KALE_POOL_MASTER_KEY_FILE`, else
    `KALE_POOL_MASTER_KEY`, else (devnet) the data directory's `wallet/master.key`.
    """
    from kalepool.db.roles import WALLET
    from kalepool.serving import open_database
    from wallet_service.keystore import MasterKeyError, devnet_master_key_path
    from wallet_service.rotation import RotationError, rotate_master_key

    if (
        settings.network is Network.DEVNET
        and settings.master_key is None
        and settings.master_key_file is None
        and devnet_master_key_path(settings).is_file()
    ):
        settings = settings.model_copy(update={"master_key_file": devnet_master_key_path(settings)})
    new_key = None
    if new_key_file is not None:
        try:
            new_key = base64.b64decode(new_key_file.read_text("ascii").strip(), validate=True)
        except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
            console.print(f"cannot read a base64 master key from {new_key_file}")
            return 2
    try:
        conninfo = asyncio.run(open_database(settings, WALLET))
        report = rotate_master_key(
            settings,
            conninfo,
            retire=retire,
            new_key=new_key,
            progress=lambda line: console.print(line, markup=False, highlight=False),
        )
    except (MasterKeyError, RotationError) as error:
        console.print(f"rotate-key: {error}", markup=False)
        return 1
    if report.rotation_id is None and not report.retired:
        console.print(f"nothing to do: every wallet is under {report.target}")
    else:
        console.print(
            f"done: every wallet is under {report.target} ({report.rewrapped} rewrapped now"
            + (
                f", version(s) {', '.join(map(str, report.retired))} retired"
                if report.retired
                else ""
            )
            + ")"
        )
    return 0
