from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from churn import warehouse


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "churn.duckdb"


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(db_path)
    yield connection
    connection.close()
