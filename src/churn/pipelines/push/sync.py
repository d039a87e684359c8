"""`churn push`: gather the plan's inputs from the warehouse, plan, check safety, apply.

Reads the marts ``account_health`` and ``signal_events`` (their latest ``as_of``), the
extracted Accounts and Users, and ``push_state``/``push_log``; hands them to the pure
:mod:`churn.pipelines.push.plan`; stores the plan in ``push_plan``; and, unless a dry run,
sends it with :mod:`churn.pipelines.push.apply`. Nothing to change means no call at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time as time_module
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import duckdb
import polars as pl
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ChurnError, ProductionSafetyError, PushError
from churn.fields import ACCOUNT_FIELDS, Kind
from churn.pipelines.push.apply import (
    Blocked,
    Rejection,
    apply_plan,
    attach_meter,
    call_error,
    json_body,
)
from churn.pipelines.push.billing import Attempt, Billing, BillingContact
from churn.pipelines.push.cases import CASE_SIGNAL, plan_cases
from churn.pipelines.push.plan import (
    CASE,
    TASK,
    TRANSIENT_ERRORS,
    AccountInput,
    Change,
    Episode,
    Owner,
    Plan,
    PushedState,
    cap_new_tasks,
    close_all_tasks,
    estimate_calls,
    make_plan,
    runs_to_wait,
    strip_blocked,
)
from churn.pipelines.push.timeline import plan_timeline
from churn.pipelines.push.values import (
    ACCOUNT_AMOUNT_PREFIX,
    ACCOUNT_CURRENCY_COLUMN,
    account_values,
)
from churn.pipelines.salesforce.doctor import case_picklist_problem, check_task_picklists
from churn.settings import Settings
from churn.signals import money
from churn.signals.changes import derive as derive_changes
from churn.signals.mrr import customers_of
from churn.signals.rates import rates_at_sql
from churn.signals.tables import Tables
from churn.warehouse import rows_where, transaction, utcnow

log = logging.getLogger(__name__)


@dataclass
class PushResult:
    run_id: str
    dry_run: bool
    plan: Plan
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    #: Nothing pushed before (``push_state`` empty): the run that writes the most.
    first_push: bool = False

    def announcement(self) -> str:
        """The plan in one line, with its API call estimate, said before it is sent."""
        counts = self.plan.counts()
        parts = [f"{counts.get(a, 0):,} {a.replace('_', ' ')}" for a in sorted(counts)]
        deferred = self.plan.deferred_tasks
        later = f"; {deferred:,} more new Tasks left for later runs (the cap)" if deferred else ""
        if self.plan.deferred_cases:
            later += f"; {self.plan.deferred_cases:,} more new Cases left for later runs (the cap)"
        first = "first push" if self.first_push else "push"
        calls = self.counts.get("estimated_api_calls", 0)
        return f"{first}: {', '.join(parts) or 'nothing'}{later}; about {calls:,} API calls"

    #: Fields left out of this run (blocked now or before), with what they cost.
    blocked: list[Blocked] = field(default_factory=list)
    #: Changes put off by backoff: idempotency key -> push runs still to wait.
    deferred: dict[str, int] = field(default_factory=dict)
    #: Why no Case was written this run (a Case setting the org's picklists lack).
    case_problem: str | None = None

    @property
    def degraded(self) -> bool:
        """Written, but without some fields Salesforce refuses (exit 4)."""
        return bool(self.blocked)

    @property
    def notes(self) -> list[str]:
        """Sentences for the run summary: the blocked fields and what they cost."""
        out = [
            f"{b.sobject} field {b.name} blocked ({b.error_code}: {_cut(b.message, 160)}):"
            f" not written to {b.records} {b.sobject}s; it is sent again once describe shows"
            " it writable (or the picklist value), or with churn push --retry-blocked"
            for b in self.blocked
        ]
        if self.case_problem:
            out.append(self.case_problem)
        if self.deferred:
            out.append(
                f"{len(self.deferred)} records rejected before with the same values put off"
                " (backoff: sent again 1, 2, 4... runs after a rejection); see"
                " push_plan.runs_to_wait"
            )
        return out


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def push(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    dry_run: bool = False,
    salesforce: Salesforce | None = None,
    connect: Callable[[], Salesforce] | None = None,
    retry_blocked: bool = False,
    sleep: Callable[[float], None] = time_module.sleep,
    on_plan: Callable[[PushResult], None] | None = None,
    close_open_tasks: bool = False,
    scores: Scores | None = None,
) -> PushResult:
    """Plan and (unless ``dry_run``) apply the push. ``salesforce`` or ``connect`` give the
    client; by default one is made from ``settings.salesforce`` when there is work to do.

    Fields blocked by an earlier run are left out unless describe shows them writable
    again (one describe call per object with a blocked field) or ``retry_blocked``.
    Changes rejected before with the same values wait their backoff. ``sleep`` waits
    between resends of a locked row (tests pass one that does not wait). ``on_plan`` sees
    the plan and its call estimate before any call goes out (the CLI prints it; a first
    push logs it). ``close_open_tasks``: instead of the push, close every Task and Case the
    service has open (the way back). ``scores``: push only these accounts, from these tables (the
    webhook worker's).
    """
    run_id = f"push-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    sf: Salesforce | None = salesforce
    blocked = load_blocked(con)
    if retry_blocked and blocked and not dry_run:
        _unblock(con, list(blocked))
        blocked = {}
    full = close_all_plan(settings, con) if close_open_tasks else build_plan(settings, con, scores)
    described = 0  # the calls asking describe about blocked fields
    if blocked and not dry_run and full.changes:
        sf = sf or (connect or _default_connect(settings))()
        probe, detach_probe = attach_meter(sf, settings.salesforce.api_reserve)
        try:
            unblocked = _metadata_changed(sf, blocked)
        finally:
            described = probe.calls
            detach_probe()
        if unblocked:
            _unblock(con, unblocked)
            blocked = {k: v for k, v in blocked.items() if k not in unblocked}
    changes, cost = strip_blocked(full.changes, blocked)
    backoff = backoff_of(con)
    deferred = {
        c.idempotency_key: backoff[c.idempotency_key]
        for c in changes
        if c.idempotency_key in backoff
    }
    plan = Plan(
        full.as_of,
        tuple(c for c in changes if c.idempotency_key not in deferred),
        deferred_tasks=full.deferred_tasks,
        deferred_cases=full.deferred_cases,
    )
    store_plan(con, plan, run_id, dry_run)
    put_off = [c for c in changes if c.idempotency_key in deferred]
    store_deferred(con, put_off, deferred, run_id, dry_run)
    result = PushResult(run_id, dry_run, plan, counts={"planned": len(plan.changes)})
    result.counts.update({f"planned_{k}": v for k, v in plan.counts().items()})
    result.deferred = deferred
    if deferred:
        result.counts["deferred_backoff"] = len(deferred)
    for key, info in blocked.items():
        info.records = cost.get(key, 0)
    result.blocked = [b for b in blocked.values() if b.records]
    result.api_calls = described
    if plan.deferred_tasks:
        result.counts["deferred_tasks"] = plan.deferred_tasks
    if plan.deferred_cases:
        result.counts["deferred_cases"] = plan.deferred_cases
    if plan.changes:
        result.counts["estimated_api_calls"] = estimate_calls(plan, settings.push)
        row = con.execute("SELECT count(*) FROM push_state").fetchone()
        result.first_push = not (row and row[0])
    if on_plan is not None:
        on_plan(result)
    elif result.first_push:
        # The run that writes the most, said before any call (churn run logs it).
        log.warning("%s", result.announcement())
    if dry_run or not plan.changes:
        return result
    started = utcnow()
    _log_run(con, run_id, started, "running", result)
    sf = sf or (connect or _default_connect(settings))()
    meter, detach = attach_meter(sf, settings.salesforce.api_reserve)
    try:
        meter.check(1, "the Organization safety query")
        check_safety(settings, con, sf)
        if any(c.sobject == TASK for c in plan.changes):
            # One describe: an org whose Task picklists lack the configured values gets one
            # clear error here instead of every Task rejected.
            meter.check(1, "the Task describe")
            check_task_picklists(sf, settings)
        send = list(plan.changes)
        if any(c.sobject == CASE for c in send):
            # One describe: a Case value the org's picklists lack is one line in the
            # summary (and in churn doctor), not a batch of rejected Cases; the rest goes.
            meter.check(1, "the Case describe")
            result.case_problem = case_picklist_problem(sf, settings)
            if result.case_problem:
                held = sum(c.sobject == CASE for c in send)
                send = [c for c in send if c.sobject != CASE]
                result.counts["cases_not_written"] = held
        outcome = apply_plan(sf, con, send, settings, run_id, meter, sleep=sleep)
    except Exception as exc:
        result.api_calls = described + meter.calls
        if isinstance(exc, ChurnError):
            exc.api_calls = result.api_calls  # a failed push reports the calls it made
        _log_run(con, run_id, started, "failed", result, error=str(exc))
        raise
    finally:
        result.api_calls = described + meter.calls
        detach()
    result.counts.update(outcome.counts)
    result.rejected = outcome.rejected
    if outcome.blocked:
        save_blocked(con, outcome.blocked.values(), run_id)
        known = {(b.sobject, b.name): b for b in result.blocked}
        for key, info in outcome.blocked.items():
            if key in known:
                known[key].records += info.records
            else:
                result.blocked.append(info)
    if result.blocked:
        result.counts["blocked_fields"] = len(result.blocked)
    status = "degraded" if result.blocked else "partial" if result.rejected else "success"
    _log_run(con, run_id, started, status, result)
    return result


def load_blocked(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], Blocked]:
    """The fields blocked by earlier runs (``push_blocked_fields``)."""
    if not _table_exists(con, "push_blocked_fields"):
        return {}
    rows = con.execute(
        "SELECT sobject, field, error_code, error_message, refused_values"
        " FROM push_blocked_fields ORDER BY sobject, field"
    ).fetchall()
    return {
        (r[0], r[1]): Blocked(r[0], r[1], r[2], r[3] or "", 0, json.loads(r[4] or "[]"))
        for r in rows
    }


def save_blocked(con: duckdb.DuckDBPyConnection, blocked: Iterable[Blocked], run_id: str) -> None:
    with transaction(con):
        for b in blocked:
            con.execute(
                "INSERT OR REPLACE INTO push_blocked_fields (sobject, field, error_code,"
                " error_message, refused_values, records, run_id, blocked_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    b.sobject,
                    b.name,
                    b.error_code,
                    b.message,
                    json.dumps(b.refused_values),
                    b.records,
                    run_id,
                    utcnow(),
                ],
            )


def _unblock(con: duckdb.DuckDBPyConnection, keys: list[tuple[str, str]]) -> None:
    with transaction(con):
        for sobject, name in keys:
            con.execute(
                "DELETE FROM push_blocked_fields WHERE sobject = ? AND field = ?", [sobject, name]
            )


def _metadata_changed(
    sf: Salesforce, blocked: dict[tuple[str, str], Blocked]
) -> list[tuple[str, str]]:
    """Blocked fields whose describe now shows them writable (and a picklist holding
    every value refused): they are sent again."""
    out = []
    for sobject in sorted({k[0] for k in blocked}):
        try:
            described = sf.restful(f"sobjects/{sobject}/describe") or {}
        except SalesforceError:
            continue  # not described: stays blocked
        fields = {str(f.get("name")): f for f in described.get("fields", [])}
        for (obj, name), info in blocked.items():
            if obj != sobject:
                continue
            meta = fields.get(name)
            if meta is None or not meta.get("updateable"):
                continue
            values = {str(v.get("value")) for v in meta.get("picklistValues") or []}
            if info.refused_values and not set(info.refused_values) <= values:
                continue
            out.append((obj, name))
    return out


def backoff_of(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Changes rejected before and never accepted with the same values (idempotency
    key): how many more push runs each waits (0: sent now). Transient answers and refused
    fields do not count. A push run is one stored plan that was not a dry run."""
    transient = sorted(TRANSIENT_ERRORS)
    marks = ", ".join("?" for _ in transient)
    rows = con.execute(
        f"""
        WITH failed AS (
            SELECT idempotency_key, count(*) AS failures, max(logged_at) AS last_failure
            FROM push_log GROUP BY idempotency_key
            HAVING NOT bool_or(success)
               AND count(*) FILTER (WHERE error_code NOT IN ({marks})) = count(*)
        ), runs AS (
            SELECT run_id, min(planned_at) AS planned_at FROM push_plan
            WHERE NOT dry_run GROUP BY run_id
        )
        SELECT f.idempotency_key, f.failures,
               (SELECT count(*) FROM runs r WHERE r.planned_at > f.last_failure) AS since
        FROM failed f
        """,
        transient,
    ).fetchall()
    out = {}
    for key, failures, since in rows:
        wait = runs_to_wait(int(failures)) - 1 - int(since)
        if wait > 0:
            out[str(key)] = wait
    return out


def store_deferred(
    con: duckdb.DuckDBPyConnection,
    changes: list[Change],
    deferred: dict[str, int],
    run_id: str,
    dry_run: bool,
) -> None:
    """The changes put off by backoff, in ``push_plan`` with their next attempt."""
    _insert_plan(con, changes, run_id, dry_run, deferred)


def _log_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    started: datetime,
    status: str,
    result: PushResult,
    error: str | None = None,
) -> None:
    """The push's row in ``run_log`` (running, then success / degraded / partial / failed)."""
    con.execute(
        "INSERT OR REPLACE INTO run_log (run_id, command, started_at, finished_at, status, "
        "counts, api_calls, error) VALUES (?, 'push', ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            started,
            None if status == "running" else utcnow(),
            status,
            json.dumps(result.counts),
            json.dumps({"salesforce": result.api_calls}),
            error,
        ],
    )


