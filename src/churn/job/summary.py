"""The one-screen summary after `churn run`: steps, their notes, the accounts most at risk,
the push.

Reads marts tolerantly: a mart another part has not created yet is simply left out.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
from rich.console import Group
from rich.table import Table

from churn.job.run import JobResult
from churn.signals.money import to_decimal

# Per step, at most this many counts are shown; the run_log row keeps them all.
_MAX_COUNTS = 3


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def headline_counts(counts: dict[str, int]) -> str:
    """The counts worth a glance: Stripe's objects summed, zeros dropped, largest first."""
    merged: dict[str, int] = {}
    for key, value in counts.items():
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
    rows = con.execute(
        f"""
        SELECT h.account_id, a.name, h.payment_health, h.risk_score, h.known_churn,
               -- rows scored before the model's columns existed have only the rule-based one
               COALESCE(h.expected_mrr_at_risk_minor, h.mrr_at_risk_minor) AS at_risk,
               h.reporting_currency, h.top_reasons
        FROM account_health h {names}
        WHERE h.as_of = (SELECT max(as_of) FROM account_health)
          AND (h.known_churn OR h.risk_score > 0 OR h.payment_health <> 'Healthy')
        ORDER BY at_risk DESC NULLS LAST, h.known_churn DESC, h.risk_score DESC,
                 h.account_id
        LIMIT ?
        """,
        [limit],
    ).fetchall()
    out = []
    for account_id, name, health, risk, known, at_risk, currency, reasons in rows:
        parsed = json.loads(reasons) if isinstance(reasons, str) else (reasons or [])
        out.append(
            {
                "account": name or account_id,
                "payment_health": health,
                "risk_score": risk,
                "known_churn": bool(known),
                "mrr_at_risk": None if at_risk is None else to_decimal(int(at_risk), currency),
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


def render(result: JobResult, con: duckdb.DuckDBPyConnection | None) -> Group:
    steps = Table(title=f"churn run {result.run_id}: {result.status}", expand=False)
    for col in ("step", "status", "api calls", "seconds", "counts / error"):
        steps.add_column(col)
    for o in result.steps:
        detail = o.error or headline_counts(o.counts)
        colour = {"success": "green", "failed": "red"}.get(o.status, "yellow")
        steps.add_row(
            o.name, f"[{colour}]{o.status}[/]", str(o.api_calls), f"{o.seconds:.1f}", detail[:90]
        )
    parts: list[Table] = [steps]
    notes = notes_table(result)
    if notes is not None:
        parts.append(notes)
    if con is not None:
        risks = top_risks(con)
        if risks:
            t = Table(title="Accounts most at risk (MRR at risk first)")
            rows = [
                (
                    str(r["account"])[:20],
                    str(r["payment_health"]),
                    "cancelling" if r["known_churn"] else str(r["risk_score"]),
                    "" if r["mrr_at_risk"] is None else f"{r['mrr_at_risk']:,} {r['currency']}",
                    _cut(str(r["reason"]), 70),
                )
                for r in risks
            ]
            # One line per account on a wide terminal; the reason wraps on a narrow one.
            for col in ("account", "health", "risk", "MRR at risk"):
                t.add_column(col, no_wrap=True)
            t.add_column("why", ratio=1)
            for row in rows:
                t.add_row(*row)
            parts.append(t)
        push_counts = pushed(con, result.run_id)
        t = Table(title="Pushed to Salesforce by this run")
        t.add_column("action")
        t.add_column("records", justify="right")
        for action, n in push_counts.items():
            t.add_row(action, f"{n:,}")
        if not push_counts:
            t.add_row("(nothing)", "0")
        parts.append(t)
    return Group(*parts)
