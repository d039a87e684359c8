"""The push plan (pure): owned fields only, changed values only, the ladder, closing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from churn.fields import ACCOUNT_FIELDS, AccountField, Date, Picklist, Text, account_field
from churn.pipelines.push.plan import (
    ACCOUNT,
    TASK,
    AccountInput,
    Episode,
    Owner,
    PushedState,
    canon,
    make_plan,
    minor_to_decimal,
    plan_accounts,
    plan_tasks,
)
from churn.settings import PushSettings

AS_OF = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).replace(tzinfo=None)  # naive UTC
SETTINGS = PushSettings(fallback_owner_id="005FALLBACK")
MAPPING = SETTINGS.account_fields
EXT = "Churn_Episode_Key__c"


def _sample(spec: AccountField) -> object:
    """A value that fits a field's type (for fields the tests below do not name)."""
    t = spec.type
    if isinstance(t, Picklist):
        return t.values[0]
    if isinstance(t, Date):
        return date(2026, 12, 31)
    if isinstance(t, Text):
        return "text"
    return Decimal(1).scaleb(-t.scale)


def _values(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "payment_health": "Failed",
        "risk_score": 60,
        "total_mrr": Decimal("1234.50"),
        "next_renewal_date": date(2026, 12, 31),
        "days_since_last_payment": 40,
        "subscription_count": 2,
        "stripe_customer_id": "cus_1",
        "top_reason": "Invoice failed twice",
    }
    base = {f.name: base.get(f.name, _sample(f)) for f in ACCOUNT_FIELDS}
    base.update(over)
    return base


def _state(key: str, fields: dict[str, object], **kw: object) -> PushedState:
    return PushedState(
        sobject=str(kw.pop("sobject", ACCOUNT)),
        record_key=key,
        fields={k: canon(v) for k, v in fields.items()},
        pushed_at=AS_OF - timedelta(hours=1),
        **kw,  # type: ignore[arg-type]
    )


def test_money_uses_the_currency_exponent() -> None:
    assert minor_to_decimal(123450, "usd") == Decimal("1234.50")
    assert minor_to_decimal(1234, "JPY") == Decimal(1234)
    assert minor_to_decimal(1234, "kwd") == Decimal("1.234")


def test_canon_equates_salesforce_numbers_with_ours() -> None:
    assert canon(42.0) == canon(42) == "42"
    assert canon(1234.5) == canon(Decimal("1234.50"))
    assert canon(date(2026, 1, 2)) == "2026-01-02"


def test_first_push_writes_every_owned_field_and_only_those() -> None:
    mapping = {k: v for k, v in MAPPING.items() if k != "top_reason"}
    [change] = plan_accounts([AccountInput("001A", _values())], {}, mapping, 5)
    assert set(change.fields) == set(mapping.values())
    assert change.fields["Total_MRR__c"] == Decimal("1234.50")
    assert change.fields["Next_Renewal_Date__c"] == "2026-12-31"
    assert change.key_field == "Id" and change.action == "update_account"


def test_nothing_changed_plans_nothing() -> None:
    desired = {MAPPING[k]: v for k, v in _values().items()}
    desired["Next_Renewal_Date__c"] = "2026-12-31"
    state = {"001A": _state("001A", desired)}
    assert plan_accounts([AccountInput("001A", _values())], state, MAPPING, 5) == []


def test_only_the_changed_field_is_written() -> None:
    desired = {MAPPING[k]: v for k, v in _values().items()}
    desired["Next_Renewal_Date__c"] = "2026-12-31"
    state = {"001A": _state("001A", desired)}
    [change] = plan_accounts(
        [AccountInput("001A", _values(payment_health="Healthy"))], state, MAPPING, 5
    )
    assert dict(change.fields) == {"Payment_Health__c": "Healthy"}
    assert change.state["Payment_Health__c"] == "Healthy"
    assert change.state["Churn_Risk__c"] == "60"


