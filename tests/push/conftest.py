"""Fixtures of the push tests."""

from __future__ import annotations

import duckdb
import pytest
from push_world import MART_DDL, World


@pytest.fixture
def world(con: duckdb.DuckDBPyConnection) -> World:
    w = World(con)
    w.con.execute(MART_DDL)
    return w
