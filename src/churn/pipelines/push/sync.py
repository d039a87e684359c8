"""`churn push`: gather the plan's inputs from the warehouse, plan, check safety, apply.

Reads the marts ``account_health`` and ``signal_events`` (their latest ``as_of``), the
extracted Accounts and Users, and ``push_state``/``push_log``; hands them to the pure
:mod:`churn.pipelines.push.plan`; stores the plan in ``push_plan``; and, unless a dry run,
sends it with :mod:`churn.pipelines.push.apply`. Nothing to change means no call at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import duckdb
import polars as pl
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ProductionSafetyError, PushError
from churn.pipelines.push.apply import (
    Rejection,
    apply_plan,
    attach_meter,
    call_error,
    json_body,
)
from churn.pipelines.push.plan import (
    AccountInput,
    Episode,
    Owner,
    Plan,
    PushedState,
    make_plan,
)
from churn.pipelines.push.values import account_values
from churn.settings import Settings
from churn.warehouse import transaction, utcnow


@dataclass
class PushResult:
    run_id: str
    dry_run: bool
    plan: Plan
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    rejected: list[Rejection] = field(default_factory=list)


def push(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    dry_run: bool = False,
    salesforce: Salesforce | None = None,
    connect: Callable[[], Salesforce] | None = None,
    scores: Scores | None = None,
) -> PushResult:
    """Plan and (unless ``dry_run``) apply the push. ``salesforce`` or ``connect`` give the
    client; by default one is made from ``settings.salesforce`` when there is work to do.
    ``scores``: push only these accounts, from these tables (the webhook worker's)."""
    run_id = f"push-{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    plan = build_plan(settings, con, scores)
    store_plan(con, plan, run_id, dry_run)
    result = PushResult(run_id, dry_run, plan, counts={"planned": len(plan.changes)})
    result.counts.update({f"planned_{k}": v for k, v in plan.counts().items()})
    if dry_run or not plan.changes:
        return result
    started = utcnow()
    _log_run(con, run_id, started, "running", result)
    sf = salesforce or (connect or _default_connect(settings))()
    meter, detach = attach_meter(sf, settings.salesforce.api_reserve)
    try:
        meter.check(1, "the Organization safety query")
        check_safety(settings, con, sf)
        outcome = apply_plan(sf, con, plan.changes, settings, run_id, meter)
    except Exception as exc:
        result.api_calls = meter.calls
        _log_run(con, run_id, started, "failed", result, error=str(exc))
        raise
    finally:
        result.api_calls = meter.calls
        detach()
    result.counts.update(outcome.counts)
    result.rejected = outcome.rejected
    _log_run(con, run_id, started, "partial" if result.rejected else "success", result)
    return result


def _log_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    started: datetime,
    status: str,
    result: PushResult,
    error: str | None = None,
) -> None:
    """The push's row in ``run_log`` (running, then success / partial / failed)."""
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
            SELECT h.*, r.payload AS _sf_payload, r.system_modstamp AS _sf_modstamp,
                   g.ids AS _guessed_customer_ids, f.ids AS _field_customer_ids
            FROM {health} h
            JOIN core_accounts a ON a.account_id = h.account_id AND NOT a.is_deleted
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
    state = [
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
            "FROM push_state"
            + (
                ""
                if scores is None
                else " WHERE (CASE WHEN sobject = 'Account' THEN record_key"
                " ELSE fields->>'WhatId' END) IN (SELECT unnest($ids::VARCHAR[]))"
            ),
            params,
        ).fetchall()
    ]
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
    return make_plan(
        accounts=accounts,
        episodes=episodes,
        owners=owners,
        state=state,
        settings=settings.push,
        task_external_id_field=settings.salesforce.task_external_id_field,
        as_of=as_of,
        last_errors=last_errors,
    )


def store_plan(con: duckdb.DuckDBPyConnection, plan: Plan, run_id: str, dry_run: bool) -> None:
    """Keep the plan in ``push_plan`` (a dry run's only write)."""
    if not plan.changes:
        return
    unique = {c.idempotency_key: c for c in plan.changes}.values()
    frame = pl.DataFrame(
        {
            "run_id": [run_id] * len(unique),
            "planned_at": [utcnow()] * len(unique),
            "dry_run": [dry_run] * len(unique),
            "idempotency_key": [c.idempotency_key for c in unique],
            "sobject": [c.sobject for c in unique],
            "record_key": [c.record_key for c in unique],
            "action": [c.action for c in unique],
            "fields": [json_body(dict(c.fields)) for c in unique],
            "last_error": [c.last_error for c in unique],
        },
        schema_overrides={"last_error": pl.Utf8, "planned_at": pl.Datetime("us")},
    )
    with transaction(con):
        con.register("_push_plan_batch", frame)
        con.execute("INSERT INTO push_plan BY NAME SELECT * FROM _push_plan_batch")
        con.unregister("_push_plan_batch")
