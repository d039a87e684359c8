"""A world without ``invoice_payment`` and ``payment_intent`` files (made by another tool,
or by a generator before version 8) still scores payment failures.

The current API's charges name no invoice, so without the invoice payments nothing joins
a charge to its invoice: ``payment_failure`` then counts an invoice's attempts from its
``invoice.payment_failed`` events (the backfill reads the 30 days Stripe keeps), else, at
the world's ``now``, from its ``attempt_count``. The same invoices fail, with the same
attempts, as in the full world.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from churn import warehouse
from churn.job.run import DEFAULT_STEPS, run_job
from churn.sandbox.demo import demo_settings, serve_world
from churn.sandbox.world import generate_world, write_world

pytestmark = pytest.mark.slow
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _failures(folder: Path, db: Path) -> dict[str, dict[str, Any]]:
    with serve_world(folder) as sandbox:
        settings = demo_settings(sandbox, db).with_overrides(
            run={"as_of": NOW.replace(tzinfo=None)}
        )
        result = run_job(settings, steps=[s for s in DEFAULT_STEPS if s.name != "push"])
    assert result.status == "success", [o.error for o in result.steps]
    con = warehouse.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT episode_key, evidence FROM signal_events"
            " WHERE signal = 'payment_failure' AND as_of = ?",
            [NOW.replace(tzinfo=None)],
        ).fetchall()
    finally:
        con.close()
    return {key: json.loads(ev) for key, ev in rows}


def test_a_world_without_payment_files_scores_the_same_failures(tmp_path: Path) -> None:
    full = tmp_path / "full"
    write_world(generate_world(150, seed=3, now=NOW), full, seed=3)
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in full.rglob("*"):
        if path.is_file() and path.name.split(".")[0] not in ("invoice_payment", "payment_intent"):
            target = bare / path.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    assert not list((bare / "stripe").glob("payment_intent*"))

    with_files = _failures(full, tmp_path / "full.duckdb")
    without = _failures(bare, tmp_path / "bare.duckdb")
    assert with_files, "the world should have open failed invoices at its now"
    assert set(without) == set(with_files)
    for key, evidence in with_files.items():
        assert without[key]["attempts"] == evidence["attempts"], key
        # the charged card is known only where a charge is linked
        assert evidence["payment_method_id"] is not None
        assert without[key]["payment_method_id"] is None