def _default_connect(settings: Settings) -> Callable[[], Salesforce]:
    def connect() -> Salesforce:
        from churn.pipelines.salesforce.client import make_salesforce

        return make_salesforce(settings.salesforce)

    return connect


def check_safety(settings: Settings, con: duckdb.DuckDBPyConnection, sf: Salesforce) -> None:
    """Refuse to push test-mode Stripe data into a production org.

    The query runs on every push that has work, so the first reading of the API budget
    comes from a read, before any write.
    """
    soql = "SELECT IsSandbox FROM Organization LIMIT 1"
    try:
        answer = sf.query(soql)
    except SalesforceError as exc:
        raise call_error(exc, soql) from exc
    except requests.RequestException as exc:
        raise PushError(f"{soql}: no answer from Salesforce ({type(exc).__name__})") from exc
    records = answer.get("records") or []
    if not records:
        raise PushError("SELECT IsSandbox FROM Organization returned no record")
    if settings.push.allow_test_data_in_production or not has_test_data(settings, con):
        return
    if not records[0].get("IsSandbox"):
        raise ProductionSafetyError(
            "refused: the warehouse holds test-mode Stripe data and the Salesforce org is "
            "production (Organization.IsSandbox is false); set "
            "CHURN_PUSH__ALLOW_TEST_DATA_IN_PRODUCTION=true only if that is intended"
        )


