from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import settings

from churn import warehouse

# No deadline: a property test that takes 250 ms on a loaded 2-core CI machine is not a
# failure (one did, once). Derandomized: the same examples every run, so a red suite is
# reproducible and CI never meets an example the developers never saw.
settings.register_profile("churn", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("churn")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "churn.duckdb"


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(db_path)
    yield connection
    connection.close()
