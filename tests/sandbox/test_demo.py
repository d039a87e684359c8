from __future__ import annotations

from pathlib import Path

import pytest

from churn import warehouse
from churn.job.run import run_job
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


@pytest.mark.slow
def test_churn_sandbox_serve_then_churn_run_from_another_process(tmp_path: Path) -> None:
    """`churn sandbox serve WORLD` prints the exports; a separate `churn run` reads the
    world through them over HTTP; SIGTERM stops the servers cleanly."""
    import os
    import signal
    import subprocess
    import sys

    folder = ensure_world(tmp_path / "worlds", 30, 5)
    churn = [sys.executable, "-m", "churn"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SALESFORCE_"))}
    serve = subprocess.Popen(
        [*churn, "sandbox", "serve", str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        exports: dict[str, str] = {}
        assert serve.stdout is not None
        while "CHURN_USAGE__FOLDER" not in exports:
            line = serve.stdout.readline()
            assert line, "serve exited before printing its exports"
            key, _, value = line.removeprefix("export ").strip().partition("=")
            exports[key] = value
        assert exports["STRIPE_API_BASE"].startswith("http://127.0.0.1:")
        db = tmp_path / "w.duckdb"
        run = subprocess.run(
            [*churn, "run"], env={**env, **exports, "CHURN_DB": str(db)},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        for secret in ("STRIPE_API_KEY", "SALESFORCE_SESSION_ID"):
            assert exports[secret] not in run.stdout + run.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=600) == 0
    con = warehouse.connect(db, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM raw_stripe_customer").fetchone() == (30,)
        assert con.execute("SELECT count(*) FROM account_health").fetchone()[0] > 0  # type: ignore[index]
    finally:
        con.close()
