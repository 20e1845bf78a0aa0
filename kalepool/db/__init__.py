"""The PostgreSQL schema of kale-pool and the code that manages it.

- :mod:`kalepool.db.migrate`: versioned SQL migrations (``migrations/NNNN_name.sql``),
  ``apply_migrations(conninfo)`` and ``migration_status(conninfo)``;
- :mod:`kalepool.db.embedded`: the embedded server used when no ``DATABASE_URL``
  is set;
- :mod:`kalepool.db.consistency`: ``check_consistency(conn)`` proves derived state
  agrees with the event tables, ``rebuild_derived_state(conn)`` repairs it.

Services talk to the database with psycopg 3 directly; see docs/database.md for
the schema and its rules.
"""