def has_test_data(settings: Settings, con: duckdb.DuckDBPyConnection) -> bool:
    if settings.stripe.key_mode == "test":
        return True
    row = con.execute(
        "SELECT count(*) FROM core_customers WHERE livemode IS NOT TRUE AND NOT is_deleted"
    ).fetchone()
    return bool(row and row[0])


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def _dicts(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or {})
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _account_currency_columns(con: duckdb.DuckDBPyConnection) -> str:
    """SQL select items: the Account's currency, and each money column the owned Currency
    fields read, converted from the reporting currency to it (``money.sql_convert``: NULL
    without a rate for either)."""
    columns = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'account_health'"
        ).fetchall()
    }
    items = ["upper(a.currency_iso_code) AS " + ACCOUNT_CURRENCY_COLUMN]
    for source in sorted({f.source for f in ACCOUNT_FIELDS if f.kind is Kind.MONEY}):
        if source not in columns:
            continue
        converted = money.sql_convert(
            f"h.{source}",
            "h.reporting_currency",
            "a.currency_iso_code",
            "rs.conversion_rate",
            "rt.conversion_rate",
        )
        items.append(f"{converted} AS {ACCOUNT_AMOUNT_PREFIX}{source}")
    return ", ".join(items)


@dataclass(frozen=True)
class Scores:
    """Where a partial push reads its scores, and the only accounts it plans for.

    The webhook worker scores the accounts a micro-batch touched into temporary tables of
    the marts' shape; the plan then covers those accounts alone: their Account fields,
    their episodes' Tasks, and the closing of their own open Tasks only (a Task of an
    account not in ``account_ids`` is never closed for being absent).
    """

    health_table: str
    signals_table: str
    account_ids: tuple[str, ...]
    #: Plan those accounts' timeline records too: the incremental run's push does (its
    #: accounts are the ones whose data changed), the webhook worker's does not (a record
    #: of history is not urgent: the next run logs it).
    timeline: bool = False


