"""Send a push plan to Salesforce: sObject Collections or Bulk API 2.0, per-batch state.

Each batch is one call (a collection of up to 200 records, or one Bulk API 2.0 job); its
per-record results go to ``push_log`` and the accepted records to ``push_state`` in one
DuckDB transaction after the call returns. A kill between the call and the commit leaves
the old state, so the next run plans the same changes again and resends them: Accounts are
updated by Id, Tasks created by an upsert on their external id (later updated by their Id),
so the resend neither duplicates a Task nor loses an update. A Task update answered with
ENTITY_IS_DELETED marks the Task ``deleted`` in ``push_state``: it is not retried. A rejected record stays out of ``push_state``, so it is planned
and retried next run (after a backoff, see ``sync``), with its error kept in ``push_log``.

Within the run: a record refused for one of its fields (read-only, a value a restricted
picklist lacks, no such field: :data:`~churn.pipelines.push.plan.FIELD_ERRORS`) is resent
at once without that field, the field is recorded in ``push_blocked_fields`` and left out
of the rest of the run; a record answered UNABLE_TO_LOCK_ROW is resent after a backoff
(``lock_retries`` times, through the injected ``sleep``). Every attempt is in ``push_log``.

Before every call the org's remaining daily API calls (``Sforce-Limit-Info``, read and
write share it) are checked against ``salesforce.api_reserve``; when the next call would
cross it the run stops with :class:`ApiBudgetExhaustedError`, what was sent is kept, and
the next run resumes with the rest.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ApiBudgetExhaustedError, PushError
from churn.pipelines.push.plan import (
    ACCOUNT,
    CASE,
    DELETED,
    FIELD_ERRORS,
    TASK,
    Change,
    canon,
    strip_blocked,
    without_fields,
)
from churn.settings import Settings
from churn.warehouse import transaction, utcnow

_LIMIT_INFO = re.compile(r"api-usage=(\d+)/(\d+)")
#: Bulk API 2.0 CSV: an empty cell leaves a field alone; this sets it to null.
_BULK_NULL = "#N/A"


@dataclass(frozen=True)
class Rejection:
    sobject: str
    record_key: str
    error_code: str
    message: str


@dataclass
class Blocked:
    """A field Salesforce refused, and how many records were written without it."""

    sobject: str
    name: str
    error_code: str
    message: str
    records: int = 0
    refused_values: list[str] = field(default_factory=list)


@dataclass
class ApplyOutcome:
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    #: Fields blocked during this run, by (sobject, field).
    blocked: dict[tuple[str, str], Blocked] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class CallMeter:
    """Counts every HTTP call the client makes and keeps the latest API usage reading.

    Hooked into the client's ``requests.Session`` so Bulk API 2.0's polling counts too.
    """

    def __init__(self, reserve: int) -> None:
        self.reserve = reserve
        self.calls = 0
        self.used: int | None = None
        self.total: int | None = None

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        match = _LIMIT_INFO.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.used, self.total = int(match[1]), int(match[2])

    @property
    def remaining(self) -> int | None:
        if self.used is None or self.total is None:
            return None
        return self.total - self.used

    def check(self, needed: int, what: str) -> None:
        """Raise before a call that would take the org below its reserve."""
        remaining = self.remaining
        if remaining is not None and remaining - needed < self.reserve:
            raise ApiBudgetExhaustedError(
                f"Salesforce daily API budget: {remaining} calls left, reserve "
                f"{self.reserve} (salesforce.api_reserve); stopped before {what}. "
                "What was sent is kept; the next run resumes."
            )


def attach_meter(sf: Salesforce, reserve: int) -> tuple[CallMeter, Callable[[], None]]:
    """Hook a :class:`CallMeter` into the client's session; returns it and its remover."""
    meter = CallMeter(reserve)
    hooks = sf.session.hooks.setdefault("response", [])
    hooks.append(meter.hook)
    return meter, lambda: hooks.remove(meter.hook)


def json_body(payload: Any) -> str:
    """JSON with Decimals written exactly (money never goes through a float)."""
    marks: dict[str, str] = {}

    def default(value: Any) -> Any:
        if isinstance(value, Decimal):
            mark = f"\u0000dec{len(marks)}\u0000"
            marks[mark] = format(value, "f")
            return mark
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    text = json.dumps(payload, default=default, separators=(",", ":"))
    for mark, number in marks.items():
        text = text.replace(json.dumps(mark), number)
    return text


