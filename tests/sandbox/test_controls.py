"""The stand-ins' own controls (``/_sandbox/...``), for stand-ins served in a process of
their own (``churn sandbox serve``): the bench changes the world and reads Salesforce's
counters through them instead of holding the world in its own process. They are not the
APIs: they need the stand-in's key or session, and Salesforce's are not counted as API
requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from churn.sandbox.demo import Sandbox, serve_world
from churn.sandbox.stripe.webhooks import live_subscriptions
from churn.sandbox.world import World


def _stripe(box: Sandbox, control: str, key: str = "sk_test_sandbox") -> requests.Response:
    return requests.post(
        f"{box.stripe.api_base}/_sandbox/{control}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _salesforce(box: Sandbox, control: str, token: str | None = None) -> requests.Response:
    sf = box.salesforce
    assert sf is not None
    return requests.get(
        f"{sf.instance_url}/_sandbox/{control}",
        headers={"Authorization": f"Bearer {token or sf.session_id}"},
        verify=str(sf.ca_path),
        timeout=30,
    )


def test_renew_and_fail_payment_change_the_world_and_answer_their_events(
    small_world: tuple[World, Path],
) -> None:
    _, folder = small_world
    with serve_world(folder) as box:
        live = live_subscriptions(box.stripe.world)
        renewed = _stripe(box, "renew?count=2")
        assert renewed.status_code == 200
        events: list[dict[str, Any]] = renewed.json()["data"]
        assert [e["type"] for e in events] == ["invoice.created", "invoice.paid"] * 2
        # the invoice's subscription where API 2025-03-31.basil on puts it
        subscriptions = [
            e["data"]["object"]["parent"]["subscription_details"]["subscription"]
            for e in events[::2]
        ]
        assert subscriptions == live[:2]
        # the renewal is in the world: the API serves the paid invoice
        paid = events[1]["data"]["object"]
        got = requests.get(
            f"{box.stripe.api_base}/v1/invoices/{paid['id']}",
            headers={"Authorization": "Bearer sk_test_sandbox"},
            timeout=30,
        )
        assert got.status_code == 200 and got.json()["status"] == "paid"

        failed = _stripe(box, f"fail_payment?subscription={live[2]}").json()["data"]
        assert [e["type"] for e in failed] == [
            "invoice.created",
            "charge.failed",
            "invoice.payment_failed",
        ]
        assert failed[-1]["data"]["object"]["attempt_count"] == 1


def test_stripe_controls_refuse_a_wrong_key_and_an_unknown_subscription(
    small_world: tuple[World, Path],
) -> None:
    _, folder = small_world
    with serve_world(folder) as box:
        assert _stripe(box, "renew?count=1", key="sk_test_wrong").status_code == 401
        unknown = _stripe(box, "fail_payment?subscription=sub_nothere")
        assert unknown.status_code == 400
        assert "sub_nothere" in unknown.json()["error"]["message"]
        assert _stripe(box, "nothing").status_code == 404
        # the API itself stays read-only
        posted = requests.post(
            f"{box.stripe.api_base}/v1/customers",
            headers={"Authorization": "Bearer sk_test_sandbox"},
            timeout=30,
        )
        assert posted.status_code == 405


def test_salesforce_counters_are_not_api_requests_and_see_the_tasks(
    small_world: tuple[World, Path],
) -> None:
    _, folder = small_world
    with serve_world(folder) as box:
        sf = box.salesforce
        assert sf is not None
        account = next(iter(sf.records["Account"]))
        before = _salesforce(box, "stats").json()["requests"]
        assert _salesforce(box, f"tasks?WhatId={account}&with=Subject").json()["count"] == 0
        created = requests.post(
            f"{sf.instance_url}/services/data/v{sf.settings_env()['SALESFORCE_API_VERSION']}"
            "/sobjects/Task",
            json={"WhatId": account, "Subject": "Card declined"},
            headers={"Authorization": f"Bearer {sf.session_id}"},
            verify=str(sf.ca_path),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        assert _salesforce(box, f"tasks?WhatId={account}&with=Subject").json()["count"] == 1
        assert _salesforce(box, f"tasks?WhatId={account}&with=Description").json()["count"] == 0
        # the Task's create is the one request counted; the controls' reads are not
        assert _salesforce(box, "stats").json()["requests"] == before + 1
        assert _salesforce(box, "stats", token="00Dnot!valid").status_code == 401