def test_risk_score_moves_only_past_the_margin() -> None:
    state = {"001A": _state("001A", {"Churn_Risk__c": 60})}
    mapping = {"risk_score": "Churn_Risk__c"}
    within = plan_accounts([AccountInput("001A", {"risk_score": 65})], state, mapping, 5)
    past = plan_accounts([AccountInput("001A", {"risk_score": 66})], state, mapping, 5)
    assert within == []
    assert dict(past[0].fields) == {"Churn_Risk__c": 66}


def test_salesforce_edit_after_our_push_is_the_baseline() -> None:
    mapping = {"payment_health": "Payment_Health__c"}
    state = {"001A": _state("001A", {"Payment_Health__c": "Failed"})}
    edited = AccountInput(
        "001A",
        {"payment_health": "Failed"},
        sf_values={"Payment_Health__c": "Healthy"},
        sf_modstamp=AS_OF,
    )
    stale = AccountInput(
        "001A",
        {"payment_health": "Failed"},
        sf_values={"Payment_Health__c": "Healthy"},
        sf_modstamp=AS_OF - timedelta(days=1),
    )
    assert [c.fields for c in plan_accounts([edited], state, mapping, 5)] == [
        {"Payment_Health__c": "Failed"}
    ]
    assert plan_accounts([stale], state, mapping, 5) == []


def test_a_field_salesforce_already_held_is_not_resent_after_a_push() -> None:
    """The demo's second run re-sent Stripe_Customer_Id__c: the first plan skipped it
    (Salesforce held it already) and push_state recorded only the sent fields, so the
    next run, trusting push_state over an older extract, saw it as missing."""
    mapping = {"payment_health": "Payment_Health__c", "stripe_customer_id": "Stripe_Customer_Id__c"}
    values = {"payment_health": "Failed", "stripe_customer_id": "cus_1"}
    seen = {"Payment_Health__c": "Healthy", "Stripe_Customer_Id__c": "cus_1"}
    first = AccountInput("001A", values, sf_values=seen, sf_modstamp=AS_OF - timedelta(days=1))
    [change] = plan_accounts([first], {}, mapping, 5)
    assert dict(change.fields) == {"Payment_Health__c": "Failed"}
    assert change.state["Stripe_Customer_Id__c"] == "cus_1"
    state = {"001A": PushedState(ACCOUNT, "001A", change.state, AS_OF)}
    # The next extract saw our write; its modstamp is a moment before pushed_at.
    after = AccountInput(
        "001A",
        values,
        sf_values={**seen, "Payment_Health__c": "Failed"},
        sf_modstamp=AS_OF - timedelta(seconds=1),
    )
    assert plan_accounts([after], state, mapping, 5) == []
    # A push_state from before the field was mapped falls back to the extracted value.
    old = {"001A": PushedState(ACCOUNT, "001A", {"Payment_Health__c": "Failed"}, AS_OF)}
    assert plan_accounts([after], old, mapping, 5) == []


def test_idempotency_key_is_stable_and_depends_on_the_values() -> None:
    a = plan_accounts([AccountInput("001A", _values())], {}, MAPPING, 5)[0]
    b = plan_accounts([AccountInput("001A", _values())], {}, MAPPING, 5)[0]
    c = plan_accounts([AccountInput("001A", _values(risk_score=90))], {}, MAPPING, 5)[0]
    assert a.idempotency_key == b.idempotency_key != c.idempotency_key


def _failure(key: str = "pf:in_1", **evidence: object) -> Episode:
    return Episode(key, "001A", "payment_failure", "high", "Invoice in_1 failed", 0.8, evidence)


