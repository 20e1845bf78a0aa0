"""The test databases' roles: every service under test runs as its own database role.

On the session's embedded server the roles log in by name (trust, as in production's
embedded server). On a ``TEST_DATABASE_URL`` server, which may be shared and ask for
passwords, the session makes login roles of its own, members of the service roles
(`create_logins`), and drops them at the end.
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kalepool.db.roles import OWNER_SCHEMAS, ROLES, DbRole, as_role, with_schemas

# role name -> (login, password) on the session's external server, whose (host, port)
# is `_external`; empty on the embedded server.
_logins: dict[str, tuple[str, str]] = {}
_external: tuple[object, object] | None = None


def owner_view(conninfo: str) -> str:
    """The owner's conninfo seeing every schema by name (tests read any table)."""
    return with_schemas(conninfo, OWNER_SCHEMAS)


def service_conninfo(owner_conninfo: str, role: DbRole) -> str:
    """The conninfo of the same database as ``role``, seeing that role's schemas."""
    params = conninfo_to_dict(owner_conninfo)
    if _logins and (params.get("host"), params.get("port")) == _external:
        user, password = _logins[role.name]
        return make_conninfo(owner_conninfo, user=user, password=password, options=role.search_path)
    return make_conninfo(as_role(owner_conninfo, role), options=role.search_path)


def create_logins(admin_conninfo: str, prefix: str) -> None:
    """Login roles for this session on an external server, members of the service roles."""
    global _external
    params = conninfo_to_dict(admin_conninfo)
    _external = (params.get("host"), params.get("port"))
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        for role in ROLES:
            login = f"{prefix}_{role.name.removeprefix('kalepool_')}"
            password = secrets.token_hex(16)
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(login), sql.Literal(password), sql.Identifier(role.name)
                )
            )
            _logins[role.name] = (login, password)


def drop_logins(admin_conninfo: str) -> None:
    """Drop the session's login roles (after its databases)."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        for login, _ in _logins.values():
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))
    _logins.clear()
