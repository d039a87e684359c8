"""The dashboard tests' world: what the session fixture in conftest.py builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from churn.job.run import JobResult
from churn.sandbox.demo import Sandbox
from churn.settings import Settings
from churn.warehouse import connect_read_copy

PAGES_DIR = Path(__file__).parents[2] / "src" / "churn" / "dashboard" / "views"
ACCOUNTS, SEED = 600, 42


@dataclass
class Dash:
    box: Sandbox
    settings: Settings
    db: Path
    run: JobResult

    def env(self) -> dict[str, str]:
        return {**self.box.env(), "CHURN_DB": str(self.db)}

    def read(self) -> duckdb.DuckDBPyConnection:
        return connect_read_copy(self.db)
