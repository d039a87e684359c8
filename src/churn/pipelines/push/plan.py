"""The push plan, pure: what Salesforce should hold, against what it was last told.

Inputs are plain values gathered by :mod:`churn.pipelines.push.sync` (the marts, the push state,
the extracted Accounts and Users); the output is a list of :class:`Change`, each with an
idempotency key that depends only on what it writes, so the same change planned twice
(a rerun after a kill) has the same key. No clock, no network, no warehouse here.

Rules:
- only the fields in ``PushSettings.account_fields`` are ever written, and a field only
  when its value differs from what Salesforce holds: our last push, unless the Account was
  modified after it (then the value the extract saw);
- a field whose spec says ``margin`` (the churn risk score) moves only when it differs by
  more than ``risk_score_margin``;
- at most ``max_new_tasks_per_run`` new Tasks, the most urgent first (the rest wait for
  the next run: a first run over a large book does not open every Task at once), and as
  many new Cases, counted apart (:func:`cap_new_tasks` with ``action="create_case"``);
- one Task per signal episode, created by an upsert on ``episode_key`` in the Task
  external-id field (a resend after a kill matches it), then updated by its Id, climbing the
  escalation ladder as the episode ages; a Task whose episode is gone from the latest
  scores is closed with a comment saying why. A Task deleted in Salesforce (``push_state``
  status ``deleted``) is left alone: updating by Id, never upserting, is what keeps a
  later escalation or close from creating a new, partial Task in its place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from churn.fields import AccountField, Text, account_field
from churn.pipelines.push.billing import Billing, task_lines
from churn.settings import CaseSettings, PushSettings
from churn.signals import SIGNALS_BY_NAME, UNKNOWN_RESOLUTION, money

ACCOUNT = "Account"
TASK = "Task"
CASE = "Case"
#: ``push_state.status`` of a Task deleted in Salesforce after the service made it.
DELETED = "deleted"

_MAX_TEXT = 255
_MAX_DESCRIPTION = 32_000

SEVERITY_PRIORITY = {
    "critical": "High",
    "high": "High",
    "medium": "Normal",
    "low": "Low",
    "info": "Low",
}


def minor_to_decimal(amount: int, currency: str) -> Decimal:
    """Minor units to a decimal amount, with the currency's own exponent (JPY 0, KWD 3)."""
    return money.to_decimal(amount, currency)


@dataclass(frozen=True)
class AccountInput:
    """One Account's desired values (logical name -> value) and what the extract saw."""

    account_id: str
    values: Mapping[str, Any]
    sf_values: Mapping[str, Any] | None = None  # Salesforce field name -> value, as extracted
    sf_modstamp: datetime | None = None


@dataclass(frozen=True)
class PushedState:
    """What the service last told Salesforce about one record (a ``push_state`` row)."""

    sobject: str
    record_key: str
    fields: Mapping[str, Any]
    pushed_at: datetime
    status: str | None = None
    first_seen_at: datetime | None = None
    sf_id: str | None = None


@dataclass(frozen=True)
class Episode:
    """One open signal episode (a ``signal_events`` row of the latest scoring)."""

    episode_key: str
    account_id: str
    signal: str
    severity: str | None
    reason: str
    score: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Owner:
    owner_id: str | None
    active: bool | None  # None: the owner's User was not extracted


@dataclass(frozen=True)
class Change:
    """One record to write. ``fields`` is exactly what is sent; ``state`` is what
    ``push_state`` holds for the record once Salesforce accepts it."""

    sobject: str
    record_key: str
    key_field: str  # Id for Accounts, the external-id field for Tasks
    action: str  # update_account | create_task | update_task | close_task
    fields: Mapping[str, Any]
    state: Mapping[str, Any]
    status: str | None
    idempotency_key: str
    last_error: str | None = None
    first_seen_at: datetime | None = None
    #: Salesforce's Id of the record, when ``key_field`` is Id and ``record_key`` is not it.
    sf_id: str | None = None

    @property
    def target(self) -> str:
        """The value of ``key_field`` that names the record in Salesforce."""
        return self.sf_id or self.record_key


@dataclass(frozen=True)
class Plan:
    as_of: datetime | None
    changes: tuple[Change, ...]
    #: New Tasks left for a later run by ``PushSettings.max_new_tasks_per_run``.
    deferred_tasks: int = 0
    #: New Cases left for a later run by the same cap (counted apart from the Tasks).
    deferred_cases: int = 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for change in self.changes:
            out[change.action] = out.get(change.action, 0) + 1
        return out