def build_plan(
    settings: Settings, con: duckdb.DuckDBPyConnection, scores: Scores | None = None
) -> Plan:
    """Read the plan's inputs (set-based queries) and compute the plan."""
    health = scores.health_table if scores else "account_health"
    signal_table = scores.signals_table if scores else "signal_events"
    only = "" if scores is None else " AND h.account_id IN (SELECT unnest($ids::VARCHAR[]))"
    params = {} if scores is None else {"ids": list(scores.account_ids)}
    accounts: list[AccountInput] = []
    if _table_exists(con, health):
        frame = _dicts(
            con,
            f"""
            WITH latest AS (SELECT max(as_of) AS t FROM {health}),
            rates AS ({rates_at_sql("SELECT t FROM latest")})
            SELECT h.*, r.payload AS _sf_payload, r.system_modstamp AS _sf_modstamp,
                   g.ids AS _guessed_customer_ids, f.ids AS _field_customer_ids,
                   {_account_currency_columns(con)}
            FROM {health} h
            JOIN core_accounts a ON a.account_id = h.account_id AND NOT a.is_deleted
            LEFT JOIN rates rs ON rs.iso = upper(h.reporting_currency)
            LEFT JOIN rates rt ON rt.iso = upper(a.currency_iso_code)
            LEFT JOIN raw_sf_account r ON r.id = h.account_id
            LEFT JOIN (
                SELECT account_id, list(customer_id) AS ids FROM core_account_links
                WHERE method IN ('email_domain', 'name') GROUP BY account_id
            ) g ON g.account_id = h.account_id
            LEFT JOIN (
                SELECT account_id, list(customer_id) AS ids FROM core_account_links
                WHERE method = 'account_field' GROUP BY account_id
            ) f ON f.account_id = h.account_id
            WHERE h.as_of = (SELECT max(as_of) FROM {health}){only}
            ORDER BY h.account_id
            """,
            params,
        )
        for row in frame:
            payload = json.loads(row["_sf_payload"]) if row["_sf_payload"] else None
            accounts.append(
                AccountInput(
                    account_id=row["account_id"],
                    values=account_values(row, settings),
                    sf_values=payload,
                    sf_modstamp=row["_sf_modstamp"],
                )
            )
    owners = {
        r[0]: Owner(r[1], r[2])
        for r in con.execute(
            """
            SELECT a.account_id, a.owner_id, u.is_active AND NOT u.is_deleted
            FROM core_accounts a LEFT JOIN core_users u ON u.user_id = a.owner_id
            WHERE NOT a.is_deleted
            """
        ).fetchall()
    }
    # The latest scoring's as_of: account_health has a row per account every run, while
    # signal_events may have none when every episode has resolved.
    marts = [t for t in (health, signal_table) if _table_exists(con, t)]
    as_of: datetime | None = None
    if marts:
        latest = con.execute(
            "SELECT greatest(" + ", ".join(f"(SELECT max(as_of) FROM {t})" for t in marts) + ")"
        ).fetchone()
        as_of = latest[0] if latest else None
    episodes: list[Episode] = []
    if as_of is not None and signal_table in marts:
        seen: set[str] = set()
        rows = con.execute(
            f"""
            SELECT * FROM {signal_table} h WHERE as_of = $as_of AND episode_key IS NOT NULL{only}
            ORDER BY episode_key, score DESC NULLS LAST
            """,
            {"as_of": as_of, **params},
        )
        names = [d[0] for d in rows.description or []]
        for values in rows.fetchall():
            row = dict(zip(names, values, strict=True))
            if row["episode_key"] in seen:
                continue
            seen.add(row["episode_key"])
            evidence = row.get("evidence")
            episodes.append(
                Episode(
                    episode_key=row["episode_key"],
                    account_id=row["account_id"],
                    signal=row["signal"],
                    severity=row.get("severity"),
                    reason=row.get("reason") or row["signal"],
                    score=row.get("score"),
                    evidence=json.loads(evidence) if isinstance(evidence, str) else {},
                )
            )
    if isinstance(as_of, date) and not isinstance(as_of, datetime):
        as_of = datetime.combine(as_of, time())
    state = read_state(con, None if scores is None else scores.account_ids)
    last_errors = {
        (r[0], r[1]): f"{r[2]}: {r[3]}"
        for r in con.execute(
            """
            SELECT sobject, record_key, error_code, error_message FROM push_log
            QUALIFY row_number() OVER (PARTITION BY sobject, record_key
                                       ORDER BY logged_at DESC) = 1 AND NOT success
            """
        ).fetchall()
    }
    billing = read_billing(con, episodes, state, as_of, settings.push.billing_contact_roles)
    plan = make_plan(
        accounts=accounts,
        episodes=episodes,
        owners=owners,
        state=state,
        settings=settings.push,
        task_external_id_field=settings.salesforce.task_external_id_field,
        as_of=as_of,
        last_errors=last_errors,
        billing=billing,
    )
    if as_of is None:
        return plan
    # The Case per payment-failure episode (push/cases.py), beside the Tasks; new ones
    # capped as new Tasks are (a first run over a big book does not open hundreds).
    cases, deferred_cases = cap_new_tasks(
        plan_cases(
            episodes,
            owners,
            {r.record_key: r for r in state if r.sobject == CASE},
            {r.record_key: r for r in state if r.sobject == TASK},
            settings.push,
            settings.case,
            as_of,
            billing,
            {key: msg for (sobject, key), msg in last_errors.items() if sobject == CASE},
        ),
        episodes,
        settings.push.max_new_tasks_per_run,
        action="create_case",
    )
    # Plan changes on the Account timeline (push/timeline.py), beside them.
    timeline = timeline_changes(settings, con, as_of, owners, state, last_errors, scores)
    return dataclasses.replace(
        plan,
        changes=plan.changes + tuple(cases) + tuple(timeline),
        deferred_cases=deferred_cases,
    )


