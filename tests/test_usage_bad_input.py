"""Bad usage input (issue 15): kept out with a reason, counted, never stopping the rest."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb

from churn.job import run as job_run
from churn.job.run import Step, run_job
from churn.pipelines.usage import FILE_STREAM, UNKNOWN_ACCOUNT, load_usage
from churn.settings import Settings
from churn.warehouse import connect


def _settings(tmp_path: Path, folder: Path) -> Settings:
    return Settings(db=tmp_path / "w.duckdb").with_overrides(usage={"folder": folder})


def _feed(tmp_path: Path) -> Path:
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "a.csv").write_text("account_id,day,active_seats\n001A,2026-01-01,10\n")
    # the seats column is missing: the whole file is unusable
    (feed / "b.csv").write_text("account_id,day\n001B,2026-01-01\n")
    (feed / "c.csv").write_text("customer_id,day,active_seats\ncus_1,2026-01-02,4\n")
    return feed


def test_a_file_missing_a_column_is_quarantined_and_the_others_load(tmp_path: Path) -> None:
    """Issue 15: one usage file missing a column stopped every usage file (ExtractError)."""
    feed = _feed(tmp_path)
    settings = _settings(tmp_path, feed)
    con = connect(settings.db)
    try:
        result = load_usage(settings, con)
        assert result.counts["files"] == 2 and result.counts["files_quarantined"] == 1
        rows = con.execute("SELECT account_id FROM core_usage ORDER BY 1").fetchall()
        assert rows == [("001A",), ("cus_1",)]
        bad = con.execute("SELECT source, stream, object_id, reason FROM quarantine").fetchall()
        assert len(bad) == 1 and bad[0][:3] == ("usage", FILE_STREAM, "b.csv")
        assert "active_seats" in bad[0][3] and str(tmp_path) not in bad[0][3]
        # unchanged, it is not read again; fixed, it loads and leaves quarantine
        assert load_usage(settings, con).counts["files_unchanged"] == 3
        (feed / "b.csv").write_text("account_id,day,active_seats\n001B,2026-01-01,2\n")
        assert load_usage(settings, con).counts["files"] == 1
        assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM core_usage").fetchone() == (3,)
    finally:
        con.close()


def test_a_bad_usage_file_leaves_scoring_and_the_push_going(tmp_path: Path) -> None:
    """Issue 15: the usage step failed, so scoring and the push were skipped for every
    account (exit 3). Now the step succeeds, says what it kept out, and the run goes on."""
    settings = _settings(tmp_path, _feed(tmp_path))
    pushed: list[bool] = []

    def push(s: Settings, c: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        pushed.append(True)
        return SimpleNamespace(counts={}, api_calls=0)

    steps = [Step("usage", job_run._usage), Step("score", job_run._score), Step("push", push)]
    result = run_job(settings, steps=steps)
    assert result.status == "success" and result.exit_code == 0, result.steps
    assert result.steps[0].counts["files_quarantined"] == 1
    assert pushed == [True]
    assert result.steps[1].counts["quarantined_usage_usage_file"] == 1
    assert any("usage usage_file" in n and "kept out" in n for n in result.steps[1].notes)


def _known(con: duckdb.DuckDBPyConnection, *ids: str) -> None:
    for i in ids:
        if i.startswith("cus_"):
            con.execute("INSERT INTO core_customers (customer_id) VALUES (?)", [i])
        else:
            con.execute("INSERT INTO core_accounts (account_id) VALUES (?)", [i])


def test_usage_for_an_unknown_account_is_kept_out_until_it_is_known(tmp_path: Path) -> None:
    """Issue 15: usage rows for unknown customers were accepted silently."""
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "a.csv").write_text(
        "account_id,day,active_seats\n"
        "001A,2026-01-01,10\n"
        "001ZZZ,2026-01-01,3\n"
        "cus_nobody,2026-01-02,5\n"
    )
    settings = _settings(tmp_path, feed)
    con = connect(settings.db)
    try:
        _known(con, "001A", "cus_1")
        result = load_usage(settings, con)
        assert result.counts["rows"] == 1 and result.counts["quarantined"] == 2
        assert con.execute("SELECT account_id FROM core_usage").fetchall() == [("001A",)]
        bad = con.execute("SELECT object_id, reason FROM quarantine ORDER BY 1").fetchall()
        assert bad == [("a.csv:3", UNKNOWN_ACCOUNT), ("a.csv:4", UNKNOWN_ACCOUNT)]
        # the Account arrives later (a new Salesforce record): its rows are released
        _known(con, "001ZZZ")
        later = load_usage(settings, con)
        assert later.counts["released_known_account"] == 1
        rows = con.execute(
            "SELECT account_id, CAST(day AS VARCHAR), active_seats, source FROM core_usage"
            " ORDER BY 1"
        ).fetchall()
        assert rows == [("001A", "2026-01-01", 10, "a.csv"), ("001ZZZ", "2026-01-01", 3, "a.csv")]
        left = con.execute("SELECT object_id FROM quarantine").fetchall()
        assert left == [("a.csv:4",)]
    finally:
        con.close()


def test_with_nothing_known_yet_every_row_is_taken(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "a.csv").write_text("account_id,day,active_seats\n001A,2026-01-01,10\n")
    settings = _settings(tmp_path, feed)
    con = connect(settings.db)
    try:
        assert load_usage(settings, con).counts["rows"] == 1
    finally:
        con.close()