def canon(value: Any) -> str | None:
    """The comparable text of a field value, equal for equal values whatever their type.

    Salesforce returns numbers as JSON numbers (``42.0``), the marts hold ints and Decimals.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "0") else text
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def idempotency_key(sobject: str, record_key: str, action: str, fields: Mapping[str, Any]) -> str:
    body = json.dumps(
        [sobject, record_key, action, {k: canon(v) for k, v in sorted(fields.items())}],
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _sf_value(spec: AccountField, value: Any) -> Any:
    """A desired value in the form sent to Salesforce: text cut to the field's length,
    dates (and timestamps) as ISO dates."""
    if value is None:
        return None
    if isinstance(spec.type, Text) and isinstance(value, str):
        return value[: spec.type.length]
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _within(desired: Any, held: str | None, margin: int) -> bool:
    """Whether a score is within ``margin`` of the held one (never, when either is unknown)."""
    if desired is None or held is None:
        return False
    try:
        return abs(Decimal(str(desired)) - Decimal(held)) <= margin
    except InvalidOperation:
        return False


def plan_accounts(
    accounts: Iterable[AccountInput],
    state: Mapping[str, PushedState],
    mapping: Mapping[str, str],
    risk_score_margin: int,
    last_errors: Mapping[str, str] | None = None,
) -> list[Change]:
    """Account field updates: only owned fields, only changed values, the score with a margin.

    ``mapping`` is logical name -> Salesforce API name; each logical name is a field of
    :data:`churn.fields.ACCOUNT_FIELDS`, whose spec gives the value's form and margin.
    """
    last_errors = last_errors or {}
    changes = []
    for account in accounts:
        pushed = state.get(account.account_id)
        use_sf = account.sf_values is not None and (
            pushed is None
            or (account.sf_modstamp is not None and account.sf_modstamp > pushed.pushed_at)
        )
        send: dict[str, Any] = {}
        # What Salesforce holds for every owned field once this change is accepted: the
        # fields sent and the ones already right. Recording only the sent ones would make
        # the next run, which trusts push_state over an older extract, re-send the rest.
        confirmed: dict[str, str | None] = {}
        sf_values = account.sf_values or {}
        for logical, sf_field in mapping.items():
            if logical not in account.values:
                continue
            spec = account_field(logical)
            desired = _sf_value(spec, account.values[logical])
            if use_sf and sf_field in sf_values:
                held = canon(sf_values[sf_field])
            elif pushed is not None and sf_field in pushed.fields:
                held = pushed.fields[sf_field]
            elif sf_field in sf_values:
                held = canon(sf_values[sf_field])
            else:
                held = None
            if spec.margin and _within(desired, held, risk_score_margin):
                confirmed[sf_field] = held
                continue
            if canon(desired) != held:
                send[sf_field] = desired
            confirmed[sf_field] = canon(desired)
        if not send:
            continue
        new_state = dict(pushed.fields) if pushed else {}
        new_state.update(confirmed)
        changes.append(
            Change(
                sobject=ACCOUNT,
                record_key=account.account_id,
                key_field="Id",
                action="update_account",
                fields=send,
                state=new_state,
                status=None,
                idempotency_key=idempotency_key(
                    ACCOUNT, account.account_id, "update_account", send
                ),
                last_error=last_errors.get(account.account_id),
            )
        )
    return changes


def _instant(value: Any) -> datetime | None:
    """A naive-UTC datetime from evidence (ISO text or Unix seconds), None when absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return None