def read_billing(
    con: duckdb.DuckDBPyConnection,
    episodes: Sequence[Episode],
    state: Sequence[PushedState],
    as_of: datetime | None,
    roles: Sequence[str] = (),
) -> dict[str, Billing]:
    """Per payment-failure episode (open, or with an open Case to close): the billing
    Contact (the Account's Contact whose Email is the Stripe customer's, case-insensitive;
    the lowest Id when several; else, with ``roles``, a live Contact of the Account whose
    AccountContactRole Role is one of them: the first role in ``roles``, then the primary,
    then the lowest Id), the invoice's ``hosted_invoice_url`` (from its payload),
    its failed charges by ``as_of`` and its status today."""
    prefix = f"{CASE_SIGNAL}:"
    keys = {(e.episode_key, e.account_id) for e in episodes if e.episode_key.startswith(prefix)}
    keys |= {
        (r.record_key, str(r.fields.get("AccountId") or ""))
        for r in state
        if r.sobject == CASE and r.status == "open"
    }
    if not keys or as_of is None:
        return {}
    frame = pl.DataFrame(
        {
            "episode_key": [k for k, _ in keys],
            "account_id": [a for _, a in keys],
            "invoice_id": [k.removeprefix(prefix) for k, _ in keys],
        }
    )
    con.register("_billing_keys", frame)
    try:
        # the payloads of these invoices only (2.1 s for 600 at 100,000 accounts by a join)
        invoices = rows_where("raw_stripe_invoice", "id IN (SELECT invoice_id FROM _billing_keys)")
        rows = _dicts(
            con,
            f"""
            WITH roles AS (
                SELECT r.account_id, r.contact_id, r.role,
                       row_number() OVER (
                           PARTITION BY r.account_id
                           ORDER BY list_position($roles, r.role), r.is_primary DESC,
                                    r.contact_id) AS n
                FROM core_account_contact_roles r
                JOIN core_contacts c ON c.contact_id = r.contact_id AND NOT c.is_deleted
                WHERE NOT r.is_deleted AND list_contains($roles, r.role)
                  AND r.account_id IN (SELECT account_id FROM _billing_keys)
            )
            SELECT k.episode_key, i.status, r.payload->>'hosted_invoice_url' AS url,
                   (SELECT arg_min(c.contact_id, c.contact_id) FROM core_contacts c
                    WHERE NOT c.is_deleted AND c.account_id = k.account_id
                      AND lower(c.email) = lower(cu.email)) AS email_contact_id,
                   ro.contact_id AS role_contact_id, ro.role
            FROM _billing_keys k
            LEFT JOIN roles ro ON ro.account_id = k.account_id AND ro.n = 1
            LEFT JOIN core_invoices i ON i.invoice_id = k.invoice_id
            LEFT JOIN {invoices} r ON r.id = k.invoice_id
            LEFT JOIN core_customers cu ON cu.customer_id = i.customer_id
            """,
            {"roles": list(roles)},
        )
        attempts = con.execute(
            """
            WITH links AS (
              SELECT k.episode_key, ch.charge_id FROM _billing_keys k
                JOIN core_charges ch ON ch.invoice_id = k.invoice_id
              UNION
              SELECT k.episode_key, ch.charge_id FROM _billing_keys k
                JOIN core_invoices i ON i.invoice_id = k.invoice_id
                JOIN core_charges ch ON ch.payment_intent_id = i.payment_intent_id
              UNION
              -- two joins, not one on "a OR b", which DuckDB can only nest-loop (every
              -- payment against every charge: 0.85 s at 100,000 accounts)
              SELECT k.episode_key, ch.charge_id FROM _billing_keys k
                JOIN core_invoice_payments ip ON ip.invoice_id = k.invoice_id
                JOIN core_charges ch ON ch.payment_intent_id = ip.payment_intent_id
              UNION
              SELECT k.episode_key, ip.charge_id FROM _billing_keys k
                JOIN core_invoice_payments ip ON ip.invoice_id = k.invoice_id
                JOIN core_charges ch ON ch.charge_id = ip.charge_id
            )
            SELECT l.episode_key, ch.created_at, COALESCE(ch.decline_code, ch.failure_code)
            FROM links l JOIN core_charges ch ON ch.charge_id = l.charge_id
            WHERE ch.status = 'failed' AND ch.created_at <= $as_of
            ORDER BY l.episode_key, ch.created_at, ch.charge_id
            """,
            {"as_of": as_of},
        ).fetchall()
    finally:
        con.unregister("_billing_keys")
    for r in rows:
        # The Contact whose email is the customer's; else the one with a configured role.
        r["contact_id"] = r["email_contact_id"] or r["role_contact_id"]
        r["role"] = None if r["email_contact_id"] else r["role"]
    contacts = {
        r[0]: (r[1], r[2])
        for r in con.execute(
            "SELECT contact_id, name, email FROM core_contacts WHERE contact_id IN"
            " (SELECT unnest($ids::VARCHAR[]))",
            {"ids": [r["contact_id"] for r in rows if r["contact_id"]]},
        ).fetchall()
    }
    tries: dict[str, list[Attempt]] = {}
    for key, at, code in attempts:
        tries.setdefault(key, []).append(Attempt(at, code))
    return {
        r["episode_key"]: Billing(
            contact=BillingContact(r["contact_id"], *contacts[r["contact_id"]], role=r["role"])
            if r["contact_id"] in contacts
            else None,
            hosted_invoice_url=r["url"],
            attempts=tuple(tries.get(r["episode_key"], ())),
            invoice_status=r["status"]
            if r["status"] in ("paid", "void", "uncollectible")
            else None,
            roles=tuple(roles),
        )
        for r in rows
    }


