"""Fixtures of the schema tests."""

from __future__ import annotations

import pytest

from .rows import Conn, Rows


@pytest.fixture
def rows(db: Conn) -> Rows:
    """Row builders on the test's own database."""
    return Rows(db)
