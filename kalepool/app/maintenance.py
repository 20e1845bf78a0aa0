"""The maintenance commands' work: `db migrate`, `db status`, `config show`.

They read the database and the settings directly, not through the pool's API. The
database is found as every process finds it (``DATABASE_URL`` or the embedded server in
the data directory).
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table

from kalepool.db import resolve_conninfo
from kalepool.db.migrate import apply_migrations, migration_status
from kalepool.db.roles import grant_roles
from kalepool.masking import shown_setting
from kalepool.settings import ENV_PREFIX, Settings

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
