from __future__ import annotations

from pathlib import Path

import pytest

from churn.pipelines import warehouse
from churn.pipelines.job import run_job
from churn.sandbox.demo import demo_settings, ensure_world, serve_world


@pytest.mark.slow
def test_job_over_loopback_lands_stripe_and_sf_records_are_served(tmp_path: Path) -> None:
    folder = ensure_world(tmp_path / "worlds", 40, 3)
    assert ensure_world(tmp_path / "worlds", 40, 3) == folder  # cached, not regenerated
    with serve_world(folder) as box:
        accounts = box.salesforce.records["Account"]
        assert accounts and all(i.startswith("001") for i in accounts)
        settings = demo_settings(box, tmp_path / "w.duckdb")
        result = run_job(settings, dry_run=True)
        stripe_step = next(s for s in result.steps if s.name == "stripe")
        assert stripe_step.status == "success", stripe_step.error
        assert stripe_step.api_calls > 0 and box.stripe.requests >= stripe_step.api_calls
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        n = con.execute("SELECT count(*) FROM raw_stripe_customer").fetchone()
        status = con.execute("SELECT status FROM run_log WHERE command LIKE 'run%'").fetchall()
    finally:
        con.close()
    assert n == (40,)
    assert status == [(result.status,)]
