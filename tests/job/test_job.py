from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.errors import ApiBudgetExhaustedError, LockHeldError, StripeExtractError
from churn.job.run import Step, run_job, run_lock
from churn.job.scheduler import parse_every, schedule
from churn.settings import load_settings
from faults import tally

#: Seconds a wait on a child may take before the test fails: a guard against a hang, not a
#: speed check (every wait here ends on an event: a line, a closed pipe, an exit).
HANG = 600.0


def _settings(tmp_path: Path) -> Any:
    return load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb")})


def _ok(counts: dict[str, int], calls: int) -> Any:
    def run(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        return SimpleNamespace(counts=counts, api_calls=calls)

    return run


def _raises(exc: Exception) -> Any:
    def run(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        raise exc

    return run


def _run_log(tmp_path: Path) -> list[tuple[Any, ...]]:
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        return con.execute(
            "SELECT status, counts, api_calls, durations, error, finished_at FROM run_log"
        ).fetchall()
    finally:
        con.close()


def test_success_writes_one_run_log_row_with_counts_and_calls(tmp_path: Path) -> None:
    steps = [Step("stripe", _ok({"customer": 3}, 2)), Step("score", _ok({"accounts": 3}, 0))]
    result = run_job(_settings(tmp_path), steps=steps)
    assert (result.status, result.exit_code, result.api_calls) == ("success", 0, 2)
    [(status, counts, calls, durations, error, finished)] = _run_log(tmp_path)
    assert status == "success" and error is None and finished is not None
    assert json.loads(counts) == {"stripe": {"customer": 3}, "score": {"accounts": 3}}
    assert json.loads(calls) == {"stripe": 2, "score": 0}
    assert set(json.loads(durations)) == {"stripe", "score"}


def test_failed_extract_skips_scoring_and_the_run_is_partial(tmp_path: Path) -> None:
    steps = [
        Step("stripe", _raises(StripeExtractError("stream invoices: GET /v1/invoices 400"))),
        Step("salesforce", _ok({"account": 1}, 1)),
        Step("score", _ok({}, 0)),
    ]
    result = run_job(_settings(tmp_path), steps=steps)
    assert result.status == "partial" and result.exit_code == 3
    assert [o.status for o in result.steps] == ["failed", "success", "skipped"]
    [(status, _c, _a, _d, error, _f)] = _run_log(tmp_path)
    assert status == "partial" and "GET /v1/invoices 400" in error


def test_only_step_failing_is_failure_budget_is_partial(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert run_job(s, steps=[Step("stripe", _raises(StripeExtractError("x")))]).exit_code == 1
    budget = [Step("salesforce", _raises(ApiBudgetExhaustedError("reserve reached")))]
    assert run_job(s, steps=budget).exit_code == 3


def test_missing_module_is_reported_not_a_success(tmp_path: Path) -> None:
    def missing(s: Any, con: Any, dry: bool) -> Any:
        raise ModuleNotFoundError("no", name="churn.pipelines.nothing_here")

    result = run_job(_settings(tmp_path), steps=[Step("score", missing), Step("x", _ok({}, 0))])
    assert result.status == "partial"
    assert "churn.pipelines.nothing_here" in (result.steps[0].error or "")


def test_second_run_while_locked_raises_lock_held(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with (
        run_lock(tmp_path / "w.duckdb.lock"),
        pytest.raises(LockHeldError, match="another churn run holds the lock"),
    ):
        run_job(s, steps=[Step("stripe", _ok({}, 0))])
    assert run_job(s, steps=[Step("stripe", _ok({}, 0))]).status == "success"


@pytest.mark.slow
def test_two_churn_runs_started_together_one_exits_75(tmp_path: Path) -> None:
    """Two real `churn run` processes: the one that finds the lock held says so and exits 75.

    The first holds the lock through a step that waits on its stdin (the test closes it
    when the second has answered), so the race has one outcome without sleeping on timing.
    """
    holder_code = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from churn.job.run import Step, run_job\n"
        "from churn.settings import load_settings\n"
        "def wait(s, con, dry):\n"
        "    print('holding', flush=True)\n"
        "    sys.stdin.read()  # until the test closes the pipe\n"
        "    return SimpleNamespace(counts={}, api_calls=0)\n"
        "print(run_job(load_settings(), steps=[Step('stripe', wait)]).status)\n"
    )
    env = {
        **os.environ,
        "CHURN_DB": str(tmp_path / "w.duckdb"),
        "PYTHONPATH": "src",
        # credentials of the right shape: `churn run` checks them before taking the lock
        "STRIPE_API_KEY": "sk_test_x",
        "SALESFORCE_INSTANCE_URL": "http://127.0.0.1:9",
        "SALESFORCE_SESSION_ID": "00Dx!session",
    }
    first = subprocess.Popen(
        [sys.executable, "-c", holder_code],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert first.stdin is not None and first.stdout is not None
    assert first.stdout.readline().strip() == "holding"
    second = subprocess.run(
        [sys.executable, "-m", "churn", "run"], env=env, capture_output=True, text=True,
        timeout=HANG,
    )  # fmt: skip
    first.stdin.close()  # the holder's step returns
    assert first.wait(timeout=HANG) == 0
    assert second.returncode == 75
    assert "another churn run holds the lock" in second.stderr
    assert first.stdout.read().strip() == "success"


def test_parse_every() -> None:
    assert parse_every("15m") == 900 and parse_every("30s") == 30 and parse_every("1h") == 3600
    with pytest.raises(Exception, match="--every"):
        parse_every("fifteen")


def test_schedule_stops_between_steps_when_asked(tmp_path: Path, monkeypatch: Any) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def first(s: Any, con: Any, dry: bool) -> Any:
        stop.set()  # a SIGTERM arriving during this step
        return SimpleNamespace(counts={}, api_calls=0)

    steps = (Step("stripe", first), Step("score", _ok({}, 0)))
    monkeypatch.setattr("churn.job.run.DEFAULT_STEPS", steps)
    import churn.job.scheduler as sched

    def fake_run_job(settings: Any, **kw: Any) -> Any:
        return run_job(settings, steps=steps, **kw)

    monkeypatch.setattr(sched, "run_job", fake_run_job)
    runs = schedule(
        _settings(tmp_path),
        every_seconds=3600,
        stop=stop,
        on_result=lambda r, e: seen.append(",".join(o.status for o in r.steps) if r else e or ""),
    )
    assert runs == 1
    assert seen == ["success,skipped"]


@pytest.mark.slow
def test_churn_schedule_stops_on_sigterm(tmp_path: Path) -> None:
    """A real `churn schedule`: after its first run it waits; SIGTERM ends it at once, cleanly."""
    import signal

    env = {
        **os.environ,
        "CHURN_DB": str(tmp_path / "w.duckdb"),
        "PYTHONPATH": "src",
        # Nothing listens on the discard port: the Stripe step fails fast, on loopback only.
        "STRIPE_API_KEY": "sk_test_x",
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        "STRIPE_MAX_RETRIES": "0",
        # a login of the right shape (checked before any work), unreachable the same way
        "SALESFORCE_INSTANCE_URL": "http://127.0.0.1:9",
        "SALESFORCE_SESSION_ID": "00Dx!session",
        "SALESFORCE_MAX_RETRIES": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "churn", "schedule", "--every", "1h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("run_"), line
    proc.send_signal(signal.SIGTERM)
    # It waits 1h for the next run: ending well before that is ending the wait at once
    # (no wall-clock bound of seconds, which a loaded machine breaks).
    assert proc.wait(timeout=HANG) == 0
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        rows = con.execute(
            "SELECT status, finished_at FROM run_log WHERE command = 'run'"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and rows[0][1] is not None


@pytest.mark.slow
@pytest.mark.faults
def test_a_killed_run_is_marked_interrupted_by_the_next(tmp_path: Path) -> None:
    """SIGKILL mid-step leaves run_log 'running'; the next run, holding the lock and the
    warehouse, marks it 'interrupted' (never 'success') and runs normally."""
    import signal

    holder_code = (
        "import sys\n"
        "from churn.job.run import Step, run_job\n"
        "from churn.settings import load_settings\n"
        "def hang(s, con, dry):\n"
        "    print('holding', flush=True)\n"
        "    sys.stdin.read()  # never closed: the test kills it here\n"
        "run_job(load_settings(), steps=[Step('stripe', hang)])\n"
    )
    env = {**os.environ, "CHURN_DB": str(tmp_path / "w.duckdb"), "PYTHONPATH": "src"}
    victim = subprocess.Popen([sys.executable, "-c", holder_code], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert victim.stdout is not None and victim.stdout.readline().strip() == "holding"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=HANG)
    result = run_job(_settings(tmp_path), steps=[Step("stripe", _ok({"objects": 1}, 1))])
    assert result.status == "success"
    rows = {r[0]: r[1:] for r in _run_log_status(tmp_path)}
    assert rows.pop(result.run_id) == ("success", None)
    [(status, error)] = rows.values()
    tally.record(kills=1, runs_healed=1)
    assert status == "interrupted" and "killed or crashed" in error


def _run_log_status(tmp_path: Path) -> list[tuple[Any, ...]]:
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        return con.execute("SELECT run_id, status, error FROM run_log").fetchall()
    finally:
        con.close()


def test_step_notes_reach_the_result_and_run_log(tmp_path: Path) -> None:
    def noted(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        note = "seat signals: 3 accounts skipped: 1 usage sample in the 30-day window"
        return SimpleNamespace(counts={"seat_usage_too_few_samples": 3}, api_calls=0, notes=[note])

    steps = [Step("usage", _ok({"rows": 9}, 0)), Step("score", noted)]
    result = run_job(_settings(tmp_path), steps=steps)
    assert result.status == "success"
    assert result.notes == {
        "score": ("seat signals: 3 accounts skipped: 1 usage sample in the 30-day window",)
    }
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        [(notes, counts)] = con.execute("SELECT notes, counts FROM run_log").fetchall()
    finally:
        con.close()
    # Only steps with notes appear; the counts beside them keep the number per reason.
    assert json.loads(notes) == {"score": [result.notes["score"][0]]}
    assert json.loads(counts)["score"] == {"seat_usage_too_few_samples": 3}


def test_a_run_without_notes_logs_an_empty_object(tmp_path: Path) -> None:
    run_job(_settings(tmp_path), steps=[Step("stripe", _ok({"customer": 1}, 1))])
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        assert con.execute("SELECT notes FROM run_log").fetchall() == [("{}",)]
    finally:
        con.close()