def _tasks(episodes: list[Episode], state: dict[str, PushedState] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    owners = kw.pop("owners", {"001A": Owner("005OWNER", True)})
    return plan_tasks(episodes, owners, state or {}, SETTINGS, EXT, AS_OF)  # type: ignore[arg-type]


def test_payment_failure_creates_a_task_at_once_for_the_owner() -> None:
    [change] = _tasks([_failure(failed_at=AS_OF.isoformat())])
    assert change.action == "create_task" and change.key_field == EXT
    f = change.fields
    assert f[EXT] == "pf:in_1" and f["WhatId"] == "001A" and f["OwnerId"] == "005OWNER"
    assert f["Status"] == "Not Started" and f["Priority"] == "High"
    assert f["Subject"].startswith("Payment failed")
    assert f["ActivityDate"] == "2026-11-27"  # due when it would escalate


def test_ladder_climbs_with_the_hours() -> None:
    def subject(hours: int, **ev: object) -> str:
        started = (AS_OF - timedelta(hours=hours)).isoformat()
        [c] = _tasks([_failure(failed_at=started, **ev)])
        return str(c.fields["Subject"])

    assert subject(2).startswith("Payment failed")
    assert subject(25).startswith("Escalation")
    assert subject(73).startswith("CSM outreach")
    final = (AS_OF + timedelta(hours=24)).isoformat()
    assert subject(73, attempt_count=3, next_payment_attempt=final).startswith("Executive")
    far = (AS_OF + timedelta(days=5)).isoformat()
    assert subject(73, attempt_count=3, next_payment_attempt=far).startswith("CSM")


def test_inactive_owner_gets_the_fallback() -> None:
    [change] = _tasks([_failure()], owners={"001A": Owner("005GONE", False)})
    assert change.fields["OwnerId"] == "005FALLBACK"


def test_unlinked_account_gets_no_task() -> None:
    assert _tasks([Episode("x", "cus_9", "payment_failure", "high", "r")]) == []


def test_expansion_is_not_tasked_unless_configured_and_an_old_task_is_left_open() -> None:
    owners = {"001A": Owner("005A", True)}
    lead = Episode("seat_expansion:001A", "001A", "seat_expansion", "info", "All 5 seats used")
    assert plan_tasks([lead], owners, {}, SETTINGS, EXT, AS_OF) == []
    opted = SETTINGS.model_copy(update={"task_signals": (*SETTINGS.task_signals, "seat_expansion")})
    [created] = plan_tasks([lead], owners, {}, opted, EXT, AS_OF)
    assert created.action == "create_task"
    # Made under the old settings and still open: neither rewritten nor closed as resolved.
    pushed = {lead.episode_key: _state(lead.episode_key, dict(created.state), sobject=TASK,
                                       status="Not Started")}  # fmt: skip
    assert plan_tasks([lead], owners, pushed, SETTINGS, EXT, AS_OF) == []


def test_unchanged_task_is_not_rewritten_and_resolved_one_is_closed() -> None:
    [created] = _tasks([_failure(failed_at=AS_OF.isoformat())])
    state = {
        "pf:in_1": PushedState(
            TASK, "pf:in_1", created.state, AS_OF, status="open", first_seen_at=AS_OF
        )
    }
    assert _tasks([_failure(failed_at=AS_OF.isoformat())], state) == []
    [closed] = _tasks([], state)
    assert closed.action == "close_task" and closed.status == "closed"
    assert closed.fields["Status"] == "Completed"
    assert "invoice was paid" in closed.fields["Description"]


def test_make_plan_orders_accounts_before_tasks_and_carries_last_errors() -> None:
    plan = make_plan(
        accounts=[AccountInput("001A", _values())],
        episodes=[_failure()],
        owners={"001A": Owner("005OWNER", True)},
        state=[],
        settings=SETTINGS,
        task_external_id_field=EXT,
        as_of=AS_OF,
        last_errors={(ACCOUNT, "001A"): "FIELD_CUSTOM_VALIDATION_EXCEPTION: no"},
    )
    assert [c.sobject for c in plan.changes] == [ACCOUNT, TASK]
    assert plan.changes[0].last_error is not None
    assert plan.counts() == {"update_account": 1, "create_task": 1}


_STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    "payment_health": st.sampled_from(["Failed", "At Risk", "No Payment Method", "Healthy"]),
    "risk_score": st.integers(0, 100),
    "total_mrr": st.integers(0, 10**12).map(lambda m: minor_to_decimal(m, "usd")),
    "next_renewal_date": st.none() | st.dates(date(2020, 1, 1), date(2040, 1, 1)),
    "days_since_last_payment": st.none() | st.integers(0, 5000),
    "subscription_count": st.integers(0, 50),
    "stripe_customer_id": st.text(min_size=1, max_size=30),
    "top_reason": st.none() | st.text(max_size=300),
}


