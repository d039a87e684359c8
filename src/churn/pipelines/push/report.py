"""The push plan as a person reads it: Account names, old → new values, grouped by action.

A plan is stored in ``push_plan`` (:func:`churn.pipelines.push.sync.store_plan`) with
Salesforce's field names and Ids. :func:`plan_lines` turns one stored plan into
:class:`PlanLine` rows, one per changed field (a Task is one row: its subject), with the
Account's name, the field's label, and the value Salesforce holds now (what the service
last pushed, or the extract's value when the Account was edited since, as the plan
itself decides) beside the new one. :func:`write_plan` exports every line as CSV or JSON;
the run summary and ``churn push --dry-run`` show them grouped, a few per action.

Reads only the warehouse; writes nothing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

import duckdb

from churn.fields import ACCOUNT_FIELDS, Currency, Kind
from churn.settings import Settings
from churn.signals.money import display, to_minor

__all__ = ["PlanLine", "find_plan", "plan_counts", "plan_lines", "write_plan"]

#: The actions in the order they are shown (and sent).
ACTIONS = (
    "update_account", "create_task", "update_task", "close_task",
    "create_case", "update_case", "close_case", "log_timeline",
)  # fmt: skip


@dataclass(frozen=True)
class PlanLine:
    """One planned change of one field (a Task: one line) of one record."""

    action: str
    sobject: str
    record: str  # the Account Id, or the Task's episode key
    account_id: str | None
    account: str  # the Account's name (its Id when the extract has none)
    field: str  # the field's label (Task: Subject, Status, ...)
    old: str
    new: str


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def find_plan(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> str | None:
    """The stored plan's run id: ``run_id`` itself, or the latest planned in the window."""
    if not _table_exists(con, "push_plan"):
        return None
    if run_id is not None:
        return run_id
    row = con.execute(
        "SELECT run_id FROM push_plan WHERE planned_at >= coalesce(?, planned_at)"
        " AND planned_at <= coalesce(?, planned_at) ORDER BY planned_at DESC LIMIT 1",
        [since, until],
    ).fetchone()
    return str(row[0]) if row else None


def plan_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Changes of the stored plan ``run_id`` by action (records, not fields)."""
    rows = con.execute(
        "SELECT action, count(*) FROM push_plan WHERE run_id = ? GROUP BY action", [run_id]
    ).fetchall()
    got = {str(a): int(n) for a, n in rows}
    return {a: got[a] for a in (*ACTIONS, *sorted(set(got) - set(ACTIONS))) if a in got}


def _labels(settings: Settings) -> dict[str, tuple[str, Kind, bool]]:
    """Salesforce field name -> (label, kind, is money) of the owned Account fields."""
    specs = {f.name: f for f in ACCOUNT_FIELDS}
    out = {}
    for logical, api_name in settings.push.account_fields.items():
        spec = specs[logical]
        out[api_name] = (spec.label, spec.kind, isinstance(spec.type, Currency))
    return out


def _show(value: Any, money_in: str | None = None) -> str:
    """A value as text: amounts with their currency, numbers with separators, none as —."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float | Decimal) or (
        isinstance(value, str) and value.replace(".", "", 1).lstrip("-").isdigit()
    ):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return str(value)
        if money_in:
            try:
                return display(to_minor(number, money_in), money_in)
            except (ValueError, TypeError):
                pass
        number = number.normalize()
        if number == number.to_integral_value():
            return f"{int(number):,}"
        return f"{number:,f}"
    return str(value)


