"""The Case per payment-failure episode and the billing contact, over HTTPS against the
Salesforce stand-in (issue 18, part A, "Must hold").

A failing invoice yields one Task at once and one Case at 24 hours (none on a rerun, none
after a recovery), the Case is closed when the invoice is paid, and a recovered payment
closes the Task and the Case in the same push. The marts are written as the scoring step
writes them (payment_failure's evidence names ``first_failed_at``: the ladder's clock
starts at the failure, not at the first push).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from push_world import KillPush, World

from churn.pipelines.push.sync import push
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings
from golden_world import seed

OWNER = "005000000000000OWN"
CASE_EXT = "Churn_Case_Key__c"
TASK_EXT = "Churn_Episode_Key__c"
FAILED_AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC).replace(tzinfo=None)
URL = "https://invoice.stripe.com/i/acct_1/test_in1"
KEY = "payment_failure:in1"


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server(
        seed={"User": [{"Id": OWNER, "Name": "Owner", "IsActive": True}]}
    ) as s:
        yield s


def _settings(
    sf: RunningSalesforce, db: Path, push: dict[str, Any] | None = None, **case: Any
) -> Settings:
    return Settings().with_overrides(
        db=db,
        case=case,
        push=push or {},
        salesforce={
            "instance_url": sf.instance_url,
            "session_id": sf.session_id,
            "ca_bundle": sf.ca_path,
            "api_reserve": 0,
        },
    )


def _world(
    world: World, sf: RunningSalesforce, decline: str = "insufficient_funds"
) -> tuple[str, str]:
    """One Account with two Contacts (one the billing contact, by the customer's email in
    another case), an open invoice with one failed charge."""
    [account] = sf.seed("Account", [{"Name": "Acme", "OwnerId": OWNER}])
    billing, other = sf.seed(
        "Contact",
        [
            {
                "LastName": "Payer",
                "FirstName": "Pat",
                "Email": "Billing@Acme.test",
                "AccountId": account,
            },
            {"LastName": "Admin", "Email": "admin@acme.test", "AccountId": account},
        ],
    )
    world.users({OWNER: True})
    world.accounts([account], owner=OWNER)
    seed(
        world.con,
        {
            "core_contacts": [
                {
                    "contact_id": billing,
                    "account_id": account,
                    "name": "Pat Payer",
                    "email": "Billing@Acme.test",
                },
                {
                    "contact_id": other,
                    "account_id": account,
                    "name": "Admin",
                    "email": "admin@acme.test",
                },
            ],
            "core_customers": [{"customer_id": "c1", "email": "billing@acme.test"}],
            "core_invoices": [
                {
                    "invoice_id": "in1",
                    "customer_id": "c1",
                    "amount_due": 1000,
                    "amount_remaining": 1000,
                    "attempt_count": 1,
                    "created_at": FAILED_AT - timedelta(hours=1),
                    "finalized_at": FAILED_AT - timedelta(hours=1),
                }
            ],
            "core_charges": [
                {
                    "charge_id": "ch1",
                    "customer_id": "c1",
                    "invoice_id": "in1",
                    "amount": 1000,
                    "status": "failed",
                    "decline_code": decline,
                    "created_at": FAILED_AT,
                }
            ],
        },
    )
    world.con.execute(
        "INSERT INTO raw_stripe_invoice (id, payload, source, version_ts, fetched_at)"
        " VALUES ('in1', ?, 'list', ?, ?)",
        [json.dumps({"id": "in1", "hosted_invoice_url": URL}), FAILED_AT, FAILED_AT],
    )
    return account, billing


def _score(
    world: World, account: str, as_of: datetime, *, failing: bool, hard: bool = False
) -> None:
    """The marts of one scoring: the account Failed with its episode, or recovered."""
    world.health(
        [{"account_id": account, "payment_health": "Failed" if failing else "Healthy"}], as_of
    )
    evidence = {
        "invoice_id": "in1",
        "attempts": 1,
        "final_attempt": 8,
        "first_failed_at": FAILED_AT.isoformat(sep=" "),
        "next_retry_at": (FAILED_AT + timedelta(days=3)).isoformat(sep=" "),
        "decline_class": "hard" if hard else "soft",
        "decline_code": "stolen_card" if hard else "insufficient_funds",
    }
    rows = [
        {
            "account_id": account,
            "episode_key": KEY,
            "severity": "high",
            "evidence": evidence,
            "reason": "The $10 invoice is unpaid after 1 failed attempt.",
        }
    ]
    world.signals(rows if failing else [], as_of)


def _pay(world: World, at: datetime) -> None:
    world.con.execute(
        "UPDATE core_invoices SET status = 'paid', amount_paid = 1000, amount_remaining = 0,"
        " paid_at = ? WHERE invoice_id = 'in1'",
        [at],
    )


def _cases(sf: RunningSalesforce) -> list[dict[str, Any]]:
    return [c for c in sf.records.get("Case", {}).values() if not c["IsDeleted"]]


def _task(sf: RunningSalesforce) -> dict[str, Any]:
    [task] = [t for t in sf.records["Task"].values() if t[TASK_EXT] == KEY]
    return task


def test_one_task_at_once_one_case_at_24_hours_none_on_a_rerun_closed_on_payment(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    account, billing = _world(world, sf)
    settings = _settings(sf, db_path)

    # An hour after the failure: the Task, naming the billing contact and the link; no Case.
    _score(world, account, FAILED_AT + timedelta(hours=1), failing=True)
    first = push(settings, world.con)
    assert first.rejected == [] and first.counts.get("create_task") == 1
    task = _task(sf)
    assert task["WhoId"] == billing  # the Contact whose Email is the customer's
    assert "Billing contact: Pat Payer <Billing@Acme.test>." in task["Description"]
    assert URL in task["Description"]
    assert _cases(sf) == []

    # 25 hours after the failure (the clock starts at the failure, not at the first push).
    _score(world, account, FAILED_AT + timedelta(hours=25), failing=True)
    second = push(settings, world.con)
    assert second.rejected == [] and second.counts.get("create_case") == 1
    [case] = _cases(sf)
    assert case[CASE_EXT] == KEY
    assert (case["AccountId"], case["ContactId"], case["OwnerId"]) == (account, billing, OWNER)
    assert (case["Status"], case["Origin"], case["Priority"]) == ("New", "Web", "High")
    assert "2026-11-20 09:00 UTC: insufficient funds" in case["Description"]  # the history
    assert URL in case["Description"]
    assert case["IsClosed"] is False

    # A rerun of the same scoring: nothing planned, no second Case.
    assert push(settings, world.con).counts == {"planned": 0}
    assert len(_cases(sf)) == 1

    # Paid: the Task and the Case close in the same push, the Case saying why.
    _pay(world, FAILED_AT + timedelta(hours=40))
    _score(world, account, FAILED_AT + timedelta(hours=41), failing=False)
    third = push(settings, world.con)
    assert third.rejected == []
    assert third.counts.get("close_task") == 1 and third.counts.get("close_case") == 1
    [closed] = _cases(sf)
    assert closed["Id"] == case["Id"] and closed["Status"] == "Closed" and closed["IsClosed"]
    assert (
        "Closed by the churn service on 2026-11-22: the invoice was paid." in closed["Description"]
    )
    assert _task(sf)["Status"] == "Completed"
    assert push(settings, world.con).counts == {"planned": 0}


def test_a_payment_recovered_before_24_hours_opens_no_case(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    account, _ = _world(world, sf)
    settings = _settings(sf, db_path)
    _score(world, account, FAILED_AT + timedelta(hours=2), failing=True)
    push(settings, world.con)
    _pay(world, FAILED_AT + timedelta(hours=20))
    _score(world, account, FAILED_AT + timedelta(hours=26), failing=False)
    recovered = push(settings, world.con)
    assert recovered.counts.get("close_task") == 1
    assert "create_case" not in recovered.counts and _cases(sf) == []


def test_a_decline_stripe_will_not_retry_opens_the_case_at_once_at_high_priority(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """Stripe's Smart Retries "doesn't retry payments if ... the issuer returned a hard
    decline code" (lost, stolen, fraudulent...): nothing to wait for, so the episode is on
    the customer-facing rung at once: the CSM's Task at High and the Case."""
    account, _ = _world(world, sf, decline="stolen_card")
    _score(world, account, FAILED_AT + timedelta(minutes=30), failing=True, hard=True)
    result = push(_settings(sf, db_path), world.con)
    assert result.rejected == [] and result.counts.get("create_case") == 1
    task = _task(sf)
    assert task["Priority"] == "High"
    assert task["Subject"].startswith("Escalation: card declined, Stripe will not retry it")
    [case] = _cases(sf)
    assert case["Priority"] == "High"
    assert "the card was reported stolen" in case["Description"]