#: Resends of a record answered UNABLE_TO_LOCK_ROW within one run, and the first wait.
LOCK_RETRIES = 3
LOCK_BACKOFF_SECONDS = 1.0


def apply_plan(
    sf: Salesforce,
    con: duckdb.DuckDBPyConnection,
    changes: Sequence[Change],
    settings: Settings,
    run_id: str,
    meter: CallMeter,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> ApplyOutcome:
    """Send the changes, grouped by object, a batch at a time; record every result."""
    outcome = ApplyOutcome()
    groups: dict[tuple[str, str], list[Change]] = {}
    for change in changes:
        groups.setdefault((change.sobject, change.key_field), []).append(change)
    # Accounts first: a Task's WhatId should never point at an Account we failed to reach.
    for (sobject, key_field), group in sorted(groups.items(), key=lambda g: g[0][0] != ACCOUNT):
        if len(group) > settings.push.bulk_threshold:
            _heal(sf, con, sobject, key_field, group, settings, run_id, meter, outcome, sleep)
        else:
            size = settings.push.collection_size
            for start in range(0, len(group), size):
                batch = group[start : start + size]
                _heal(sf, con, sobject, key_field, batch, settings, run_id, meter, outcome, sleep)
    return outcome


def _heal(
    sf: Salesforce,
    con: duckdb.DuckDBPyConnection,
    sobject: str,
    key_field: str,
    batch: Sequence[Change],
    settings: Settings,
    run_id: str,
    meter: CallMeter,
    outcome: ApplyOutcome,
    sleep: Callable[[float], None],
) -> None:
    """Send one batch; resend at once without a refused field, and after a backoff what
    another transaction had locked; record every attempt."""
    pending = _strip(list(batch), outcome)
    lock_round = 0
    while pending:
        if len(pending) > settings.push.bulk_threshold:
            rows = _send_bulk(sf, sobject, key_field, pending, meter)
            transport = "bulk2"
        else:
            rows = _send_collection(sf, sobject, key_field, pending, meter)
            transport = "collections"
        again: list[Change] = []
        retried: set[str] = set()
        locked: list[Change] = []
        for row in rows:
            refused = _refused_fields(row)
            if refused:
                _block(outcome, row, refused)
                kept = without_fields(row.change, refused)
                retried.add(row.change.idempotency_key)
                if kept is not None:
                    again.append(kept)
                continue
            if row.error_code == "UNABLE_TO_LOCK_ROW" and lock_round < LOCK_RETRIES:
                retried.add(row.change.idempotency_key)
                locked.append(row.change)
        _record(con, rows, transport, run_id, outcome, retried)
        outcome.add("resent_without_blocked_field", len(again))
        outcome.add("resent_after_row_lock", len(locked))
        if locked:
            sleep(LOCK_BACKOFF_SECONDS * 2**lock_round)
            lock_round += 1
        pending = _strip(again + locked, outcome)


def _strip(changes: list[Change], outcome: ApplyOutcome) -> list[Change]:
    """Leave out the fields blocked earlier in this run (counting what they cost)."""
    if not outcome.blocked:
        return changes
    kept, cost = strip_blocked(changes, outcome.blocked)
    for key, n in cost.items():
        outcome.blocked[key].records += n
    return kept


def _refused_fields(row: _Result) -> set[str]:
    """The fields Salesforce refused in a rejected record (never its key)."""
    if row.success or row.error_code not in FIELD_ERRORS:
        return set()
    names = {f for f in row.fields if f in row.change.fields and f != row.change.key_field}
    return names if len(names) == len(set(row.fields)) else set()


def _block(outcome: ApplyOutcome, row: _Result, refused: set[str]) -> None:
    for name in sorted(refused):
        key = (row.change.sobject, name)
        entry = outcome.blocked.get(key)
        if entry is None:
            entry = outcome.blocked[key] = Blocked(
                row.change.sobject, name, row.error_code or "UNKNOWN", row.message or ""
            )
        entry.records += 1
        value = row.change.fields.get(name)
        if (
            row.error_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
            and isinstance(value, str)
            and value not in entry.refused_values
        ):
            entry.refused_values.append(value)


def _send_collection(
    sf: Salesforce,
    sobject: str,
    key_field: str,
    batch: Sequence[Change],
    meter: CallMeter,
) -> list[_Result]:
    records = [{"attributes": {"type": sobject}, **c.fields} for c in batch]
    if key_field == "Id":
        for record, change in zip(records, batch, strict=True):
            record["Id"] = change.target
        path = "composite/sobjects"
    else:
        path = f"composite/sobjects/{sobject}/{key_field}"
    meter.check(1, f"PATCH {path} ({len(batch)} {sobject} records)")
    try:
        answer = sf.restful(
            path, method="PATCH", data=json_body({"allOrNone": False, "records": records})
        )
    except SalesforceError as exc:
        raise call_error(exc, f"PATCH {path}") from exc
    except requests.RequestException as exc:
        raise PushError(f"PATCH {path}: no answer from Salesforce ({type(exc).__name__})") from exc
    results = answer if isinstance(answer, list) else []
    if len(results) != len(batch):
        raise PushError(f"PATCH {path}: {len(results)} results for {len(batch)} records")
    rows = []
    for change, result in zip(batch, results, strict=True):
        errors = result.get("errors") or []
        first = errors[0] if errors else {}
        rows.append(
            _Result(
                change,
                bool(result.get("success")),
                result.get("id"),
                first.get("statusCode"),
                first.get("message"),
                tuple(str(f) for e in errors for f in (e.get("fields") or [])),
            )
        )
    return rows


def _send_bulk(
    sf: Salesforce,
    sobject: str,
    key_field: str,
    group: Sequence[Change],
    meter: CallMeter,
) -> list[_Result]:
    """One Bulk API 2.0 ingest job for the group (update by Id, or upsert by external id)."""
    # A job takes about six calls plus polling; keep room for them.
    meter.check(10, f"a Bulk API 2.0 {sobject} job ({len(group)} records)")
    records = []
    for change in group:
        row = {k: _bulk_cell(v) for k, v in change.fields.items()}
        if key_field == "Id":
            row["Id"] = change.target
        records.append(row)
    handler = getattr(sf.bulk2, sobject)
    by_key = {c.target if key_field == "Id" else c.record_key: c for c in group}
    rows: list[_Result] = []
    try:
        if key_field == "Id":
            jobs = handler.update(records=records, wait=1)
        else:
            jobs = handler.upsert(records=records, external_id_field=key_field, wait=1)
        for job in jobs:
            job_id = job["job_id"]
            for line in _csv_rows(handler.get_successful_records(job_id)):
                done = _take(by_key, line.get(key_field, ""))
                if done is not None:
                    rows.append(_Result(done, True, line.get("sf__Id") or None, None, None))
            for line in _csv_rows(handler.get_failed_records(job_id)):
                failed = _take(by_key, line.get(key_field, ""))
                if failed is not None:
                    code, message, fields = _bulk_error(line.get("sf__Error") or "")
                    rows.append(_Result(failed, False, None, code, message, fields))
    except SalesforceError as exc:
        raise call_error(exc, f"Bulk API 2.0 {sobject} job") from exc
    except ApiBudgetExhaustedError:
        raise  # the budget ran out during the job: the next run resends it (idempotent)
    except Exception as exc:  # simple-salesforce raises plain errors for failed jobs
        raise PushError(f"Bulk API 2.0 {sobject} job failed: {exc}") from exc
    for change in by_key.values():  # unprocessed: retried next run
        rows.append(_Result(change, False, None, "UNPROCESSED", "not processed by the job"))
    return rows


def _bulk_error(text: str) -> tuple[str, str, tuple[str, ...]]:
    """Bulk API 2.0's ``sf__Error`` (``CODE:message:fields``, sometimes ending ``--``) to
    its code, message and fields."""
    text = text.strip().removesuffix("--").strip()
    code, _, rest = text.partition(":")
    if not rest:
        return "UNKNOWN", text, ()
    message, _, names = rest.rpartition(":") if ":" in rest else (rest, "", "")
    fields = tuple(n.strip() for n in names.replace("--", "").split(",") if n.strip())
    return code, message.strip() or code, fields


def _take(pending: dict[str, Change], key: str) -> Change | None:
    return pending.pop(key) if key in pending else None


def _bulk_cell(value: Any) -> str:
    if value is None:
        return _BULK_NULL
    if isinstance(value, Decimal):
        return format(value, "f")
    return canon(value) or ""


def _csv_rows(text: str | None) -> Iterator[dict[str, str]]:
    if text:
        yield from csv.DictReader(io.StringIO(text))


def call_error(exc: SalesforceError, what: str) -> Exception:
    raw: Any = exc.content
    content: list[Any] = raw if isinstance(raw, list) else [raw]
    codes = [c.get("errorCode") for c in content if isinstance(c, dict)]
    if "REQUEST_LIMIT_EXCEEDED" in codes:
        return ApiBudgetExhaustedError(
            f"{what}: Salesforce answered REQUEST_LIMIT_EXCEEDED; the next run resumes"
        )
    messages = "; ".join(
        f"{c.get('errorCode')}: {c.get('message')}" for c in content if isinstance(c, dict)
    )
    return PushError(f"{what} failed with HTTP {exc.status}: {messages or raw!r}")


@dataclass(frozen=True)
class _Result:
    change: Change
    success: bool
    sf_id: str | None
    error_code: str | None
    message: str | None
    fields: tuple[str, ...] = ()


def _task_gone(result: _Result) -> bool:
    """An update by Id of a Task (or Case) that is no longer in Salesforce."""
    return (
        not result.success
        and result.change.sobject in (TASK, CASE)
        and result.change.sf_id is not None
        and result.error_code == "ENTITY_IS_DELETED"
    )


def _record(
    con: duckdb.DuckDBPyConnection,
    results: Sequence[_Result],
    transport: str,
    run_id: str,
    outcome: ApplyOutcome,
    retried: set[str] | None = None,
) -> None:
    """One batch's results: push_log for all, push_state for the accepted, one transaction.
    ``retried``: idempotency keys resent within the run (not counted as rejected)."""
    retried = retried or set()
    now = utcnow()
    log = pl.DataFrame(
        {
            "run_id": [run_id] * len(results),
            "idempotency_key": [r.change.idempotency_key for r in results],
            "sobject": [r.change.sobject for r in results],
            "record_key": [r.change.record_key for r in results],
            "action": [r.change.action for r in results],
            "transport": [transport] * len(results),
            "success": [r.success for r in results],
            "sf_id": [r.sf_id for r in results],
            "error_code": [r.error_code for r in results],
            "error_message": [r.message for r in results],
            "fields": [json_body(dict(r.change.fields)) for r in results],
            "logged_at": [now] * len(results),
        },
        schema_overrides={"sf_id": pl.Utf8, "error_code": pl.Utf8, "error_message": pl.Utf8},
    )
    # A Task deleted in Salesforce: recorded as such, so it is neither recreated nor retried.
    gone = [r for r in results if _task_gone(r)]
    accepted = [r for r in results if r.success]
    kept = [*accepted, *gone]
    state = pl.DataFrame(
        {
            "sobject": [r.change.sobject for r in kept],
            "record_key": [r.change.record_key for r in kept],
            "sf_id": [r.sf_id or r.change.sf_id for r in kept],
            "fields": [json.dumps(dict(r.change.state), sort_keys=True) for r in kept],
            "status": [r.change.status if r.success else DELETED for r in kept],
            "first_seen_at": [r.change.first_seen_at for r in kept],
            "pushed_at": [now] * len(kept),
            "idempotency_key": [r.change.idempotency_key for r in kept],
        },
        schema_overrides={
            "sf_id": pl.Utf8,
            "status": pl.Utf8,
            "first_seen_at": pl.Datetime("us"),
            "pushed_at": pl.Datetime("us"),
        },
    )
    with transaction(con):
        con.register("_push_log_batch", log)
        con.execute("INSERT INTO push_log BY NAME SELECT * FROM _push_log_batch")
        con.register("_push_state_batch", state)
        con.execute(
            "INSERT OR REPLACE INTO push_state BY NAME "
            "SELECT * REPLACE (coalesce(sf_id, (SELECT p.sf_id FROM push_state p "
            "WHERE p.sobject = b.sobject AND p.record_key = b.record_key)) AS sf_id) "
            "FROM _push_state_batch b"
        )
        con.unregister("_push_log_batch")
        con.unregister("_push_state_batch")
    outcome.add("sent", len(results))
    outcome.add("accepted", len(accepted))
    for r in results:
        if r.success:
            outcome.add(r.change.action)
        elif _task_gone(r):
            outcome.add("task_deleted_in_salesforce")
        elif r.change.idempotency_key in retried:
            continue
        else:
            outcome.add("rejected")
            outcome.rejected.append(
                Rejection(
                    r.change.sobject,
                    r.change.record_key,
                    r.error_code or "UNKNOWN",
                    r.message or "",
                )
            )