def plan_lines(con: duckdb.DuckDBPyConnection, settings: Settings, run_id: str) -> list[PlanLine]:
    """Every change of the stored plan ``run_id``, field by field, with names and values."""
    if not _table_exists(con, "push_plan"):
        return []
    rows = con.execute(
        """
        WITH p AS (
          SELECT p.*, s.fields AS state_fields, s.pushed_at, s.status AS state_status,
                 CASE WHEN p.sobject = 'Account' THEN p.record_key
                      ELSE coalesce(json_extract_string(p.fields, '$.WhatId'),
                                    json_extract_string(s.fields, '$.WhatId'),
                                    json_extract_string(p.fields, '$.AccountId'),
                                    json_extract_string(s.fields, '$.AccountId')) END AS s_acc
          FROM push_plan p
          LEFT JOIN push_state s ON s.sobject = p.sobject AND s.record_key = p.record_key
          WHERE p.run_id = ?
        )
        SELECT p.action, p.sobject, p.record_key, p.s_acc, a.name, p.fields, p.state_fields,
               p.pushed_at, r.payload, r.system_modstamp
        FROM p LEFT JOIN core_accounts a ON a.account_id = p.s_acc
        LEFT JOIN raw_sf_account r ON r.id = p.record_key AND p.sobject = 'Account'
        ORDER BY CASE p.action WHEN 'update_account' THEN 0 WHEN 'create_task' THEN 1
                 WHEN 'update_task' THEN 2 WHEN 'close_task' THEN 3
                 WHEN 'log_timeline' THEN 4 ELSE 5 END,
                 lower(coalesce(a.name, p.s_acc, p.record_key)), p.record_key
        """,
        [run_id],
    ).fetchall()
    labels = _labels(settings)
    currency = settings.signals.reporting_currency.upper()
    external_id = settings.salesforce.task_external_id_field
    out: list[PlanLine] = []
    for action, sobject, record, account_id, name, sent, state, pushed_at, payload, mod in rows:
        new: dict[str, Any] = json.loads(sent) if isinstance(sent, str) else dict(sent or {})
        held: dict[str, Any] = json.loads(state) if isinstance(state, str) else {}
        extracted: dict[str, Any] = json.loads(payload) if isinstance(payload, str) else {}
        # the value Salesforce holds, as the plan decides it (plan.plan_accounts)
        use_sf = bool(extracted) and (pushed_at is None or (mod is not None and mod > pushed_at))
        account = str(name or account_id or record)
        base = {"action": action, "sobject": sobject, "record": record}
        base |= {"account_id": account_id, "account": account}
        if sobject == "Account":
            for api_name, value in new.items():
                label, _, is_money = labels.get(api_name, (api_name, Kind.VALUE, False))
                old = extracted.get(api_name) if use_sf else held.get(api_name)
                if old is None and not use_sf:
                    old = extracted.get(api_name)
                money = currency if is_money else None
                line = PlanLine(**base, field=label, old=_show(old, money), new=_show(value, money))
                out.append(line)
        elif action == "create_task":
            subject = new.get("Subject") or ""
            out.append(PlanLine(**base, field="Task", old="—", new=str(subject)))
        elif action == "log_timeline":  # a plan change on the Account's timeline
            out.append(PlanLine(**base, field="Timeline", old="—", new=str(new.get("Subject"))))
        elif action == "close_task":
            subject = held.get("Subject") or record
            out.append(PlanLine(**base, field="Task closed", old=str(subject), new="Completed"))
        elif action == "create_case":
            out.append(PlanLine(**base, field="Case", old="—", new=str(new.get("Subject") or "")))
        elif action == "close_case":
            subject = held.get("Subject") or record
            status = str(new.get("Status") or settings.case.status_closed)
            out.append(PlanLine(**base, field="Case closed", old=str(subject), new=status))
        else:
            for key, value in new.items():
                if key in (external_id, settings.case.external_id_field):
                    continue
                out.append(PlanLine(**base, field=key, old=_show(held.get(key)), new=_show(value)))
    return out


def write_plan(lines: Sequence[PlanLine], fmt: str, out: TextIO) -> None:
    """Every line, as CSV (a header row) or JSON (an array of objects)."""
    if fmt == "json":
        json.dump([asdict(line) for line in lines], out, indent=1, ensure_ascii=False)
        out.write("\n")
        return
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}: csv or json")
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(PlanLine)])
    writer.writeheader()
    for line in lines:
        writer.writerow(asdict(line))


def grouped(lines: Iterable[PlanLine]) -> Mapping[str, list[list[PlanLine]]]:
    """Per action, the lines of each record together, in plan order."""
    out: dict[str, list[list[PlanLine]]] = {}
    last: tuple[str, str] | None = None
    for line in lines:
        key = (line.action, line.record)
        records = out.setdefault(line.action, [])
        if key != last:
            records.append([])
            last = key
        records[-1].append(line)
    return out
