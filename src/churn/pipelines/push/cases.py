"""The Case per payment-failure episode, pure: planned beside the Tasks.

A failed invoice gets a Task at once (:func:`churn.pipelines.push.plan.plan_tasks`); once
its episode reaches the rung ``case.open_at`` names on the escalation ladder (the
escalation rung by default: 24 hours after the first failed attempt, or at once for a
decline Stripe will not retry), a Case opens on the Account and its billing Contact, for
tracking: owner (or queue), record type, priority, origin and status from
:class:`~churn.settings.CaseSettings`; its description holds the failure history (attempts,
dates, decline reasons in words) and the invoice's hosted link. One Case per episode: it
is created by an upsert on ``case.external_id_field`` (the episode key: a resend after a
kill matches it), then updated by its Id (the failure history as it grows, the
priority). When the episode resolves (the invoice paid, voided or marked uncollectible)
the Case is closed (``case.status_closed``) with a description line saying why, in the
same push that closes the Task. A Case deleted in Salesforce is left alone. A payment
recovered before the Case's rung opens no Case.

Registered in the push by one call in :func:`churn.pipelines.push.sync.build_plan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from churn.pipelines.push.billing import (
    CLOSED_BECAUSE,
    Billing,
    contact_line,
    history_lines,
    link_line,
)
from churn.pipelines.push.plan import (
    CASE,
    DELETED,
    SEVERITY_PRIORITY,
    Change,
    Episode,
    Owner,
    PushedState,
    canon,
    close_record,
    episode_started,
    ladder,
    record_change,
)
from churn.settings import CaseSettings, PushSettings
from churn.signals import SIGNALS_BY_NAME, UNKNOWN_RESOLUTION

#: The signal whose episodes get a Case.
CASE_SIGNAL = "payment_failure"
_MAX_TEXT = 255
_MAX_DESCRIPTION = 32_000
#: Fields a later run keeps in step with the episode; Status and Owner are the CSM's once
#: the Case exists (they are sent only when the Case is created or reopened).
_FOLLOWED = ("Subject", "Description", "Priority", "ContactId")


def case_description(episode: Episode, billing: Billing | None) -> str:
    lines = [episode.reason, ""]
    lines += history_lines(billing, episode.evidence.get("attempts"))
    next_try = episode.evidence.get("next_retry_at")
    if next_try:
        lines.append(f"Stripe's next retry: {str(next_try)[:16]} UTC.")
    for line in (contact_line(billing), link_line(billing)):
        if line:
            lines.append(line)
    lines += ["", f"Episode: {episode.episode_key}."]
    return "\n".join(lines)


def plan_cases(
    episodes: Sequence[Episode],
    owners: Mapping[str, Owner],
    state: Mapping[str, PushedState],
    task_state: Mapping[str, PushedState],
    settings: PushSettings,
    case: CaseSettings,
    as_of: datetime,
    billing: Mapping[str, Billing] | None = None,
    last_errors: Mapping[str, str] | None = None,
) -> list[Change]:
    """Case upserts for payment-failure episodes at or past the Case's rung, updates of
    open ones, and closes of those whose episode resolved. ``state`` holds the Cases'
    ``push_state`` rows, ``task_state`` the Tasks' (their first sighting dates an episode
    whose evidence has no failure time)."""
    billing = billing or {}
    last_errors = last_errors or {}
    stage = case.stage
    ext = case.external_id_field
    changes: list[Change] = []
    open_keys: set[str] = set()
    for episode in episodes:
        owner = owners.get(episode.account_id)
        if owner is None or episode.signal != CASE_SIGNAL:
            continue
        open_keys.add(episode.episode_key)
        pushed = state.get(episode.episode_key)
        if pushed is not None and pushed.status == DELETED:
            continue  # deleted in Salesforce: the CSM's answer, not recreated
        if stage is None and (pushed is None or pushed.status != "open"):
            continue
        started = episode_started(episode, task_state.get(episode.episode_key), as_of)
        rung = ladder(episode, as_of, started, settings)
        if pushed is None and (stage is None or rung.stage < stage):
            continue
        paid_by = billing.get(episode.episode_key)
        level = rung.priority or SEVERITY_PRIORITY.get((episode.severity or "").lower(), "Normal")
        desired: dict[str, Any] = {
            ext: episode.episode_key,
            "AccountId": episode.account_id,
            "Subject": f"Payment failed: {episode.reason}"[:_MAX_TEXT],
            "Description": case_description(episode, paid_by)[:_MAX_DESCRIPTION],
            "Priority": case.priorities.get(level, level),
        }
        if paid_by is not None and paid_by.contact is not None:
            desired["ContactId"] = paid_by.contact.contact_id
        if pushed is None or pushed.status == "closed":
            action = "create_case" if pushed is None else "update_case"
            send = {**desired, "Status": case.status_open}
            if pushed is None:
                send["Origin"] = case.origin
                owner_id = case.owner_id or (
                    owner.owner_id if owner.active is not False else settings.fallback_owner_id
                )
                if owner_id:
                    send["OwnerId"] = owner_id
                if case.record_type_id:
                    send["RecordTypeId"] = case.record_type_id
        else:
            action = "update_case"
            send = {
                k: v
                for k, v in desired.items()
                if k in _FOLLOWED and canon(v) != pushed.fields.get(k)
            }
            if not send:
                continue
            send[ext] = episode.episode_key
        new_state = dict(pushed.fields) if pushed else {}
        new_state.update({k: canon(v) for k, v in send.items()})
        new_state["AccountId"] = episode.account_id  # the webhook push's account filter
        changes.append(
            record_change(
                CASE,
                episode.episode_key,
                ext,
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
        if pushed.sobject != CASE or pushed.status != "open" or key in open_keys:
            continue
        paid_by = billing.get(key)
        status = paid_by.invoice_status if paid_by else None
        known = SIGNALS_BY_NAME.get(CASE_SIGNAL)
        why = CLOSED_BECAUSE.get(status or "") or (
            known.resolution if known else UNKNOWN_RESOLUTION
        )
        changes.append(
            close_record(
                pushed, ext, case.status_closed, "close_case", why, as_of.date(), last_errors
            )
        )
    return changes
