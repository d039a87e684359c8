"""`churn status`: the last runs, how fresh each stream is, the API calls spent, rejections.

:func:`collect` reads ``run_log``, ``sync_state``, ``push_log`` and ``quarantine`` into
one plain dict (what ``churn status --format json`` prints); nothing here writes.
Counts, names of steps and streams, error classes and Salesforce's error codes only.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import duckdb

from churn.job.run import error_type_of

__all__ = ["collect"]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return value if isinstance(value, dict) else {}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def _runs(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    rows = con.execute(
        """
        SELECT run_id, command, started_at, finished_at, status, counts, api_calls,
               durations, error
        FROM run_log WHERE command LIKE 'run%'
        ORDER BY started_at DESC LIMIT ?
        """,
        [limit],
    ).fetchall()
    out = []
    for run_id, command, started, finished, status, counts, calls, durations, error in rows:
        steps = _json(durations)
        failed = {}
        for part in (error or "").split("; "):
            step, _, rest = part.partition(": ")
            if step and rest:
                failed[step] = error_type_of(part) or "error"
        step_counts = _json(counts)
        out.append(
            {
                "run_id": run_id,
                "command": command,
                "started_at": _iso(started),
                "status": status,
                "seconds": (finished - started).total_seconds() if finished else None,
                "steps": {
                    name: {"seconds": seconds, "error_type": failed.get(name)}
                    for name, seconds in steps.items()
                },
                "api_calls": {k: int(v) for k, v in _json(calls).items()},
                "rejections": int(_json(step_counts.get("push")).get("rejected", 0)),
            }
        )
    return out


def _streams(con: duckdb.DuckDBPyConnection, now: datetime) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT stream, cursor_ts, updated_at FROM sync_state ORDER BY stream"
    ).fetchall()
    return [
        {
            "stream": stream,
            "cursor_at": _iso(cursor_ts),
            "updated_at": _iso(updated),
            # freshness: when the stream last committed (its cursor is the data's own
            # time, which can be old for a table nobody edits)
            "age_hours": round((now - updated).total_seconds() / 3600, 1) if updated else None,
        }
        for stream, cursor_ts, updated in rows
    ]


def _api(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, Any]:
    """API calls the job spent over the last 24 hours, by system (a run's push step counts
    against Salesforce's budget)."""
    rows = con.execute(
        "SELECT api_calls FROM run_log WHERE command LIKE 'run%' AND started_at >= ?",
        [now - timedelta(hours=24)],
    ).fetchall()
    spent = {"stripe": 0, "salesforce": 0}
    remaining: int | None = None
    for (calls,) in rows:
        for step, n in _json(calls).items():
            system = "stripe" if step == "stripe" else "salesforce"
            if step in ("stripe", "salesforce", "push", "usage"):
                spent[system] += int(n or 0)
    latest = con.execute(
        "SELECT counts FROM run_log WHERE command LIKE 'run%' AND counts IS NOT NULL"
        " ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    if latest is not None:
        for step_counts in _json(latest[0]).values():
            value = _json(step_counts).get("api_remaining")
            if isinstance(value, int):
                remaining = value
    return {"calls_last_24h": spent, "salesforce_remaining": remaining}


def _rejections(con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, Any]:
    """Records whose latest answer from Salesforce is a rejection, by error code."""
    rows = con.execute(
        """
        SELECT error_code, count(*), max(logged_at) FROM (
          SELECT * FROM push_log
          QUALIFY row_number() OVER (PARTITION BY sobject, record_key
                                     ORDER BY logged_at DESC) = 1)
        WHERE NOT success GROUP BY error_code ORDER BY count(*) DESC, error_code
        """
    ).fetchall()
    by_code = {str(code or "?"): int(n) for code, n, _ in rows}
    last = max((at for _, _, at in rows), default=None)
    return {"open": sum(by_code.values()), "by_code": by_code, "latest_at": _iso(last)}


def collect(con: duckdb.DuckDBPyConnection, now: datetime, *, runs: int = 10) -> dict[str, Any]:
    """Everything ``churn status`` shows, as plain values (times in UTC, ISO with Z)."""
    quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()
    return {
        "as_of": _iso(now),
        "runs": _runs(con, runs),
        "streams": _streams(con, now),
        "api": _api(con, now),
        "rejections": _rejections(con, now),
        "quarantined": int(quarantined[0]) if quarantined else 0,
    }