def _strategy(spec: AccountField) -> st.SearchStrategy[object]:
    """Values of a field's type (for fields the strategies above do not name)."""
    t = spec.type
    if isinstance(t, Picklist):
        return st.sampled_from(t.values)
    if isinstance(t, Date):
        return st.none() | st.dates(date(2020, 1, 1), date(2040, 1, 1))
    if isinstance(t, Text):
        return st.none() | st.text(max_size=t.length + 45)
    scale = t.scale
    return st.none() | st.integers(0, 10**t.precision - 1).map(lambda m: Decimal(m).scaleb(-scale))


_values_strategy = st.fixed_dictionaries(
    {f.name: _STRATEGIES[f.name] if f.name in _STRATEGIES else _strategy(f) for f in ACCOUNT_FIELDS}
)


@given(first=_values_strategy, second=_values_strategy)
def test_a_pushed_plan_replanned_is_empty_and_the_score_never_flaps(
    first: dict[str, object], second: dict[str, object]
) -> None:
    """Once Salesforce accepted a plan, the same desired values plan nothing; a new set
    writes exactly the fields that changed, the score only past the margin."""
    [created] = plan_accounts([AccountInput("001A", first)], {}, MAPPING, 5) or [None]
    state = (
        {"001A": _state("001A", {})}
        if created is None
        else {"001A": PushedState(ACCOUNT, "001A", created.state, AS_OF)}
    )
    assert plan_accounts([AccountInput("001A", first)], state, MAPPING, 5) == []
    changes = plan_accounts([AccountInput("001A", second)], state, MAPPING, 5)
    written = set(changes[0].fields) if changes else set()
    for logical, field in MAPPING.items():
        spec = account_field(logical)
        old, new = canon(created.state.get(field) if created else None), canon(second[logical])
        if isinstance(spec.type, Text) and isinstance(second[logical], str):
            new = canon(str(second[logical])[: spec.type.length])
        if spec.margin:
            moved = abs(int(second[logical]) - int(first[logical])) > 5  # type: ignore[call-overload]
            assert (field in written) == moved
        else:
            assert (field in written) == (old != new), logical


def test_ladder_reads_the_payment_failure_signal_evidence() -> None:
    """The evidence as the payment-failure signal writes it (DuckDB json_object text)."""
    evidence = {
        "invoice_id": "in_1",
        "attempts": 3,
        "dunning_stage": "retry_3",
        "next_retry_at": (AS_OF + timedelta(hours=30)).strftime("%Y-%m-%d %H:%M:%S"),
    }
    first_seen = AS_OF - timedelta(hours=80)
    state = {"pf:in_1": PushedState(TASK, "pf:in_1", {}, first_seen, "open", first_seen)}
    [change] = _tasks([_failure(**evidence)], state)
    assert str(change.fields["Subject"]).startswith("Executive sponsor")
    evidence["attempts"] = 1
    [change] = _tasks([_failure(**evidence)], state)
    assert str(change.fields["Subject"]).startswith("CSM outreach")  # 80 h since first seen


def test_ladder_takes_the_last_try_from_the_evidence() -> None:
    """payment_failure names the account's last try (``final_attempt``, from
    signals.payment_retry_attempts, Stripe's recommended 8): the third of 8 is not near it."""
    evidence = {
        "invoice_id": "in_1",
        "attempts": 3,
        "final_attempt": 8,
        "next_retry_at": (AS_OF + timedelta(hours=30)).strftime("%Y-%m-%d %H:%M:%S"),
    }
    first_seen = AS_OF - timedelta(hours=80)
    state = {"pf:in_1": PushedState(TASK, "pf:in_1", {}, first_seen, "open", first_seen)}
    [change] = _tasks([_failure(**evidence)], state)
    assert str(change.fields["Subject"]).startswith("CSM outreach")
    evidence["attempts"] = 7
    [change] = _tasks([_failure(**evidence)], state)
    assert str(change.fields["Subject"]).startswith("Executive sponsor")
