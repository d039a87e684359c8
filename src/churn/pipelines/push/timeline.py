"""Plan changes on the Account timeline: one completed Task per change, pure.

The changes come from :func:`churn.signals.changes.derive` (history and ``as_of`` in);
this module turns each into a Task creation for the plan: Status the org's closed value
(``push.task_status_closed``), ActivityDate the change's day, WhatId the Account, OwnerId
its owner (the fallback owner when inactive), the change in words as Subject, the ids in
the Description. The Task is upserted on the change key in the Task external-id field
(the prefix ``timeline:`` keeps it apart from the episodes' keys), so a resend after a
kill matches it; once Salesforce accepts it, ``push_state`` holds it with status
:data:`LOGGED` and it is never planned again (a rerun creates none). Nothing here is
ever updated or closed: it records what happened.

Only the kinds in ``push.timeline.kinds`` are logged, only changes within
``push.timeline.window_days`` of ``as_of`` are derived, and only for Accounts Salesforce
has (an unlinked customer's change has nowhere to go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from churn.pipelines.push.plan import TASK, Change, Owner, PushedState, canon, idempotency_key
from churn.settings import PushSettings
from churn.signals.changes import TimelineChange

#: The plan's action for a timeline record.
ACTION = "log_timeline"
#: ``push_state.status`` of a timeline record Salesforce accepted.
LOGGED = "logged"

_MAX_TEXT = 255


def plan_timeline(
    changes: Iterable[TimelineChange],
    owners: Mapping[str, Owner],
    state: Mapping[str, PushedState],
    settings: PushSettings,
    external_id_field: str,
    last_errors: Mapping[str, str] | None = None,
) -> list[Change]:
    """A Task creation per change not logged yet, of a kind the settings keep."""
    last_errors = last_errors or {}
    kinds = set(settings.timeline.kinds)
    out: list[Change] = []
    seen: set[str] = set()
    for change in changes:
        if change.kind not in kinds or change.change_key in seen:
            continue
        seen.add(change.change_key)
        owner = owners.get(change.account_id)
        if owner is None or change.change_key in state:
            continue  # no Account in Salesforce, or logged already
        owner_id = owner.owner_id if owner.active is not False else settings.fallback_owner_id
        send: dict[str, Any] = {
            external_id_field: change.change_key,
            "WhatId": change.account_id,
            "Subject": change.summary[:_MAX_TEXT],
            "Description": (
                f"{change.summary}.\n\nLogged by the churn service from Stripe's history"
                f" ({change.kind.replace('_', ' ')} on {change.day.isoformat()}). {change.detail}"
            ),
            "Status": settings.task_status_closed,
            "Priority": settings.task_priorities.get("Normal", "Normal"),
            "ActivityDate": change.day.isoformat(),
        }
        if owner_id:
            send["OwnerId"] = owner_id
        fields = {k: canon(v) for k, v in send.items()}
        fields["_kind"] = change.kind
        out.append(
            Change(
                sobject=TASK,
                record_key=change.change_key,
                key_field=external_id_field,
                action=ACTION,
                fields=send,
                state=fields,
                status=LOGGED,
                idempotency_key=idempotency_key(TASK, change.change_key, ACTION, send),
                last_error=last_errors.get(change.change_key),
                first_seen_at=change.occurred_at,
            )
        )
    return out
