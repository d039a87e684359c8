"""The one-screen summary after `churn run`: steps, their notes, the accounts most at risk,
the push (or, on a dry run, the plan) and its rejections.

Readable at 100 columns: Account names, not Ids; amounts in their currency; reasons cut
at a word, never mid-word. Reads marts tolerantly: a mart another part has not created
yet is simply left out.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
from rich.console import Group
from rich.table import Table

from churn.job.run import JobResult
from churn.pipelines.push.report import ACTIONS, PlanLine, grouped
from churn.settings import Settings
from churn.signals.money import display, to_decimal

# Per step, at most this many counts are shown; the run_log row keeps them all.
_MAX_COUNTS = 3
#: A reason in the summary is cut (at a word) past this many characters; the rest wraps.
REASON_WIDTH = 140
#: Records shown per action of a planned push; the export has them all.
PLAN_LIMIT = 10
#: Actions of the pushed table named for people (others show their action name).
_PUSHED_LABELS = {"log_timeline": "timeline records written (plan changes)"}
#: The push's counts of what the per-run cap left for later runs, as the table names them.
_DEFERRED = (
    ("deferred_tasks", "new Tasks left for later runs (the cap)"),
    ("deferred_cases", "new Cases left for later runs (the cap)"),
)


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def shorten(text: str, width: int) -> str:
    """``text`` cut at the last word that fits in ``width`` characters, with an ellipsis;
    never mid-word (a single word longer than ``width`` is cut, it has no other place)."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    head = text[: width - 1]
    cut = head.rfind(" ")
    if text[width - 1] != " " and cut > width // 2:  # the last word does not fit whole
        head = head[:cut]
    return head.rstrip(" ,;:(-") + "…"


def status_of(payment_health: str | None, known_churn: bool, effective: Any) -> str:
    """What the row's status column says. A scheduled cancellation reads as one (with its
    date), not as Payment Health ``Healthy``; a payment problem beside it is named too."""
    parts = []
    if known_churn:
        day = effective.date().isoformat() if hasattr(effective, "date") else None
        parts.append(f"Cancels {day}" if day else "Cancelling")
    if payment_health and (payment_health != "Healthy" or not known_churn):
        parts.append(str(payment_health) if not parts else f"payment {payment_health}")
    return ", ".join(parts)


#: Counts that are gauges, not work done: `churn status` shows them, the step's line not.
_NOT_HEADLINES = frozenset({"api_remaining"})


def headline_counts(counts: dict[str, int]) -> str:
    """The counts worth a glance: Stripe's objects summed, zeros dropped, largest first."""
    merged: dict[str, int] = {}
    for key, value in counts.items():
        if key in _NOT_HEADLINES:
            continue
        name = "objects" if key.startswith("objects_") else key
        merged[name] = merged.get(name, 0) + int(value)
    shown = sorted(((k, v) for k, v in merged.items() if v), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k}={v:,}" for k, v in shown[:_MAX_COUNTS])
    return text + (", …" if len(shown) > _MAX_COUNTS else "") if text else "nothing new"


