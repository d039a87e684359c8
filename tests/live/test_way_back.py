"""Issue 17, a way back: `churn push --close-open-tasks` (with a dry run) and `churn backup`.

Before: neither command existed; nothing closed the service's open Tasks, and nothing
copied the DuckDB file that holds ``push_state``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.errors import LockHeldError
from churn.job.backup import backup
from churn.job.run import lock_path_for, run_lock
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import load_settings

EXT = "Churn_Episode_Key__c"


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server() as running:
        yield running


def _state(con: duckdb.DuckDBPyConnection, key: str, status: str, sf_id: str | None) -> None:
    fields = {EXT: key, "Status": "Not Started", "Description": "Card expires soon."}
    when = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)  # naive UTC, as stored
    con.execute(
        "INSERT INTO push_state (sobject, record_key, fields, pushed_at, status, first_seen_at,"
        " sf_id, idempotency_key) VALUES ('Task', ?, ?, ?, ?, ?, ?, 'k-' || ?)",
        [key, json.dumps(fields), when, status, when, sf_id, key],
    )


def test_close_open_tasks_closes_only_the_services_open_ones_with_a_dry_run_first(
    sf: RunningSalesforce, tmp_path: Path
) -> None:
    [account] = sf.seed("Account", [{"Name": "Acme"}])
    open_a, open_b, closed, theirs = sf.seed(
        "Task",
        [
            {EXT: "e_a", "WhatId": account, "Status": "Not Started", "Subject": "a"},
            {EXT: "e_b", "WhatId": account, "Status": "In Progress", "Subject": "b"},
            {EXT: "e_c", "WhatId": account, "Status": "Completed", "Subject": "c"},
            {"WhatId": account, "Status": "Not Started", "Subject": "a CSM's own"},
        ],
    )
    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    _state(con, "e_a", "open", open_a)
    _state(con, "e_b", "open", open_b)
    _state(con, "e_c", "closed", closed)
    con.close()
    env = {**sf.settings_env(), "CHURN_DB": str(db)}
    dry = CliRunner().invoke(app, ["push", "--close-open-tasks", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "2 close task" in dry.output
    assert not [m for m, _ in sf.request_log if m in ("PATCH", "POST")]
    done = CliRunner().invoke(app, ["push", "--close-open-tasks"], env=env)
    assert done.exit_code == 0, done.output
    tasks = sf.records["Task"]
    assert tasks[open_a]["Status"] == tasks[open_b]["Status"] == "Completed"
    assert "closed by an operator" in tasks[open_a]["Description"]
    assert tasks[theirs]["Status"] == "Not Started"  # not the service's: untouched
    con = warehouse.connect(db)
    try:
        statuses = dict(con.execute("SELECT record_key, status FROM push_state").fetchall())
    finally:
        con.close()
    assert statuses == {"e_a": "closed", "e_b": "closed", "e_c": "closed"}
    again = CliRunner().invoke(app, ["push", "--close-open-tasks"], env=env)
    assert again.exit_code == 0 and "planned 0" in again.output


def test_backup_is_a_consistent_copy_taken_under_the_run_lock(tmp_path: Path) -> None:
    db = tmp_path / "data" / "churn.duckdb"
    settings = load_settings(env={"CHURN_DB": str(db)})
    con = warehouse.connect(db)
    _state(con, "e_a", "open", "00T1")
    con.close()
    copy = backup(settings, tmp_path / "backups" / "churn-1.duckdb")
    restored = duckdb.connect(str(copy), read_only=True)
    try:
        assert restored.execute("SELECT record_key FROM push_state").fetchall() == [("e_a",)]
    finally:
        restored.close()
    # A copy is a whole warehouse: it opens and migrates like the original.
    reopened = warehouse.connect(copy)
    try:
        assert reopened.execute("SELECT count(*) FROM push_state").fetchone() == (1,)
    finally:
        reopened.close()
    # Never over an existing copy; never while a run holds the lock.
    result = CliRunner().invoke(app, ["--db", str(db), "backup", str(copy)])
    assert result.exit_code == 2 and "exists" in result.output
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with run_lock(lock_path_for(settings)):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(LockHeldError):
            backup(settings, tmp_path / "backups" / "churn-2.duckdb")
    finally:
        release.set()
        thread.join()