def test_cases_off_or_at_outreach(world: World, sf: RunningSalesforce, db_path: Path) -> None:
    account, _ = _world(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    assert "create_case" not in push(_settings(sf, db_path, open_at="off"), world.con).counts
    assert "create_case" not in push(_settings(sf, db_path, open_at="outreach"), world.con).counts
    _score(world, account, FAILED_AT + timedelta(hours=73), failing=True)
    at_outreach = push(_settings(sf, db_path, open_at="outreach"), world.con)
    assert at_outreach.counts.get("create_case") == 1


def test_a_case_value_the_org_lacks_is_one_note_not_a_rejected_batch(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """A Status the org's restricted picklist lacks: the Cases are held back with one
    sentence naming the setting; the Task and the Account fields still go."""
    account, _ = _world(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    result = push(_settings(sf, db_path, status_open="Open"), world.con)
    assert result.rejected == [] and result.counts.get("create_task") == 1
    assert result.counts.get("cases_not_written") == 1 and _cases(sf) == []
    assert any("'Open' (CHURN_CASE__STATUS_OPEN) is missing" in n for n in result.notes)
    # Fixed in the settings: the next push writes it.
    assert push(_settings(sf, db_path), world.con).counts.get("create_case") == 1


def test_a_case_whose_push_was_lost_is_matched_by_its_key_not_duplicated(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """A kill between Salesforce's answer and the commit loses the push_state row: the
    rerun upserts by the Case's external id and finds the Case it made."""
    account, _ = _world(world, sf)
    settings = _settings(sf, db_path)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    push(settings, world.con)
    world.con.execute("DELETE FROM push_state WHERE sobject = 'Case'")
    again = push(settings, world.con)
    assert again.rejected == [] and again.counts.get("create_case") == 1  # planned, matched
    assert len(_cases(sf)) == 1


def test_a_case_on_a_deleted_account_is_refused_by_the_stand_in(sf: RunningSalesforce) -> None:
    """Lookups are enforced as an org enforces them: a Case naming a deleted Account is
    ENTITY_IS_DELETED, one naming no record INVALID_CROSS_REFERENCE_KEY, a Status outside
    the restricted picklist INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST."""
    import requests

    [account] = sf.seed("Account", [{"Name": "Gone", "OwnerId": OWNER}])
    sf.delete("Account", account)
    url = f"{sf.instance_url}/services/data/v62.0/composite/sobjects/Case/{CASE_EXT}"
    headers = {"Authorization": f"Bearer {sf.session_id}", "Content-Type": "application/json"}

    def send(**fields: Any) -> dict[str, Any]:
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": "Case"}, CASE_EXT: "k", **fields}],
        }
        answer = requests.patch(url, json=body, headers=headers, verify=str(sf.ca_path), timeout=30)
        result: dict[str, Any] = answer.json()[0]
        return result

    assert send(AccountId=account)["errors"][0]["statusCode"] == "ENTITY_IS_DELETED"
    assert send(AccountId="001000000000999AAA")["errors"][0]["statusCode"] == (
        "INVALID_CROSS_REFERENCE_KEY"
    )
    assert send(Status="Open")["errors"][0]["statusCode"] == (
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    )
    created = send(Subject="no account")
    assert created["success"] and sf.records["Case"][created["id"]]["Status"] == "New"


@pytest.mark.slow
@pytest.mark.faults
def test_kill_mid_push_then_rerun_makes_no_duplicate_case(
    world: World, sf: RunningSalesforce, db_path: Path, kill_push: KillPush
) -> None:
    """SIGKILL of `churn push` once Salesforce has created some Cases (a call landed, its
    commit may not have): the rerun upserts by Churn_Case_Key__c, one Case per episode."""
    from churn import warehouse
    from faults import tally

    _failing_accounts(world, sf, 6)
    world.con.close()
    # Killed while the org holds the second call of Cases (two a call).
    kill_push(sf, "Case", nth=4)
    assert 2 <= len(_cases(sf)) < 6
    con = warehouse.connect(db_path)
    try:
        rerun = push(_settings(sf, db_path), con)
        assert rerun.rejected == []
        keys = [c[CASE_EXT] for c in _cases(sf)]
        duplicates = len(keys) - len(set(keys))
        tally.record(kills=1, runs_healed=1, duplicates=duplicates)
        assert sorted(keys) == sorted(f"payment_failure:in{i}" for i in range(6))
        assert push(_settings(sf, db_path), con).counts == {"planned": 0}
    finally:
        con.close()


def test_a_dry_run_shows_the_case_by_account_and_subject(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    from churn.pipelines.push.report import plan_lines

    account, _ = _world(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    settings = _settings(sf, db_path)
    result = push(settings, world.con, dry_run=True)
    [line] = [x for x in plan_lines(world.con, settings, result.run_id) if x.sobject == "Case"]
    assert (line.action, line.account, line.field) == ("create_case", "Account " + account, "Case")
    assert line.new.startswith("Payment failed: The $10 invoice is unpaid")
    assert "Case" not in sf.records or _cases(sf) == []


def _failing_accounts(world: World, sf: RunningSalesforce, n: int) -> list[str]:
    """``n`` Accounts, each with a payment failure 30 hours old (past the Case's rung)."""
    accounts = sf.seed("Account", [{"Name": f"A{i}", "OwnerId": OWNER} for i in range(n)])
    world.users({OWNER: True})
    world.accounts(accounts, owner=OWNER)
    as_of = FAILED_AT + timedelta(hours=30)
    world.health([{"account_id": a, "payment_health": "Failed"} for a in accounts], as_of)
    evidence = {"attempts": 1, "first_failed_at": FAILED_AT.isoformat(sep=" ")}
    world.signals(
        [
            {"account_id": a, "episode_key": f"payment_failure:in{i}", "evidence": evidence}
            for i, a in enumerate(accounts)
        ],
        as_of,
    )
    return accounts


def test_new_cases_are_capped_like_new_tasks_and_the_rest_open_next_run(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """A first run over a big book opens at most ``push.max_new_tasks_per_run`` Cases, as
    it does Tasks (counted apart); the push says how many it held back, and the next run
    opens them."""
    _failing_accounts(world, sf, 3)
    settings = _settings(sf, db_path, push={"max_new_tasks_per_run": 2})
    first = push(settings, world.con)
    assert first.rejected == []
    assert first.counts.get("create_task") == 2 and first.counts.get("deferred_tasks") == 1
    assert first.counts.get("create_case") == 2 and first.counts.get("deferred_cases") == 1
    assert "1 more new Cases left for later runs (the cap)" in first.announcement()
    assert len(_cases(sf)) == 2
    second = push(settings, world.con)
    assert second.counts.get("create_case") == 1 and "deferred_cases" not in second.counts
    assert sorted(c[CASE_EXT] for c in _cases(sf)) == [f"payment_failure:in{i}" for i in range(3)]
    assert push(settings, world.con).counts == {"planned": 0}


def test_closing_the_open_tasks_closes_the_open_cases_too(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """``churn push --close-open-tasks`` (the way back) closes the service's open Cases
    with the same closing sentence as its Tasks; a Case already closed is left alone."""
    from churn.pipelines.push.plan import CLOSED_BY_OPERATOR

    _failing_accounts(world, sf, 2)
    settings = _settings(sf, db_path)
    push(settings, world.con)
    assert len(_cases(sf)) == 2
    closed = push(settings, world.con, close_open_tasks=True)
    assert closed.rejected == []
    assert closed.counts.get("close_task") == 2 and closed.counts.get("close_case") == 2
    for case in _cases(sf):
        assert case["Status"] == "Closed" and case["IsClosed"]
        assert CLOSED_BY_OPERATOR in case["Description"]
    assert push(settings, world.con, close_open_tasks=True).counts == {"planned": 0}


def _no_email_match(world: World, sf: RunningSalesforce) -> tuple[str, str, str]:
    """The customer's email is no Contact's: the billing contact can come only from a
    role. Two Contacts with roles: an Economic Buyer (primary) and a Billing Contact."""
    account, _ = _world(world, sf)
    world.con.execute("UPDATE core_customers SET email = 'ap@elsewhere.test'")
    buyer, payer = sf.seed(
        "Contact",
        [
            {"LastName": "Buyer", "Email": "buyer@acme.test", "AccountId": account},
            {"LastName": "Finance", "Email": "finance@acme.test", "AccountId": account},
        ],
    )
    roles = sf.seed(
        "AccountContactRole",
        [
            {"AccountId": account, "ContactId": buyer, "Role": "Economic Buyer", "IsPrimary": True},
            {"AccountId": account, "ContactId": payer, "Role": "Billing Contact"},
        ],
    )
    seed(
        world.con,
        {
            "core_contacts": [
                {
                    "contact_id": buyer,
                    "account_id": account,
                    "name": "Buyer",
                    "email": "buyer@acme.test",
                },
                {
                    "contact_id": payer,
                    "account_id": account,
                    "name": "Finance",
                    "email": "finance@acme.test",
                },
            ],
            "core_account_contact_roles": [
                {
                    "role_id": roles[0],
                    "account_id": account,
                    "contact_id": buyer,
                    "role": "Economic Buyer",
                    "is_primary": True,
                },
                {
                    "role_id": roles[1],
                    "account_id": account,
                    "contact_id": payer,
                    "role": "Billing Contact",
                    "is_primary": False,
                },
            ],
        },
    )
    return account, buyer, payer


def test_the_billing_contact_falls_back_to_a_configured_role_and_says_which(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """No Contact's email is the Stripe customer's: the Contact with a role in
    ``push.billing_contact_roles`` (AccountContactRole: "Represents the role that a Contact
    plays on an Account", its Role a picklist, "Different contacts can play the same role
    on the same account", IsPrimary: "each account has only one primary contact role";
    Salesforce Object Reference) is the billing contact, the configured roles in order,
    then the primary, then the lowest Id; the Task and the Case say it was chosen by role."""
    account, _, payer = _no_email_match(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    roles = {"billing_contact_roles": ["Billing Contact", "Economic Buyer"]}
    result = push(_settings(sf, db_path, push=roles), world.con)
    assert result.rejected == []
    task, [case] = _task(sf), _cases(sf)
    assert task["WhoId"] == payer and case["ContactId"] == payer
    for text in (task["Description"], case["Description"]):
        assert "Billing contact: Finance <finance@acme.test>." in text
        assert "Chosen by its role on the Account (Billing Contact): no Contact's email" in text


def test_without_an_email_match_or_a_configured_role_there_is_no_billing_contact(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """No email match and no role configured (the default): no WhoId, no ContactId, and the
    Task and the Case say why; with an email match, they say it was chosen by email."""
    account, _, _ = _no_email_match(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    assert push(_settings(sf, db_path), world.con).rejected == []
    task, [case] = _task(sf), _cases(sf)
    assert task["WhoId"] is None and case["ContactId"] is None
    for text in (task["Description"], case["Description"]):
        assert (
            "No billing contact: no Contact of the Account has the Stripe customer's email,"
            " and no role is configured (push.billing_contact_roles)." in text
        )


def test_an_email_match_is_said_to_be_one(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    account, billing = _world(world, sf)
    _score(world, account, FAILED_AT + timedelta(hours=30), failing=True)
    roles = {"billing_contact_roles": ["Billing Contact"]}
    assert push(_settings(sf, db_path, push=roles), world.con).rejected == []
    task = _task(sf)
    assert task["WhoId"] == billing
    assert "Chosen by email: the Contact's email is the Stripe customer's." in task["Description"]
