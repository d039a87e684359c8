"""The one-screen summary after `churn run`: steps, the accounts most at risk, the push.

Reads marts tolerantly: a mart another part has not created yet is simply left out.
"""

from __future__ import annotations

from typing import Any

import duckdb
from rich.console import Group
from rich.table import Table

from churn.pipelines.job import JobResult


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def top_risks(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[tuple[Any, ...]]:
    """Accounts with the highest signal score as of the latest scoring, with the reason."""
    if not _table_exists(con, "signal_events"):
        return []
    return con.execute(
        """
        WITH latest AS (SELECT max(as_of) AS as_of FROM signal_events)
        SELECT account_id, max(score) AS score, arg_max(signal, score) AS signal,
               arg_max(reason, score) AS reason
        FROM signal_events JOIN latest USING (as_of)
        GROUP BY account_id ORDER BY score DESC, account_id LIMIT ?
        """,
        [limit],
    ).fetchall()


def pushed(con: duckdb.DuckDBPyConnection, run_id_prefix: str | None = None) -> dict[str, int]:
    """Successful push_log rows by action, since the last run started."""
    if not _table_exists(con, "push_log"):
        return {}
    rows = con.execute(
        """
        SELECT action, count(*) FROM push_log
        WHERE success AND logged_at >= (
            SELECT coalesce(max(started_at), TIMESTAMP '1970-01-01') FROM run_log
            WHERE command LIKE 'run%')
        GROUP BY action ORDER BY action
        """
    ).fetchall()
    return {str(a): int(n) for a, n in rows}


def render(result: JobResult, con: duckdb.DuckDBPyConnection | None) -> Group:
    steps = Table(title=f"churn run {result.run_id}: {result.status}", expand=False)
    for col in ("step", "status", "api calls", "seconds", "counts / error"):
        steps.add_column(col)
    for o in result.steps:
        detail = o.error or ", ".join(f"{k}={v}" for k, v in sorted(o.counts.items()))
        colour = {"success": "green", "failed": "red"}.get(o.status, "yellow")
        steps.add_row(
            o.name, f"[{colour}]{o.status}[/]", str(o.api_calls), f"{o.seconds:.1f}", detail[:90]
        )
    parts: list[Table] = [steps]
    if con is not None:
        risks = top_risks(con)
        if risks:
            t = Table(title="Accounts most at risk")
            for col in ("account", "score", "signal", "reason"):
                t.add_column(col)
            for account, score, signal, reason in risks:
                t.add_row(str(account), f"{float(score):.2f}", str(signal), str(reason)[:80])
            parts.append(t)
        push_counts = pushed(con)
        t = Table(title="Pushed to Salesforce this run")
        t.add_column("action")
        t.add_column("records")
        for action, n in push_counts.items():
            t.add_row(action, str(n))
        if not push_counts:
            t.add_row("(nothing)", "0")
        parts.append(t)
    return Group(*parts)
