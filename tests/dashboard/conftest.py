"""A generated world served by the stand-ins, run once through ``churn run``: the
dashboard's pages are tested on its read copy (``dash``), with links pointing at the
stand-ins, as a sandbox's would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from churn.job.run import JobResult, run_job
from churn.sandbox.demo import Sandbox, demo_settings, ensure_world, serve_world
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


@pytest.fixture(scope="session")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    root = tmp_path_factory.mktemp("dashboard")
    folder = ensure_world(root / "worlds", ACCOUNTS, SEED)
    with serve_world(folder) as box:
        db = root / "churn.duckdb"
        settings = demo_settings(box, db)
        result = run_job(settings)
        assert result.status == "success", [s.error for s in result.steps]
        yield Dash(box, settings, db, result)


@pytest.fixture
def page_env(dash: Dash, monkeypatch: pytest.MonkeyPatch) -> Dash:
    """The environment the app reads its settings from (AppTest runs in this process)."""
    for key in [k for k in os.environ if k.startswith(("STRIPE_", "SALESFORCE_"))]:
        monkeypatch.delenv(key)
    for key, value in dash.env().items():
        monkeypatch.setenv(key, value)
    return dash
