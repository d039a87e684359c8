"""The one-screen summary: the accounts with the most money at risk, what this run pushed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console

from churn import warehouse
from churn.job.run import JobResult, StepOutcome
from churn.job.summary import headline_counts, pushed, render, top_risks

T0 = datetime(2026, 11, 26, 12, 0)  # noqa: DTZ001 (naive UTC, as the warehouse stores it)


def _world(path: Path) -> None:
    con = warehouse.connect(path)
    con.executemany(
        "INSERT INTO core_accounts (account_id, name, owner_id, system_modstamp) VALUES (?,?,?,?)",
        [("001A", "Acme", "005", T0), ("001B", "Globex", "005", T0), ("001C", "Calm Co", "005", T0)],
    )  # fmt: skip
    health = [
        # account, health, risk, known churn, MRR at risk (JPY has no minor unit), reasons
        ("001A", "Failed", 45, False, 120_000, "JPY", ["Invoice in_1 failed twice"]),
        ("001B", "Healthy", 0, True, 990_000, "JPY", ["Cancels on 2026-12-01"]),
        ("001C", "Healthy", 0, False, 0, "JPY", []),
    ]
    for a, h, r, k, m, c, why in health:
        con.execute(
            "INSERT INTO account_health (account_id, as_of, payment_health, risk_score,"
            " known_churn, reporting_currency, mrr_at_risk_minor, subscription_count,"
            " top_reasons) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
            [a, T0, h, r, k, c, m, json.dumps(why)],
        )
    runs = [("run_old", T0 - timedelta(hours=1), T0 - timedelta(minutes=50)),
            ("run_new", T0, T0 + timedelta(minutes=5))]  # fmt: skip
    for run_id, start, end in runs:
        con.execute(
            "INSERT INTO run_log (run_id, command, started_at, finished_at, status)"
            " VALUES (?, 'run', ?, ?, 'success')",
            [run_id, start, end],
        )
    logs = [(T0 - timedelta(minutes=55), "create_task", True),
            (T0 + timedelta(minutes=1), "update_account", True),
            (T0 + timedelta(minutes=1), "update_account", False),
            (T0 + timedelta(minutes=2), "close_task", True)]  # fmt: skip
    for at, action, ok in logs:
        con.execute(
            "INSERT INTO push_log (run_id, idempotency_key, sobject, record_key, action,"
            " transport, success, logged_at) VALUES ('p', 'k', 'Account', 'r', ?, 'collections', ?, ?)",
            [action, ok, at],
        )
    con.close()


def test_most_money_at_risk_first_healthy_left_out_and_pushes_of_this_run_only(
    tmp_path: Path,
) -> None:
    db = tmp_path / "w.duckdb"
    _world(db)
    con = warehouse.connect(db, read_only=True)
    risks = top_risks(con)
    assert [r["account"] for r in risks] == ["Globex", "Acme"]
    assert str(risks[0]["mrr_at_risk"]) == "990000" and risks[1]["reason"].startswith("Invoice")
    assert pushed(con, "run_new") == {"close_task": 1, "update_account": 1}
    assert pushed(con, "run_old") == {"create_task": 1}
    counts = {"objects_customer": 3, "objects_invoice": 9, "events": 0}
    step = StepOutcome("stripe", "success", counts=counts, api_calls=7, seconds=1.5)
    result = JobResult("run_new", "success", [step], 2.0)
    console = Console(record=True, width=120)
    console.print(render(result, con))
    text = console.export_text()
    con.close()
    assert "objects=12" in text and "events" not in text
    # a scheduled cancellation reads as one (not "Healthy | cancelling"); yen as yen
    assert "Globex" in text and "Cancelling" in text and "¥990,000" in text
    assert "Calm Co" not in text
    assert "close_task" in text and "create_task" not in text


def test_headline_counts_caps_the_list() -> None:
    assert headline_counts({}) == "nothing new"
    assert headline_counts({"a": 1, "b": 5, "c": 0, "d": 2, "e": 3, "f": 4}) == ("b=5, f=4, e=3, …")


def test_step_notes_are_shown_apart_and_only_when_there_are_some(tmp_path: Path) -> None:
    note = (
        "seat signals: 40 accounts skipped: 1 usage sample in the 30-day window (and no other"
        " in the last 92 days); seat signals need 2"
    )
    score = StepOutcome("score", "success", counts={"signal_events": 5}, notes=(note,))
    usage = StepOutcome("usage", "success", counts={"rows": 40})
    console = Console(record=True, width=200)
    console.print(render(JobResult("run_x", "success", [usage, score], 1.0), None))
    text = console.export_text()
    assert "Needs attention" in text and note in text
    assert text.index("Needs attention") > text.index("signal_events=5")
    quiet = Console(record=True, width=200)
    quiet.print(render(JobResult("run_y", "success", [usage], 1.0), None))
    assert "Needs attention" not in quiet.export_text()


def test_what_the_cap_left_for_later_runs_is_in_the_pushed_table(tmp_path: Path) -> None:
    """New Tasks and Cases past the per-run cap are counted beside what was pushed, so the
    summary says more are coming; none deferred, no such row."""
    db = tmp_path / "w.duckdb"
    _world(db)
    con = warehouse.connect(db, read_only=True)
    try:
        counts = {"sent": 1, "deferred_tasks": 8_189, "deferred_cases": 34}
        push = StepOutcome("push", "success", counts=counts, api_calls=3, seconds=1.0)
        console = Console(record=True, width=160)
        console.print(render(JobResult("run_new", "success", [push], 2.0), con))
        text = console.export_text()
        plain = Console(record=True, width=160)
        quiet = StepOutcome("push", "success", counts={"sent": 1}, api_calls=3, seconds=1.0)
        plain.print(render(JobResult("run_new", "success", [quiet], 2.0), con))
    finally:
        con.close()
    assert "new Tasks left for later runs (the cap)" in text and "8,189" in text
    assert "new Cases left for later runs (the cap)" in text
    assert "left for later runs" not in plain.export_text()
