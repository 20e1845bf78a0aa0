"""Who connects as what: the database roles of the services and of the operator's check.

Each service connects as a role of its own that owns nothing (docs/database.md): the
migrator owns every table and applies the migrations; `kalepool_wallet` and
`kalepool_pool` hold only the grants their service needs (`shared.grant_roles()`,
migration 0012); `kalepool_auditor` reads both services' rows for `kale-pool check`.
A role sees the objects of its own schemas by name: each connection sets its
``search_path`` (`search_path_option`), so the services' SQL names tables without a
schema and works whichever role the URL names (a single-URL setup connects every
service as the owner).

The names are fixed, because the grants name them; a login role of another name gets
a role's privileges by membership (``GRANT kalepool_pool TO pool_login``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DbRole:
    """A role the grants name, and the schemas its connections see by name."""

    name: str
    schemas: tuple[str, ...]

    @property
    def search_path(self) -> str:
        """The connection option that makes its schemas the search path."""
        return search_path_option(self.schemas)


#: The wallet service: custodial keys and the transactions it signs.
WALLET = DbRole("kalepool_wallet", ("wallet", "shared"))
#: The pool service: everything else; it cannot read a wallet table.
POOL = DbRole("kalepool_pool", ("pool", "shared"))
#: `kale-pool check`: reads both services' rows (no ciphertext), writes nothing.
AUDITOR = DbRole("kalepool_auditor", ("pool", "wallet", "shared"))
ROLES = (WALLET, POOL, AUDITOR)

#: What the owner's sessions see by name: every schema (people, tests, migrations' checks).
OWNER_SCHEMAS = ("pool", "wallet", "shared", "public")


def search_path_option(schemas: Sequence[str]) -> str:
    """libpq ``options`` that set the session's search_path to ``schemas``."""
    return "-c search_path=" + ",".join(schemas)


def with_schemas(conninfo: str, schemas: Sequence[str]) -> str:
    """``conninfo`` whose sessions see ``schemas`` by name (replaces its ``options``)."""
    return make_conninfo(conninfo, options=search_path_option(schemas))


def as_role(conninfo: str, role: DbRole) -> str:
    """``conninfo`` naming ``role`` as the user, for a server that trusts its local
    connections (the embedded one): the owner's password, if any, is dropped."""
    return make_conninfo(conninfo, user=role.name, password="")


def ensure_roles(admin_conninfo: str, *, login: bool = True) -> None:
    """Create the roles that do not exist yet (with ``login``: able to log in, with no
    password).

    For the embedded server, reached only through its socket with trust authentication:
    a role's name is its credential there. An external server's roles are the
    operator's, with passwords (docs/database.md). Needs CREATEROLE; safe to race.
    """
    create = sql.SQL("CREATE ROLE {} LOGIN" if login else "CREATE ROLE {} NOLOGIN")
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        for role in ROLES:
            found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,))
            if found.fetchone() is not None:
                continue
            with contextlib.suppress(psycopg.errors.DuplicateObject):
                conn.execute(create.format(sql.Identifier(role.name)))
                log.info("created database role %s", role.name)


def grant_roles(conninfo: str) -> list[str]:
    """Grant each service role that exists what it needs (``shared.grant_roles()``), as
    the owner; the roles granted. Idempotent; nothing to do before migration 0012."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = conn.execute("SELECT to_regprocedure('shared.grant_roles()') IS NOT NULL")
        row = found.fetchone()
        if not (row and row[0]):
            return []
        granted = conn.execute("SELECT shared.grant_roles()").fetchone()
    assert granted is not None
    return list(granted[0])
