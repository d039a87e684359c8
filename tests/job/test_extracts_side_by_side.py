"""The Salesforce extract runs beside Stripe's once both read incrementally.

Each on a connection of its own (a DuckDB cursor of the run's), both outcomes recorded in
step order; a first read of either runs alone (DuckDB's memory limit is the database's:
the Stripe extract's would bound a Salesforce backfill too).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.errors import StripeExtractError
from churn.job import run as job_run
from churn.job.run import Step, run_job, side_by_side
from churn.settings import load_settings
from churn.warehouse.sync_state import write_state

#: A guard against a hang, not a speed check: each wait ends on the other step's event.
HANG = 600.0


def _settings(tmp_path: Path) -> Any:
    return load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb")})


def _extracted_before(db: Path, *, stripe: bool = True, salesforce: bool = True) -> None:
    con = warehouse.connect(db)
    try:
        if stripe:
            write_state(con, "stripe:backfill:all", cursor=None, cursor_ts=None,
                        details={"done": True})  # fmt: skip
        if salesforce:
            write_state(con, "salesforce.account", cursor=None, cursor_ts=None,
                        details={"watermark": "2026-11-01T00:00:00"})  # fmt: skip
    finally:
        con.close()


def test_side_by_side_only_once_both_extracts_have_read_whole(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    try:
        assert not side_by_side(con)  # a first run: both backfill, one after the other
        write_state(
            con, "stripe:backfill:all", cursor=None, cursor_ts=None, details={"done": False}
        )
        write_state(con, "salesforce.account", cursor=None, cursor_ts=None, details={})
        assert not side_by_side(con)  # both part-way (Salesforce's cursor without a watermark)
        write_state(con, "stripe:backfill:all", cursor=None, cursor_ts=None, details={"done": True})
        assert not side_by_side(con)
        write_state(con, "salesforce.account", cursor=None, cursor_ts=None,
                    details={"watermark": "2026-11-01T00:00:00"})  # fmt: skip
        assert side_by_side(con)
    finally:
        con.close()


def _meeting() -> tuple[Any, Any, list[Any]]:
    """Two steps that each wait for the other to have started: they finish only when run
    side by side (one after the other, the first would wait in vain and fail)."""
    started = {"stripe": threading.Event(), "salesforce": threading.Event()}
    connections: list[Any] = []

    def step(name: str, other: str) -> Any:
        def run(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
            connections.append((name, con, threading.current_thread().name))
            started[name].set()
            if not started[other].wait(HANG):
                raise StripeExtractError(f"{name} ran alone")
            # each step writes through its own connection, in its own transaction
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE IF NOT EXISTS met_{name} AS SELECT 1 AS one")
            con.execute("COMMIT")
            return SimpleNamespace(counts={name: 1}, api_calls=1)

        return run

    return step("stripe", "salesforce"), step("salesforce", "stripe"), connections


def test_the_extracts_run_at_once_each_on_its_own_connection(tmp_path: Path) -> None:
    _extracted_before(tmp_path / "w.duckdb")
    stripe, salesforce, seen = _meeting()
    steps = [
        Step("stripe", stripe),
        Step("salesforce", salesforce, beside="stripe"),
        Step("score", lambda s, con, dry: SimpleNamespace(counts={}, api_calls=0)),
    ]
    marks: list[str] = []
    result = run_job(_settings(tmp_path), steps=steps, on_step=marks.append)
    assert result.status == "success", [o.error for o in result.steps]
    assert [o.name for o in result.steps] == ["stripe", "salesforce", "score"]
    assert marks == ["stripe", "salesforce", "score"]
    assert result.api_calls == 2
    by_name = {name: (con, thread) for name, con, thread in seen}
    assert by_name["stripe"][0] is not by_name["salesforce"][0]
    assert by_name["stripe"][1] != by_name["salesforce"][1]
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        assert con.execute("SELECT * FROM met_stripe, met_salesforce").fetchall() == [(1, 1)]
        [(counts,)] = con.execute("SELECT counts FROM run_log").fetchall()
    finally:
        con.close()
    assert json.loads(counts) == {"stripe": {"stripe": 1}, "salesforce": {"salesforce": 1},
                                  "score": {}}  # fmt: skip


def test_a_first_read_runs_alone(tmp_path: Path) -> None:
    _extracted_before(tmp_path / "w.duckdb", salesforce=False)
    threads: list[str] = []

    def step(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        threads.append(threading.current_thread().name)
        return SimpleNamespace(counts={}, api_calls=0)

    steps = [Step("stripe", step), Step("salesforce", step, beside="stripe")]
    assert run_job(_settings(tmp_path), steps=steps).status == "success"
    assert threads == [threading.current_thread().name] * 2


def test_a_failed_extract_beside_still_skips_scoring(tmp_path: Path) -> None:
    _extracted_before(tmp_path / "w.duckdb")

    def fails(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        raise StripeExtractError("stream invoices: GET /v1/invoices 400")

    def ok(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        return SimpleNamespace(counts={"account": 1}, api_calls=1)

    steps = [Step("stripe", ok), Step("salesforce", fails, beside="stripe"),
             Step("score", ok)]  # fmt: skip
    result = run_job(_settings(tmp_path), steps=steps)
    assert [o.status for o in result.steps] == ["success", "failed", "skipped"]
    assert result.status == "partial" and result.exit_code == 3


def test_an_unexpected_error_beside_is_raised_and_the_run_closed(tmp_path: Path) -> None:
    _extracted_before(tmp_path / "w.duckdb")

    def ok(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        return SimpleNamespace(counts={}, api_calls=0)

    def broken(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        raise KeyError("a bug")

    steps = [Step("stripe", ok), Step("salesforce", broken, beside="stripe")]
    with pytest.raises(KeyError, match="a bug"):
        run_job(_settings(tmp_path), steps=steps)
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        [(status, error)] = con.execute("SELECT status, error FROM run_log").fetchall()
    finally:
        con.close()
    assert status == "failed" and error == "unexpected KeyError after 0 steps"


def test_the_default_steps_put_salesforce_beside_stripe() -> None:
    by_name = {s.name: s for s in job_run.DEFAULT_STEPS}
    assert by_name["salesforce"].beside == "stripe"
    names = [s.name for s in job_run.DEFAULT_STEPS]
    assert names.index("salesforce") == names.index("stripe") + 1
    assert [s.name for s in job_run.DEFAULT_STEPS if s.beside] == ["salesforce"]
