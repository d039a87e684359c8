"""Over loopback against the stand-ins: Stripe's deliveries to Salesforce through the
receiver, the spool and the worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from churn import warehouse
from churn.job.webhook import open_spool, receiver, work
from churn.sandbox.stripe.webhooks import fail_payment, live_subscriptions, pay_invoice
from conftest import Hooked, register

pytestmark = pytest.mark.slow


def _drain(h: Hooked) -> None:
    work(h.settings, open_spool(h.settings), threading.Event(), once=True)


def _linked_subscription(h: Hooked) -> tuple[str, str]:
    """A live subscription whose customer is linked to an Account, and that Account."""
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        links = dict(con.execute(
            "SELECT customer_id, account_id FROM core_account_links WHERE account_id IS NOT NULL"
        ).fetchall())  # fmt: skip
        open_tasks = {r[0] for r in con.execute(
            "SELECT DISTINCT fields->>'WhatId' FROM push_state WHERE sobject = 'Task'"
        ).fetchall()}  # fmt: skip
    finally:
        con.close()
    world = h.box.stripe.world
    for sub_id in live_subscriptions(world):
        sub = world.get(sub_id) or {}
        account = links.get(sub.get("customer"))
        if account and account not in open_tasks:
            return sub_id, account
    raise AssertionError("no linked live subscription without a Task in the world")


def _tasks(h: Hooked, account: str) -> list[dict[str, Any]]:
    field = h.settings.salesforce.task_external_id_field
    return [t for t in h.box.salesforce.records.get("Task", {}).values()
            if t.get("WhatId") == account and t.get(field)]  # fmt: skip


def _health(h: Hooked, account: str) -> Any:
    return h.box.salesforce.records["Account"][account].get("Payment_Health__c")


def test_payment_failed_then_paid_reaches_salesforce(hooked: Hooked) -> None:
    """invoice.payment_failed -> Payment Health Failed and a Task; invoice.paid -> closed."""
    h = hooked
    sub_id, account = _linked_subscription(h)
    assert _tasks(h, account) == []
    with receiver(h.settings, port=0, worker=False) as rx:
        register(h.sender, rx.url)
        invoice, events = fail_payment(h.box.stripe.world, sub_id)
        h.sender.send(events)
        h.sender.deliver_pending()
        assert all(d.ok for d in h.sender.log), h.sender.log
        _drain(h)
        assert _health(h, account) == "Failed"
        tasks = _tasks(h, account)
        assert len(tasks) == 1 and tasks[0]["Status"] != "Completed"
        h.sender.send(pay_invoice(h.box.stripe.world, invoice["id"]))
        h.sender.deliver_pending()
        _drain(h)
    tasks = _tasks(h, account)
    assert len(tasks) == 1 and tasks[0]["Status"] == "Completed"
    assert _health(h, account) != "Failed"
