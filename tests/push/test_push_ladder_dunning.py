"""The escalation ladder follows the dunning (issue 18): its clock starts at the failure,
a decline Stripe will not retry is escalated at once, and a Task never climbs down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from churn.pipelines.push.plan import Episode, Owner, PushedState, ladder, plan_tasks
from churn.settings import PushSettings

AS_OF = datetime(2026, 11, 26, 6, 0, tzinfo=UTC).replace(tzinfo=None)
EXT = "Churn_Episode_Key__c"
SETTINGS = PushSettings()


def _episode(**evidence: object) -> Episode:
    return Episode(
        "payment_failure:in1", "001A", "payment_failure", "high", "Invoice unpaid.", 0.6,
        {"attempts": 1, "final_attempt": 8, **evidence},
    )  # fmt: skip


def test_the_clock_starts_at_the_first_failed_attempt_not_the_first_push() -> None:
    """First seen by the push just now, but failed 30 hours ago: already escalated."""
    failed = (AS_OF - timedelta(hours=30)).isoformat(sep=" ")
    [change] = plan_tasks(
        [_episode(first_failed_at=failed)], {"001A": Owner("005X", True)}, {}, SETTINGS, EXT, AS_OF
    )
    assert str(change.fields["Subject"]).startswith("Escalation: payment still failing")


def test_a_hard_decline_goes_to_the_customer_facing_rung_at_high_priority_at_once() -> None:
    """Smart Retries "doesn't retry payments if ... the issuer returned a hard decline code"
    (docs.stripe.com, Smart Retries): the card will not be retried, so the ladder does not
    wait 24 hours for retries that will not come (44 of 50 such churners sat at "Payment
    failed", Normal, until Stripe canceled them). Red before: rung 0, no priority."""
    rung = ladder(_episode(decline_class="hard"), AS_OF, AS_OF - timedelta(hours=1), SETTINGS)
    assert (rung.stage, rung.priority) == (1, "High")
    soft = ladder(_episode(decline_class="soft"), AS_OF, AS_OF - timedelta(hours=1), SETTINGS)
    assert (soft.stage, soft.priority) == (0, None)


def test_an_open_task_never_climbs_down_the_ladder() -> None:
    """Pushed at the executive-sponsor rung; a later scoring that reads lower (a retry
    rescheduled, an evidence gap) keeps the rung's subject, priority and due date. Red
    before: the Task fell back to "Payment failed"."""
    pushed = PushedState(
        "Task",
        "payment_failure:in1",
        {
            "Subject": "Executive sponsor: final payment retry: Invoice unpaid.",
            "Priority": "High",
            "ActivityDate": "2026-11-25",
            "_stage": "3",
            "_signal": "payment_failure",
        },
        AS_OF - timedelta(hours=12),
        status="open",
        first_seen_at=AS_OF - timedelta(hours=12),
        sf_id="00T000000000001AAA",
    )
    changes = plan_tasks(
        [_episode(first_failed_at=(AS_OF - timedelta(hours=2)).isoformat(sep=" "))],
        {"001A": Owner("005X", True)},
        {"payment_failure:in1": pushed},
        SETTINGS,
        EXT,
        AS_OF,
    )
    for change in changes:
        assert "Subject" not in change.fields and "Priority" not in change.fields
        assert change.state["_stage"] == "3"


def test_no_outreach_while_a_retry_due_has_no_outcome_seen() -> None:
    """80 hours after the failure a CSM would reach out; but Stripe's retry was due an
    hour ago and its outcome has not landed (it may have recovered the payment): the
    episode stays on the escalation rung until it does. Red before: "CSM outreach"."""
    started = AS_OF - timedelta(hours=80)
    due = (AS_OF - timedelta(hours=1)).isoformat(sep=" ")
    pending = ladder(_episode(retry_due_unseen_at=due), AS_OF, started, SETTINGS)
    assert (pending.stage, pending.label) == (1, "Escalation: payment still failing")
    assert ladder(_episode(), AS_OF, started, SETTINGS).stage == 2