def top_risks(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[dict[str, Any]]:
    """The accounts with the most MRR at risk at the latest scoring, then the highest risk.

    Money first because that is how a customer-success team triages; an account with a
    scheduled cancellation or a failed payment has its whole MRR at risk.
    """
    if not _table_exists(con, "account_health"):
        return []
    names = (
        "LEFT JOIN core_accounts a ON a.account_id = h.account_id"
        if _table_exists(con, "core_accounts")
        else "LEFT JOIN (SELECT NULL AS account_id, NULL AS name) a ON false"
    )
    # an account not linked to Salesforce is keyed by its Stripe customer: show its name
    customers = (
        "LEFT JOIN core_customers c ON c.customer_id = h.account_id"
        if _table_exists(con, "core_customers")
        else "LEFT JOIN (SELECT NULL AS customer_id, NULL AS name) c ON false"
    )
    rows = con.execute(
        f"""
        SELECT h.account_id, coalesce(a.name, c.name), h.payment_health, h.risk_score,
               h.known_churn, h.churn_effective_at,
               -- rows scored before the model's columns existed have only the rule-based one
               COALESCE(h.expected_mrr_at_risk_minor, h.mrr_at_risk_minor) AS at_risk,
               h.reporting_currency, h.top_reasons
        FROM account_health h {names} {customers}
        WHERE h.as_of = (SELECT max(as_of) FROM account_health)
          AND (h.known_churn OR h.risk_score > 0 OR h.payment_health <> 'Healthy')
        ORDER BY at_risk DESC NULLS LAST, h.known_churn DESC, h.risk_score DESC,
                 h.account_id
        LIMIT ?
        """,
        [limit],
    ).fetchall()
    out = []
    for account_id, name, health, risk, known, effective, at_risk, currency, reasons in rows:
        parsed = json.loads(reasons) if isinstance(reasons, str) else (reasons or [])
        out.append(
            {
                "account": name or account_id,
                "payment_health": health,
                "risk_score": risk,
                "known_churn": bool(known),
                "status": status_of(health, bool(known), effective),
                "mrr_at_risk": None if at_risk is None else to_decimal(int(at_risk), currency),
                "mrr_at_risk_text": display(None if at_risk is None else int(at_risk), currency),
                "currency": currency,
                "reason": parsed[0] if parsed else "",
            }
        )
    return out


def pushed(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Records Salesforce accepted during the job ``run_id``, by action."""
    if not (_table_exists(con, "push_log") and _table_exists(con, "run_log")):
        return {}
    rows = con.execute(
        """
        SELECT p.action, count(*) FROM push_log p, run_log r
        WHERE r.run_id = ? AND p.success
          AND p.logged_at >= r.started_at AND p.logged_at <= coalesce(r.finished_at, now())
        GROUP BY p.action ORDER BY p.action
        """,
        [run_id],
    ).fetchall()
    return {str(a): int(n) for a, n in rows}


#: The steps that call Salesforce (their api_calls are Salesforce's).
SALESFORCE_STEPS = ("salesforce", "push")


def case_line(result: JobResult, push_counts: dict[str, int]) -> str:
    """Cases opened and closed by this run, and its Salesforce calls: one short clause."""
    calls = sum(o.api_calls for o in result.steps if o.name in SALESFORCE_STEPS)
    opened, closed = push_counts.get("create_case", 0), push_counts.get("close_case", 0)
    return f"Cases opened {opened:,}, closed {closed:,}; Salesforce calls {calls:,}"


def notes_table(result: JobResult) -> Table | None:
    """What the steps could not use and why (their notes), or None when there is nothing.

    Also in ``run_log.notes``; a note holds counts and reasons, never an account.
    """
    rows = [(step, note) for step, notes in result.notes.items() for note in notes]
    if not rows:
        return None
    t = Table(title="Needs attention (also in run_log.notes)")
    t.add_column("step", no_wrap=True)
    t.add_column("note", ratio=1)
    for step, note in rows:
        t.add_row(step, note)
    return t


def run_window(
    con: duckdb.DuckDBPyConnection, run_id: str
) -> tuple[datetime | None, datetime | None]:
    """When the job ``run_id`` started and finished (``run_log``)."""
    if not _table_exists(con, "run_log"):
        return None, None
    row = con.execute(
        "SELECT started_at, coalesce(finished_at, now()::TIMESTAMP) FROM run_log WHERE run_id = ?",
        [run_id],
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def rejections(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """Records Salesforce refused during the job ``run_id`` (their latest answer each), with
    the Account's name, the error code and Salesforce's message."""
    if not (_table_exists(con, "push_log") and _table_exists(con, "run_log")):
        return []
    start, end = run_window(con, run_id)
    if start is None:
        return []
    rows = con.execute(
        """
        SELECT p.action, p.record_key, coalesce(a.name, p.record_key), p.error_code,
               p.error_message
        FROM push_log p
        LEFT JOIN push_state s ON s.sobject = p.sobject AND s.record_key = p.record_key
        LEFT JOIN core_accounts a ON a.account_id = CASE WHEN p.sobject = 'Account'
            THEN p.record_key ELSE coalesce(json_extract_string(p.fields, '$.WhatId'),
                                            json_extract_string(s.fields, '$.WhatId')) END
        WHERE p.logged_at >= ? AND p.logged_at <= ?
        QUALIFY row_number() OVER (PARTITION BY p.sobject, p.record_key
                                   ORDER BY p.logged_at DESC) = 1 AND NOT p.success
        ORDER BY p.error_code, lower(coalesce(a.name, p.record_key))
        """,
        [start, end],
    ).fetchall()
    return [
        {"action": a, "record": r, "account": n, "error_code": c or "?", "message": m or ""}
        for a, r, n, c, m in rows
    ]


def plan_table(
    lines: list[PlanLine], title: str, limit: int = PLAN_LIMIT, export_hint: str | None = None
) -> Table:
    """The plan grouped by action: a count per action, ``limit`` records each (one row per
    record, its fields old → new), and "... and N more"."""
    groups = grouped(lines)
    summary = ", ".join(f"{action} {len(groups[action]):,}" for action in groups) or "nothing"
    t = Table(title=f"{title}: {summary}", title_justify="left", show_lines=False)
    t.add_column("action", no_wrap=True)
    t.add_column("account", max_width=28, overflow="ellipsis", no_wrap=True)
    t.add_column("change (old → new)", ratio=1)
    order = [a for a in ACTIONS if a in groups] + [a for a in groups if a not in ACTIONS]
    for action in order:
        records = groups[action]
        for record in records[:limit]:
            first = record[0]
            if first.sobject == "Account":
                change = "; ".join(f"{x.field} {x.old} → {x.new}" for x in record)
            elif action == "create_task":
                change = f"Task: {first.new}"
            elif action == "close_task":
                change = f"close Task: {first.old}"
            elif action == "create_case":
                change = f"Case: {first.new}"
            elif action == "close_case":
                change = f"close Case: {first.old}"
            elif action == "log_timeline":
                change = f"timeline: {first.new}"
            else:
                change = "; ".join(f"{x.field} {x.old} → {x.new}" for x in record)
            t.add_row(action, first.account, shorten(change, REASON_WIDTH))
        if len(records) > limit:
            hint = f" ({export_hint})" if export_hint else ""
            t.add_row("", f"... and {len(records) - limit:,} more", hint.strip(" ()"))
    if not lines:
        t.add_row("(nothing)", "", "Salesforce already holds every value")
    return t


def rejections_table(rows: list[dict[str, Any]], limit: int = PLAN_LIMIT) -> Table:
    """Always shown after a push: 'none' when Salesforce accepted everything."""
    codes: dict[str, int] = {}
    for r in rows:
        codes[r["error_code"]] = codes.get(r["error_code"], 0) + 1
    head = ", ".join(f"{c} {n:,}" for c, n in codes.items()) or "none"
    t = Table(title=f"Rejected by Salesforce: {head}", title_justify="left")
    t.add_column("account", max_width=28, overflow="ellipsis", no_wrap=True)
    t.add_column("action", no_wrap=True)
    t.add_column("error", ratio=1)
    for r in rows[:limit]:
        t.add_row(r["account"], r["action"], shorten(f"{r['error_code']}: {r['message']}", 120))
    if len(rows) > limit:
        t.add_row(f"... and {len(rows) - limit:,} more", "", "push_log has them all")
    if not rows:
        t.add_row("(none)", "", "")
    return t


def render(
    result: JobResult,
    con: duckdb.DuckDBPyConnection | None,
    settings: Settings | None = None,
    *,
    plan_limit: int = PLAN_LIMIT,
) -> Group:
    steps = Table(title=f"churn run {result.run_id}: {result.status}", expand=False)
    for col in ("step", "status", "api calls", "seconds", "counts / error"):
        steps.add_column(col)
    for o in result.steps:
        detail = o.error or headline_counts(o.counts)
        colour = {"success": "green", "failed": "red"}.get(o.status, "yellow")
        steps.add_row(
            o.name,
            f"[{colour}]{o.status}[/]",
            str(o.api_calls),
            f"{o.seconds:.1f}",
            shorten(detail, 90),
        )
    parts: list[Table] = [steps]
    notes = notes_table(result)
    if notes is not None:
        parts.append(notes)
    if con is not None:
        risks = top_risks(con)
        if risks:
            t = Table(title="Accounts most at risk (MRR at risk first)")
            # One line per account on a wide terminal; the reason wraps on a narrow one.
            t.add_column("account", max_width=24, overflow="ellipsis", no_wrap=True)
            t.add_column("status", no_wrap=True)
            t.add_column("risk", justify="right", no_wrap=True)
            t.add_column("MRR at risk", justify="right", no_wrap=True)
            t.add_column("why", ratio=1)
            for r in risks:
                t.add_row(
                    str(r["account"]),
                    str(r["status"]),
                    str(r["risk_score"]),
                    "" if r["mrr_at_risk"] is None else str(r["mrr_at_risk_text"]),
                    shorten(str(r["reason"]), REASON_WIDTH),
                )
            parts.append(t)
        parts.extend(_push_parts(result, con, settings, plan_limit))
    return Group(*parts)


def _push_parts(
    result: JobResult,
    con: duckdb.DuckDBPyConnection,
    settings: Settings | None,
    plan_limit: int,
) -> list[Table]:
    """This run's pushed records, or on a dry run its plan; and the rejections."""
    from churn.pipelines.push.report import find_plan, plan_lines

    if result.dry_run:
        start, end = run_window(con, result.run_id)
        plan_id = find_plan(con, since=start, until=end) if start is not None else None
        if plan_id is None or settings is None:
            counts = {
                k.removeprefix("push.planned_"): v
                for k, v in result.counts.items()
                if k.startswith("push.planned_")
            }
            t = Table(title="Planned push (dry run: nothing written)")
            t.add_column("action")
            t.add_column("records", justify="right")
            for action, n in counts.items():
                t.add_row(action, f"{n:,}")
            if not counts:
                t.add_row("(nothing)", "0")
            return [t]
        lines = plan_lines(con, settings, plan_id)
        title = "Planned push (dry run: nothing written)"
        hint = "all of it: --format csv|json"
        return [plan_table(lines, title, plan_limit, hint)]
    push_counts = pushed(con, result.run_id)
    t = Table(title=f"Pushed to Salesforce by this run ({case_line(result, push_counts)})")
    t.add_column("action")
    t.add_column("records", justify="right")
    for action, n in push_counts.items():
        t.add_row(_PUSHED_LABELS.get(action, action), f"{n:,}")
    # New Tasks and Cases past PUSH_MAX_NEW_TASKS_PER_RUN wait for the next runs: an owner
    # reading this summary should know more are coming, not only what was sent.
    for key, label in _DEFERRED:
        if n := result.counts.get(f"push.{key}", 0):
            t.add_row(label, f"{n:,}")
    if not push_counts:
        t.add_row("(nothing)", "0")
    return [t, rejections_table(rejections(con, result.run_id))]
