"""The PostgreSQL schema of kale-pool and the code that manages it.

- :mod:`kalepool.db.migrate`: versioned SQL migrations (``migrations/NNNN_name.sql``),
  ``apply_migrations(conninfo)`` and ``migration_status(conninfo)``;
- :mod:`kalepool.db.embedded`: the embedded server used when no ``DATABASE_URL``
  is set;
- :mod:`kalepool.db.roles`: the services' database roles and the schemas each sees;
- :mod:`kalepool.db.consistency`: ``check_consistency(conn)`` proves derived state
  agrees with the event tables, ``rebuild_derived_state(conn)`` repairs it.

Services talk to the database with psycopg 3 directly; see docs/database.md for
the schema and its rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kalepool.db.roles import DbRole
    from kalepool.settings import Settings


def resolve_conninfo(
    settings: Settings, *, start: bool = True, role: DbRole | None = None
) -> str | None:
    """The database this process uses: ``DATABASE_URL`` when set (whoever it names),
    else the embedded server in the data directory (started on demand), as its
    superuser, the migrator, or as ``role`` when one is given.

    One URL is one set of credentials: a deployment gives each process its own
    ``DATABASE_URL`` (the migrator's, a service's, the auditor's); a single URL shared
    by every process connects each as that one role. With ``start=False`` an embedded
    server that is not already running gives None, so inspection commands never start
    one behind the operator's back. The embedded server stays up while this process
    (or any other holder) runs.
    """
    from kalepool.db.embedded import embedded_conninfo, embedded_running

    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    layout = settings.layout()
    if not start and not embedded_running(layout.postgres):
        return None
    layout.ensure()
    return embedded_conninfo(layout.postgres, role=role)
