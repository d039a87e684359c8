"""`churn run` when something outside it fails: one line, the right exit code, run_log closed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.job import run as job_run
from churn.job.run import Step
from churn.settings import load_settings

CREDENTIALS = {
    "STRIPE_API_KEY": "sk_test_abc123",
    # Nothing listens on the discard port: Salesforce is unreachable, on loopback only.
    "SALESFORCE_INSTANCE_URL": "http://127.0.0.1:9",
    "SALESFORCE_SESSION_ID": "00Dx0000000!session",
    "SALESFORCE_MAX_RETRIES": "0",
}


def test_salesforce_unreachable_at_the_start_is_one_line_and_closes_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: an uncaught ConnectionError (traceback, exit 1) left run_log 'running'."""
    real = job_run.run_job

    def only_salesforce(settings: Any, **kw: Any) -> Any:
        return real(settings, steps=[Step("salesforce", job_run._salesforce)], **kw)

    monkeypatch.setattr(job_run, "run_job", only_salesforce)
    db = tmp_path / "w.duckdb"
    result = CliRunner().invoke(app, ["run"], env={"CHURN_DB": str(db), **CREDENTIALS})
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    con = warehouse.connect(db)
    try:
        rows = con.execute("SELECT status, error, finished_at FROM run_log").fetchall()
    finally:
        con.close()
    assert len(rows) == 1
    status, error, finished = rows[0]
    assert status == "failed" and finished is not None
    assert "salesforce unreachable" in error and "\n" not in error


def test_an_unexpected_error_closes_the_run_log_row(tmp_path: Path) -> None:
    def broken(s: Any, con: Any, dry: bool) -> Any:
        raise ValueError("Ada Lovelace <ada@example.com> wrote this")

    settings = load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb")})
    with pytest.raises(ValueError):
        job_run.run_job(settings, steps=[Step("score", broken)])
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        rows = con.execute("SELECT status, error FROM run_log").fetchall()
    finally:
        con.close()
    assert rows[0][0] == "failed" and "ValueError" in rows[0][1] and "Ada" not in rows[0][1]


def test_a_reader_holding_the_file_makes_churn_run_exit_75(tmp_path: Path) -> None:
    """Issue 15: exit 1 (cron counts a failure) where the warehouse is only busy.

    DuckDB: one process may write a file, or many read it; a reader in another process
    (a notebook, the dashboard on the file itself) keeps `churn run` out until it closes.
    EX_TEMPFAIL (75) is what the run lock answers too: try again later.
    """
    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, duckdb\n"
         "con = duckdb.connect(sys.argv[1], read_only=True)\n"
         "print('holding', flush=True)\n"
         "sys.stdin.readline()\n", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        result = CliRunner().invoke(app, ["run"], env={"CHURN_DB": str(db), **CREDENTIALS})
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=600)
    assert result.exit_code == 75, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "open in another process" in lines[0]