def timeline_changes(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | None,
    owners: dict[str, Owner],
    state: Sequence[PushedState],
    last_errors: dict[tuple[str, str], str],
    scores: Scores | None = None,
) -> list[Change]:
    """The plan's timeline records (:mod:`churn.pipelines.push.timeline`): the changes of
    the window before ``as_of`` not logged yet. On a partial push (``scores``), only its
    accounts' changes, derived from their customers' rows only, and none on the webhook
    worker's (``scores.timeline`` false): a record of history is not urgent; the next run
    logs it."""
    config = settings.push.timeline
    if as_of is None or not config.kinds or config.window_days <= 0:
        return []
    if scores is not None and not scores.timeline:
        return []
    customers = None
    if scores is not None:
        # The derivation reads the scope's customers only (at 100,000 accounts the whole
        # window's took 0.8-0.9 s of a 1% run): every customer ever linked to one of its
        # accounts, and the keys that are customer ids (as scoped scoring takes them).
        customers = [
            r[0]
            for r in con.execute(
                customers_of("SELECT unnest($ids::VARCHAR[])"), {"ids": list(scores.account_ids)}
            ).fetchall()
        ]
    derived = derive_changes(
        Tables(con),
        as_of,
        settings.signals,
        window_days=config.window_days,
        kinds=config.kinds,
        customers=customers,
    )
    if scores is not None:
        # Only the plan's accounts: their Tasks' push_state is all this plan has read.
        ids = set(scores.account_ids)
        derived = [c for c in derived if c.account_id in ids]
    return plan_timeline(
        derived,
        owners,
        {r.record_key: r for r in state if r.sobject == TASK},
        settings.push,
        settings.salesforce.task_external_id_field,
        {key: msg for (sobject, key), msg in last_errors.items() if sobject == TASK},
    )


