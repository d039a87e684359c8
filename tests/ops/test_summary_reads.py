"""What a person reads after `churn run`: names, amounts in their currency, statuses that
agree with the row, whole words, the dry run's plan, rejections (issue 17)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console

from churn import warehouse
from churn.job.run import JobResult, StepOutcome
from churn.job.summary import render, shorten, top_risks
from churn.pipelines.push.report import plan_lines, write_plan
from churn.settings import Settings

T0 = datetime(2026, 11, 26, 12, 0)  # noqa: DTZ001 (naive UTC, as the warehouse stores it)
LONG = (
    "The $1,960 invoice for the Enterprise Analytics Platform plan is unpaid"
    " after 3 failed attempts (the customer must update their card: expired_card)."
)


def _world(path: Path, *, accounts: int = 3) -> None:
    con = warehouse.connect(path)
    names = [("001A", "Acme"), ("001B", "Globex"), ("001C", "Initech")]
    names += [(f"001X{i:03d}", f"Extra {i:03d}") for i in range(accounts - 3)]
    con.executemany(
        "INSERT INTO core_accounts (account_id, name, owner_id, system_modstamp) VALUES (?,?,?,?)",
        [(a, n, "005", T0) for a, n in names],
    )
    con.execute(
        "INSERT INTO core_customers (customer_id, name, livemode, is_deleted)"
        " VALUES ('cus_Q1', 'Unlinked Ltd', false, false)"
    )
    health = [
        ("001A", "Failed", 45, False, None, 196_000, "USD", [LONG]),
        ("001B", "Healthy", 0, True, T0 + timedelta(days=5), 990_000, "USD",
         ["Pro plan (40 seats, MRR $9,900) cancels on 2026-12-01, in 5 days."]),
        ("cus_Q1", "At Risk", 30, False, None, 5_000, "EUR", ["The Visa card ending 4242 expires"]),
    ]  # fmt: skip
    for a, h, r, k, eff, m, c, why in health:
        con.execute(
            "INSERT INTO account_health (account_id, as_of, payment_health, risk_score,"
            " known_churn, churn_effective_at, reporting_currency, mrr_at_risk_minor,"
            " subscription_count, top_reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            [a, T0, h, r, k, eff, c, m, json.dumps(why)],
        )
    con.execute(
        "INSERT INTO run_log (run_id, command, started_at, finished_at, status)"
        " VALUES ('run_dry', 'run --dry-run', ?, ?, 'success')",
        [T0, T0 + timedelta(minutes=5)],
    )
    # what Salesforce holds: the last push of Acme's fields
    con.execute(
        "INSERT INTO push_state (sobject, record_key, fields, pushed_at, idempotency_key)"
        " VALUES ('Account', '001A', ?, ?, 'k0')",
        [
            json.dumps({"Payment_Health__c": "Healthy", "Churn_Risk__c": "12"}),
            T0 - timedelta(days=1),
        ],
    )
    plan = [("001A", "update_account", {"Payment_Health__c": "Failed", "Churn_Risk__c": 45,
                                        "Total_MRR__c": 1960.0})]  # fmt: skip
    plan += [(a, "update_account", {"Churn_Risk__c": 10}) for a, _ in names[1:]]
    plan += [("payment_failure:in_1", "create_task",
              {"Churn_Episode_Key__c": "payment_failure:in_1", "WhatId": "001A",
               "Subject": "Payment failed: " + LONG})]  # fmt: skip
    for i, (key, action, fields) in enumerate(plan):
        con.execute(
            "INSERT INTO push_plan (run_id, planned_at, dry_run, idempotency_key, sobject,"
            " record_key, action, fields) VALUES ('push-1', ?, true, ?, ?, ?, ?, ?)",
            [T0 + timedelta(minutes=4), f"k{i}", "Task" if action.endswith("task") else "Account",
             key, action, json.dumps(fields)],
        )  # fmt: skip
    con.close()


def _text(db: Path, result: JobResult, width: int = 100, **kw: int) -> str:
    con = warehouse.connect(db, read_only=True)
    try:
        console = Console(record=True, width=width)
        console.print(render(result, con, Settings(db=db), **kw))
        return console.export_text()
    finally:
        con.close()


def test_the_dry_run_summary_shows_the_plan_with_names_and_old_to_new_values(
    tmp_path: Path,
) -> None:
    """Before: 'Pushed to Salesforce by this run: (nothing) 0' while the push step had
    planned every change (a dry run writes push_plan, never push_log)."""
    db = tmp_path / "w.duckdb"
    _world(db, accounts=30)
    step = StepOutcome("push", "success", counts={"planned": 31, "planned_update_account": 30})
    text = _text(db, JobResult("run_dry", "success", [step], 1.0, dry_run=True), plan_limit=5)
    assert "(nothing)" not in text
    assert "update_account 30" in text and "create_task 1" in text
    assert "Acme" in text and "Payment Health Healthy → Failed" in text
    assert "Churn Risk Score 12 → 45" in text and "Total MRR — → $1,960" in text
    assert "... and 25 more" in text and "--format csv|json" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "001A" not in text, "names, not Ids"


def test_the_plan_exports_every_change_as_csv_and_json(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _world(db, accounts=30)
    con = warehouse.connect(db, read_only=True)
    lines = plan_lines(con, Settings(db=db), "push-1")
    con.close()
    assert len(lines) == 3 + 29 + 1  # Acme's three fields, one each for the others, a Task
    buf = io.StringIO()
    write_plan(lines, "csv", buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    acme = [r for r in rows if r["account"] == "Acme" and r["field"] == "Payment Health"]
    assert acme == [
        {"action": "update_account", "sobject": "Account", "record": "001A",
         "account_id": "001A", "account": "Acme", "field": "Payment Health",
         "old": "Healthy", "new": "Failed"}
    ]  # fmt: skip
    task = [r for r in rows if r["action"] == "create_task"]
    assert task[0]["account"] == "Acme" and task[0]["new"].startswith("Payment failed: The $1,960")
    buf = io.StringIO()
    write_plan(lines, "json", buf)
    assert len(json.loads(buf.getvalue())) == len(lines)


def test_most_at_risk_rows_read_as_their_status_with_names_amounts_and_whole_words(
    tmp_path: Path,
) -> None:
    """Before: a scheduled cancellation read 'Healthy | cancelling', an unlinked customer
    showed its id, amounts read '9900.00 USD', and reasons were cut at 70 characters
    mid-word."""
    db = tmp_path / "w.duckdb"
    _world(db)
    con = warehouse.connect(db, read_only=True)
    risks = {r["account"]: r for r in top_risks(con)}
    con.close()
    assert risks["Globex"]["status"] == "Cancels 2026-12-01"
    assert risks["Acme"]["status"] == "Failed"
    assert risks["Unlinked Ltd"]["status"] == "At Risk"
    text = _text(db, JobResult("run_dry", "success", [], 1.0))
    globex = next(line for line in text.splitlines() if "Globex" in line)
    assert "Healthy" not in globex and "Cancels 2026-12-01" in globex
    assert "$9,900" in text and "€50" in text and "cus_Q1" not in text
    # the long reason is whole: wrapped, not cut at 70 characters mid-word
    flat = " ".join(text.split())
    assert "expired_card" in flat.replace("│", " ").replace("  ", " ") or "…" in flat
    assert "Enterprise Analy…" not in flat


def test_rejections_are_always_shown(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _world(db)
    con = warehouse.connect(db)
    con.execute("UPDATE run_log SET command = 'run' WHERE run_id = 'run_dry'")
    con.execute(
        "INSERT INTO push_log (run_id, idempotency_key, sobject, record_key, action, transport,"
        " success, error_code, error_message, logged_at) VALUES ('p', 'k', 'Account', '001B',"
        " 'update_account', 'collections', false, 'FIELD_CUSTOM_VALIDATION_EXCEPTION',"
        " 'Risk must be set', ?)",
        [T0 + timedelta(minutes=2)],
    )
    con.close()
    text = _text(db, JobResult("run_dry", "partial", [], 1.0))
    assert "Rejected by Salesforce: FIELD_CUSTOM_VALIDATION_EXCEPTION 1" in text
    assert "Globex" in text.split("Rejected by Salesforce")[1]
    con = warehouse.connect(db)
    con.execute("DELETE FROM push_log")
    con.close()
    assert "Rejected by Salesforce: none" in _text(db, JobResult("run_dry", "success", [], 1.0))


def test_shorten_cuts_at_a_word_with_an_ellipsis() -> None:
    text = "Pro plan (40 seats, MRR $1,960) cancels on 2026-03-01, in 14 days."
    assert shorten(text, 200) == text
    assert shorten(text, 40) == "Pro plan (40 seats, MRR $1,960) cancels…"
    assert len(shorten(text, 40)) <= 40


def test_push_dry_run_prints_names_and_values_and_exports_everything(tmp_path: Path) -> None:
    """Before: one table row per record with its Id and raw field=value pairs (20,423 lines
    on the demo), no names, no old values, no export."""
    from typer.testing import CliRunner

    from churn.cli import app

    db = tmp_path / "w.duckdb"
    _world(db, accounts=40)
    con = warehouse.connect(db)
    con.execute(
        "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, known_churn,"
        " reporting_currency, total_mrr_minor, mrr_at_risk_minor, subscription_count,"
        " top_reasons) SELECT account_id, ?, 'Healthy', 7, false, 'USD', 4900, 343, 1, '[]'"
        " FROM core_accounts WHERE account_id LIKE '001X%'",
        [T0],
    )
    con.close()
    runner = CliRunner()
    args = ["--db", str(db), "push", "--dry-run", "--limit", "5"]
    table = runner.invoke(app, args, env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    assert "update_account 39" in table.output and "... and 34 more" in table.output
    flat = " ".join(table.output.replace("│", " ").split())
    assert "Extra 000" in flat and "Churn Risk Score — → 7" in flat and "→ $49" in flat
    assert "001X000" not in table.output
    export = runner.invoke(app, [*args, "--format", "json"])
    assert export.exit_code == 0
    rows = json.loads(export.stdout)
    assert {r["account"] for r in rows if r["action"] == "update_account"} >= {
        f"Extra {i:03d}" for i in range(37)
    }