def _first(evidence: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if evidence.get(key) is not None:
            return evidence[key]
    return None


@dataclass(frozen=True)
class Rung:
    """A rung of the escalation ladder: its label, priority override and due date."""

    stage: int
    label: str
    due: date
    priority: str | None


def ladder(episode: Episode, as_of: datetime, started_at: datetime, settings: PushSettings) -> Rung:
    """Where an episode stands on the escalation ladder at ``as_of``.

    The ladder is the one the episode's signal names in the registry. ``dunning`` follows
    Stripe's retries: a Task at once; after
    ``escalate_after_hours`` without recovery it escalates; after ``outreach_after_hours``
    a CSM reaches out, unless a retry Stripe was due to make before ``as_of`` has no
    outcome seen yet (the evidence's ``retry_due_unseen_at``: it may have recovered the
    payment; the episode stays on the escalation rung); a decline Stripe will not retry
    (the evidence's ``decline_class`` ``hard``) is on the escalation rung at once, High;
    when the next retry is Stripe's last (the evidence's ``final_attempt``, else
    ``dunning_attempts``) and comes within
    ``sponsor_before_final_retry_hours``, an executive sponsor is flagged. ``flat`` (and
    a signal the registry no longer knows) sits on the first rung, due ``task_due_days``
    after as_of.
    """
    today = as_of.date()
    signal = SIGNALS_BY_NAME.get(episode.signal)
    if signal is None or signal.ladder != "dunning":
        return Rung(0, _label(episode.signal), today + timedelta(days=settings.task_due_days), None)
    hours = (as_of - started_at).total_seconds() / 3600
    attempts = _first(episode.evidence, "attempts", "attempt_count")
    next_try = _instant(_first(episode.evidence, "next_payment_attempt", "next_retry_at"))
    # The signal names the account's last try (signals.payment_retry_attempts) in its
    # evidence; episodes scored before it did fall back to dunning_attempts.
    final = _first(episode.evidence, "final_attempt")
    last_try = final if isinstance(final, int) and final > 0 else settings.dunning_attempts
    final_next = isinstance(attempts, int) and attempts >= last_try - 1
    retries_spent = isinstance(attempts, int) and attempts >= last_try
    # A decline Stripe will not retry (Smart Retries "doesn't retry payments if ... the
    # issuer returned a hard decline code": lost, stolen, fraudulent...) waits for no
    # retry: straight to the customer-facing rung, High, at once.
    hard = episode.evidence.get("decline_class") == "hard"
    if retries_spent or (
        final_next
        and next_try is not None
        and (next_try - as_of).total_seconds() / 3600 <= settings.sponsor_before_final_retry_hours
    ):
        return Rung(3, "Executive sponsor: final payment retry", today, "High")
    # A retry Stripe made (due before as_of) whose outcome is not seen yet may have
    # recovered the payment: no outreach on it until the outcome lands.
    outcome_pending = _instant(episode.evidence.get("retry_due_unseen_at")) is not None
    if hours >= settings.outreach_after_hours and not outcome_pending:
        due = max(next_try.date(), today) if next_try else today + timedelta(days=1)
        return Rung(2, "CSM outreach: payment still failing", due, "High")
    if hours >= settings.escalate_after_hours:
        due = (started_at + timedelta(hours=settings.outreach_after_hours)).date()
        return Rung(1, "Escalation: payment still failing", max(due, today), "High")
    if hard:
        return Rung(1, "Escalation: card declined, Stripe will not retry it", today, "High")
    due = (started_at + timedelta(hours=settings.escalate_after_hours)).date()
    return Rung(0, "Payment failed", max(due, today), None)


def episode_started(episode: Episode, pushed: PushedState | None, as_of: datetime) -> datetime:
    """When the episode's escalation clock started: the failure's own time from the
    evidence (payment_failure's ``first_failed_at``), else when the service first saw it,
    else ``as_of``."""
    return (
        _instant(_first(episode.evidence, "first_failed_at", "failed_at", "started_at", "since"))
        or (pushed.first_seen_at if pushed else None)
        or as_of
    )


def _held_stage(pushed: PushedState | None) -> int | None:
    """The ladder rung an open record was last pushed at (``_stage`` in its state)."""
    if pushed is None or pushed.status != "open":
        return None
    try:
        return int(str(pushed.fields.get("_stage")))
    except ValueError:
        return None


def _label(signal: str) -> str:
    return signal.replace("_", " ").capitalize()


def _resolution(signal: str) -> str:
    known = SIGNALS_BY_NAME.get(signal)
    return known.resolution if known else UNKNOWN_RESOLUTION


def plan_tasks(
    episodes: Sequence[Episode],
    owners: Mapping[str, Owner],
    state: Mapping[str, PushedState],
    settings: PushSettings,
    external_id_field: str,
    as_of: datetime,
    last_errors: Mapping[str, str] | None = None,
    billing: Mapping[str, Billing] | None = None,
) -> list[Change]:
    """Task upserts for open episodes and closes for resolved ones.

    ``owners`` holds the Accounts Salesforce has (Account Id -> owner); an episode of an
    account not there (an unlinked Stripe customer) has nowhere to go and is skipped.
    ``billing`` (episode key -> :class:`~churn.pipelines.push.billing.Billing`): the
    billing Contact (the Task's WhoId) and the invoice's link, named in the description.
    A Task never climbs down the ladder: once pushed at a rung, a later scoring that puts
    the episode lower keeps the rung's subject, priority and due date.
    """
    last_errors = last_errors or {}
    billing = billing or {}
    changes: list[Change] = []
    open_keys = set()
    for episode in episodes:
        owner = owners.get(episode.account_id)
        if owner is None:
            continue
        open_keys.add(episode.episode_key)
        if episode.signal not in settings.task_signals:
            continue  # not tasked; still open, so a Task made under older settings stays
        pushed = state.get(episode.episode_key)
        if pushed is not None and pushed.status == DELETED:
            continue  # deleted in Salesforce: the CSM's answer, not recreated
        started = episode_started(episode, pushed, as_of)
        rung = ladder(episode, as_of, started, settings)
        level = rung.priority or SEVERITY_PRIORITY.get((episode.severity or "").lower(), "Normal")
        priority = settings.task_priorities.get(level, level)
        owner_id = owner.owner_id if owner.active is not False else settings.fallback_owner_id
        paid_by = billing.get(episode.episode_key)
        desired: dict[str, Any] = {
            external_id_field: episode.episode_key,
            "WhatId": episode.account_id,
            "Subject": f"{rung.label}: {episode.reason}"[:_MAX_TEXT],
            "Description": _description(episode, paid_by)[:_MAX_DESCRIPTION],
            "Priority": priority,
            "ActivityDate": rung.due.isoformat(),
        }
        stage = rung.stage
        held = _held_stage(pushed)
        if held is not None and pushed is not None and held > rung.stage:
            stage = held
            for name in ("Subject", "Priority", "ActivityDate"):
                if pushed.fields.get(name) is not None:
                    desired[name] = pushed.fields[name]
        if owner_id:
            desired["OwnerId"] = owner_id
        if paid_by is not None and paid_by.contact is not None:
            desired["WhoId"] = paid_by.contact.contact_id
        if pushed is None or pushed.status == "closed":
            action = "create_task" if pushed is None else "update_task"
            send = {**desired, "Status": settings.task_status_open}
        else:
            action = "update_task"
            send = {k: v for k, v in desired.items() if canon(v) != pushed.fields.get(k)}
            if not send:
                continue
            send[external_id_field] = episode.episode_key
        new_state = dict(pushed.fields) if pushed else {}
        new_state.update({k: canon(v) for k, v in send.items()})
        new_state["_signal"] = episode.signal  # says why, when the Task is closed
        new_state["_stage"] = str(stage)  # the rung, which a Task never climbs down
        changes.append(
            record_change(
                TASK,
                episode.episode_key,
                external_id_field,
                action,
                send,
                new_state,
                "open",
                last_errors,
                pushed.first_seen_at if pushed and pushed.first_seen_at else as_of,
                pushed.sf_id if pushed else None,
            )
        )
    for key, pushed in sorted(state.items()):
        if pushed.sobject != TASK or pushed.status != "open" or key in open_keys:
            continue
        why = _resolution(str(pushed.fields.get("_signal") or ""))
        changes.append(
            close_record(
                pushed,
                external_id_field,
                settings.task_status_closed,
                "close_task",
                why,
                as_of.date(),
                last_errors,
            )
        )
    return changes


def close_record(
    pushed: PushedState,
    external_id_field: str,
    status: str,
    action: str,
    why: str,
    day: date,
    last_errors: Mapping[str, str],
) -> Change:
    """A Task's or a Case's close: its closed ``status`` and a line on its description
    saying when and why."""
    description = (pushed.fields.get("Description") or "") + (
        f"\n\nClosed by the churn service on {day.isoformat()}: {why}."
    )
    send = {
        external_id_field: pushed.record_key,
        "Status": status,
        "Description": description[:_MAX_DESCRIPTION],
    }
    new_state = {**pushed.fields, **{k: canon(v) for k, v in send.items()}}
    return record_change(
        pushed.sobject, pushed.record_key, external_id_field, action, send, new_state,
        "closed", last_errors, pushed.first_seen_at, pushed.sf_id,
    )  # fmt: skip


def record_change(
    sobject: str,
    key: str,
    external_id_field: str,
    action: str,
    send: dict[str, Any],
    new_state: dict[str, Any],
    status: str,
    last_errors: Mapping[str, str],
    first_seen_at: datetime | None,
    sf_id: str | None = None,
) -> Change:
    """A Task's or a Case's change: created by an upsert on its external id (a resend after
    a kill matches it), then updated by its Id."""
    return Change(
        sobject=sobject,
        record_key=key,
        # A record Salesforce has answered for is updated by its Id: an update of a deleted
        # one fails with ENTITY_IS_DELETED where an upsert would create a new one.
        key_field="Id" if sf_id else external_id_field,
        sf_id=sf_id,
        action=action,
        fields=send,
        state=new_state,
        status=status,
        idempotency_key=idempotency_key(sobject, key, action, send),
        last_error=last_errors.get(key),
        first_seen_at=first_seen_at,
    )


#: Calls a Bulk API 2.0 job takes at most (create, upload, close, polls, results), as
#: the push's meter reserves them.
BULK_JOB_CALLS = 10


def estimate_calls(plan: Plan, settings: PushSettings) -> int:
    """The API calls sending ``plan`` takes: the Organization check, a Task describe when
    Tasks are written, one sObject Collections call per ``collection_size`` records of an
    object and key, or a Bulk API 2.0 job above ``bulk_threshold``. No changes: none."""
    if not plan.changes:
        return 0
    groups: dict[tuple[str, str], int] = {}
    for change in plan.changes:
        key = (change.sobject, change.key_field)
        groups[key] = groups.get(key, 0) + 1
    calls = 1 + (1 if any(sobject == TASK for sobject, _ in groups) else 0)
    calls += 1 if any(sobject == CASE for sobject, _ in groups) else 0  # the Case describe
    for n in groups.values():
        if n > settings.bulk_threshold:
            calls += BULK_JOB_CALLS
        else:
            calls += -(-n // settings.collection_size)
    return calls


#: Why every open Task and Case is closed by ``churn push --close-open-tasks``.
CLOSED_BY_OPERATOR = (
    "the service's open Tasks and Cases were closed by an operator (churn push --close-open-tasks)"
)


def close_all_tasks(
    state: Iterable[PushedState],
    settings: PushSettings,
    external_id_field: str,
    today: date,
    case: CaseSettings | None = None,
) -> Plan:
    """A plan closing every Task the service has open (``push_state`` status ``open``),
    and every Case when ``case`` is given (with its closed status, by its external id),
    with a sentence saying why: the way back when the service is taken out of an org.
    Records deleted in Salesforce or already closed are left alone."""
    closing = {TASK: (external_id_field, settings.task_status_closed, "close_task")}
    if case is not None:
        closing[CASE] = (case.external_id_field, case.status_closed, "close_case")
    changes = []
    for pushed in sorted(state, key=lambda p: (p.sobject != TASK, p.sobject, p.record_key)):
        if pushed.sobject not in closing or pushed.status != "open":
            continue
        ext, status, action = closing[pushed.sobject]
        changes.append(close_record(pushed, ext, status, action, CLOSED_BY_OPERATOR, today, {}))
    return Plan(as_of=None, changes=tuple(changes))


_SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


def cap_new_tasks(
    changes: Sequence[Change],
    episodes: Sequence[Episode],
    cap: int,
    action: str = "create_task",
) -> tuple[list[Change], int]:
    """Keep at most ``cap`` creations (``action``: Tasks, or ``create_case``; 0: all), the
    most urgent first: by severity, then score, then episode key. Returns the changes kept
    and how many were left out; those are not in ``push_state``, so the next run plans
    them again."""
    creates = [c for c in changes if c.action == action]
    if cap <= 0 or len(creates) <= cap:
        return list(changes), 0
    by_key = {e.episode_key: e for e in episodes}

    def urgency(change: Change) -> tuple[int, float, str]:
        episode = by_key.get(change.record_key)
        severity = (episode.severity or "").lower() if episode else ""
        score = episode.score if episode and episode.score is not None else 0.0
        return (_SEVERITY_RANK.get(severity, 5), -float(score), change.record_key)

    kept = {c.record_key for c in sorted(creates, key=urgency)[:cap]}
    out = [c for c in changes if c.action != action or c.record_key in kept]
    return out, len(creates) - cap


def _description(episode: Episode, billing: Billing | None = None) -> str:
    severity = f", severity {episode.severity}" if episode.severity else ""
    extra = "".join(f"\n{line}" for line in task_lines(billing))
    return (
        f"{episode.reason}\n\nSignal: {episode.signal}{severity}. Episode: {episode.episode_key}."
        + (f"\n{extra}" if extra else "")
    )


def make_plan(
    *,
    accounts: Iterable[AccountInput],
    episodes: Sequence[Episode],
    owners: Mapping[str, Owner],
    state: Iterable[PushedState],
    settings: PushSettings,
    task_external_id_field: str,
    as_of: datetime | None,
    last_errors: Mapping[tuple[str, str], str] | None = None,
    billing: Mapping[str, Billing] | None = None,
) -> Plan:
    """The whole plan: Account updates first, then Task upserts and closes."""
    last_errors = last_errors or {}
    by_kind: dict[str, dict[str, PushedState]] = {ACCOUNT: {}, TASK: {}}
    for row in state:
        by_kind.setdefault(row.sobject, {})[row.record_key] = row
    errors_of = {
        kind: {key: msg for (sobject, key), msg in last_errors.items() if sobject == kind}
        for kind in (ACCOUNT, TASK)
    }
    changes = plan_accounts(
        accounts,
        by_kind[ACCOUNT],
        settings.account_fields,
        settings.risk_score_margin,
        errors_of[ACCOUNT],
    )
    deferred = 0
    if as_of is not None:
        tasks, deferred = cap_new_tasks(
            plan_tasks(
                episodes,
                owners,
                by_kind[TASK],
                settings,
                task_external_id_field,
                as_of,
                errors_of[TASK],
                billing,
            ),
            episodes,
            settings.max_new_tasks_per_run,
        )
        changes += tasks
    return Plan(as_of=as_of, changes=tuple(changes), deferred_tasks=deferred)


#: Salesforce's answers about one field rather than the record: the record is resent
#: without it and the field is blocked until its metadata changes.
FIELD_ERRORS = frozenset(
    {
        "INVALID_FIELD_FOR_INSERT_UPDATE",  # read-only, or field-level security
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",  # the picklist lacks the value
        "INVALID_FIELD",  # no such field (deleted, or hidden from the integration user)
    }
)
#: Answers that say nothing about the next attempt: never backed off.
TRANSIENT_ERRORS = frozenset({"UNABLE_TO_LOCK_ROW", "UNPROCESSED", *FIELD_ERRORS})


def without_fields(change: Change, fields: Iterable[str]) -> Change | None:
    """The change with ``fields`` left out (None when nothing else is left to write).

    The state forgets the fields left out, so a later run compares them with what the
    extract saw in Salesforce, not with a value Salesforce never accepted.
    """
    drop = (set(fields) & set(change.fields)) - {change.key_field}
    if not drop:
        return change
    send = {k: v for k, v in change.fields.items() if k not in drop}
    if not set(send) - {change.key_field}:
        return None
    state = {k: v for k, v in change.state.items() if k not in drop}
    return dataclasses.replace(
        change,
        fields=send,
        state=state,
        idempotency_key=idempotency_key(change.sobject, change.record_key, change.action, send),
    )


def strip_blocked(
    changes: Iterable[Change], blocked: Iterable[tuple[str, str]]
) -> tuple[list[Change], dict[tuple[str, str], int]]:
    """Leave blocked fields ((sobject, field)) out of every change; per field, how many
    records it cost (changes that would have written it)."""
    by_object: dict[str, set[str]] = {}
    for sobject, name in blocked:
        by_object.setdefault(sobject, set()).add(name)
    out: list[Change] = []
    cost: dict[tuple[str, str], int] = {}
    for change in changes:
        hit = by_object.get(change.sobject, set()) & set(change.fields)
        hit.discard(change.key_field)
        if not hit:
            out.append(change)
            continue
        for name in hit:
            cost[(change.sobject, name)] = cost.get((change.sobject, name), 0) + 1
        kept = without_fields(change, hit)
        if kept is not None:
            out.append(kept)
    return out, cost


def runs_to_wait(failures: int) -> int:
    """Backoff of a change rejected ``failures`` times in a row (same record, same values):
    it is sent again 1, 2, 4, 8... push runs after its last rejection (at most 64): the
    first retry is the next run, as before; a record that keeps failing the same way is
    not resent on every run."""
    return int(min(2 ** max(failures - 1, 0), 64))