def read_state(
    con: duckdb.DuckDBPyConnection, account_ids: Sequence[str] | None = None
) -> list[PushedState]:
    """Every ``push_state`` row, or only those of ``account_ids`` (an Account's own row and
    the Tasks whose WhatId is one of them)."""
    where = (
        ""
        if account_ids is None
        else " WHERE (CASE WHEN sobject = 'Account' THEN record_key"
        " ELSE coalesce(fields->>'WhatId', fields->>'AccountId') END)"
        " IN (SELECT unnest($ids::VARCHAR[]))"
    )
    params = {} if account_ids is None else {"ids": list(account_ids)}
    return [
        PushedState(
            sobject=r[0],
            record_key=r[1],
            fields=json.loads(r[2]),
            pushed_at=r[3],
            status=r[4],
            first_seen_at=r[5],
            sf_id=r[6],
        )
        for r in con.execute(
            "SELECT sobject, record_key, fields, pushed_at, status, first_seen_at, sf_id "
            "FROM push_state" + where,
            params,
        ).fetchall()
    ]


def close_all_plan(settings: Settings, con: duckdb.DuckDBPyConnection) -> Plan:
    """The plan of ``churn push --close-open-tasks``: close every Task and Case the service
    has open."""
    return close_all_tasks(
        read_state(con),
        settings.push,
        settings.salesforce.task_external_id_field,
        utcnow().date(),
        settings.case,
    )


