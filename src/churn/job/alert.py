"""The alert hook: a small JSON POST when a run fails, ends degraded or partial, or had
rejections.

Set ``CHURN_ALERT__WEBHOOK_URL`` (``[alert] webhook_url``). After each ``churn run`` (and
each scheduled one) whose status is not ``success``, or whose push Salesforce partly
rejected (``alert.on_rejections``), :func:`notify` POSTs :func:`payload`::

    {"service": "churn", "event": "run_failed" | "run_degraded" | "run_partial"
               | "push_rejections",
     "run_id": "run_…", "status": "failed", "exit_code": 1, "dry_run": false,
     "failed_step": "stripe", "error_type": "StripeExtractError",
     "steps": {"stripe": "failed", "salesforce": "success", …},
     "rejections": 3, "rejections_by_code": {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 3},
     "api_calls": 41, "seconds": 12.3, "finished_at": "2026-12-05T14:20:00Z"}

Counts, step names, error classes and Salesforce's error codes only: never an error's
message (it may name a record), an account, an amount or a secret. Read ``run_log`` and
``push_log`` for the details. A receiver that fails or is slow is logged at WARNING and
never changes the run's outcome.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import duckdb
import requests

from churn.job.run import JobResult, error_type_of
from churn.settings import Settings

__all__ = ["event_of", "notify", "payload"]

log = logging.getLogger(__name__)


def event_of(result: JobResult, rejections: int, settings: Settings) -> str | None:
    """Which alert a run raises, if any."""
    if result.status == "failed":
        return "run_failed"
    if result.status == "degraded":
        return "run_degraded"
    if result.status != "success":
        return "run_partial"
    if rejections and settings.alert.on_rejections:
        return "push_rejections"
    return None


def _rejections_by_code(con: duckdb.DuckDBPyConnection | None, run_id: str) -> dict[str, int]:
    if con is None:
        return {}
    from churn.job.summary import rejections

    codes: dict[str, int] = {}
    for row in rejections(con, run_id):
        codes[row["error_code"]] = codes.get(row["error_code"], 0) + 1
    return codes


def payload(
    result: JobResult,
    settings: Settings,
    con: duckdb.DuckDBPyConnection | None = None,
    *,
    exit_code: int | None = None,
) -> dict[str, Any]:
    """The alert's body (see the module's docstring), whether or not one is due."""
    failed = next((o for o in result.steps if o.status not in ("success", "skipped")), None)
    error_type = error_type_of(failed.error) if failed is not None else None
    by_code = _rejections_by_code(con, result.run_id)
    rejected = max(int(result.counts.get("push.rejected", 0)), sum(by_code.values()))
    body: dict[str, Any] = {
        "service": "churn",
        "event": event_of(result, rejected, settings),
        "run_id": result.run_id,
        "status": result.status,
        "exit_code": result.exit_code if exit_code is None else exit_code,
        "dry_run": result.dry_run,
        "failed_step": failed.name if failed else None,
        "error_type": error_type,
        "steps": {o.name: o.status for o in result.steps},
        "rejections": rejected,
        "rejections_by_code": by_code,
        "api_calls": result.api_calls,
        "seconds": round(result.seconds, 1),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return body


def notify(
    result: JobResult,
    settings: Settings,
    con: duckdb.DuckDBPyConnection | None = None,
    *,
    exit_code: int | None = None,
) -> bool:
    """POST the alert when one is due and a webhook is set; True when one was delivered."""
    url = settings.alert.webhook_url
    if url is None:
        return False
    body = payload(result, settings, con, exit_code=exit_code)
    if body["event"] is None:
        return False
    try:
        answer = requests.post(
            url.get_secret_value(), json=body, timeout=settings.alert.timeout_seconds
        )
        answer.raise_for_status()
    except requests.RequestException as exc:
        # the address is a secret: name the kind of failure only
        status = getattr(getattr(exc, "response", None), "status_code", None)
        log.warning(
            "alert not delivered: %s%s",
            type(exc).__name__,
            f" (HTTP {status})" if status else "",
            extra={"run_id": result.run_id, "alert_event": body["event"]},
        )
        return False
    log.info(
        "alert delivered: %s",
        body["event"],
        extra={"run_id": result.run_id, "alert_event": body["event"]},
    )
    return True
