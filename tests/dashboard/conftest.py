"""A generated world served by the stand-ins, run once through ``churn run``: the
dashboard's pages are tested on its read copy (``dash``), with links pointing at the
stand-ins, as a sandbox's would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dash_world import ACCOUNTS, SEED, Dash

from churn.job.run import run_job
from churn.sandbox.demo import demo_settings, ensure_world, serve_world


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