def _insert_plan(
    con: duckdb.DuckDBPyConnection,
    changes: Sequence[Change],
    run_id: str,
    dry_run: bool,
    deferred: Mapping[str, int] | None = None,
) -> None:
    """``changes`` (one per idempotency key) into ``push_plan`` in one statement; with
    ``deferred``, as put off by backoff, each with its ``runs_to_wait``. A row each costs
    ~12 ms against the grown table (534 put-off changes took 6.3 s of a 1% run at
    100,000 accounts)."""
    if not changes:
        return
    unique = list({c.idempotency_key: c for c in changes}.values())
    columns: dict[str, list[Any]] = {
        "run_id": [run_id] * len(unique),
        "planned_at": [utcnow()] * len(unique),
        "dry_run": [dry_run] * len(unique),
        "idempotency_key": [c.idempotency_key for c in unique],
        "sobject": [c.sobject for c in unique],
        "record_key": [c.record_key for c in unique],
        "action": [c.action for c in unique],
        "fields": [json_body(dict(c.fields)) for c in unique],
        "last_error": [c.last_error for c in unique],
    }
    types: dict[str, Any] = {"last_error": pl.Utf8, "planned_at": pl.Datetime("us")}
    if deferred is not None:
        columns["runs_to_wait"] = [deferred[c.idempotency_key] for c in unique]
        types["runs_to_wait"] = pl.Int64
    frame = pl.DataFrame(columns, schema_overrides=types)
    insert = "INSERT" if deferred is None else "INSERT OR REPLACE"
    with transaction(con):
        con.register("_push_plan_batch", frame)
        try:
            con.execute(f"{insert} INTO push_plan BY NAME SELECT * FROM _push_plan_batch")
        finally:
            con.unregister("_push_plan_batch")


def store_plan(con: duckdb.DuckDBPyConnection, plan: Plan, run_id: str, dry_run: bool) -> None:
    """Keep the plan in ``push_plan`` (a dry run's only write)."""
    _insert_plan(con, plan.changes, run_id, dry_run)
