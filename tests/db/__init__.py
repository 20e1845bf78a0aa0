"""Tests of the PostgreSQL schema, the migration runner and the embedded server."""
