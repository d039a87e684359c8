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


def _raw_counts(h: Hooked, ids: list[str]) -> dict[str, int]:
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        rows = con.execute(
            "SELECT id, count(*) FROM raw_stripe_event WHERE id IN (SELECT unnest(?::VARCHAR[]))"
            " GROUP BY id",
            [ids],
        ).fetchall()
    finally:
        con.close()
    return {r[0]: r[1] for r in rows}


def test_duplicates_and_reversed_order_change_nothing(hooked: Hooked) -> None:
    """Stripe: an endpoint "might occasionally receive the same event more than once", and
    Stripe "doesn't guarantee the delivery of events in the order in which they're
    generated". Each batch sent reversed and every event twice: the same outcome as in
    order, each event landed once."""
    h = hooked
    h.sender.duplicate_rate = 1.0
    sub_id, account = _linked_subscription(h)
    with receiver(h.settings, port=0, worker=False) as rx:
        register(h.sender, rx.url)
        invoice, failed = fail_payment(h.box.stripe.world, sub_id)
        h.sender.send(list(reversed(failed)))
        h.sender.deliver_pending()
        _drain(h)
        assert _health(h, account) == "Failed"
        assert len(_tasks(h, account)) == 1
        paid = pay_invoice(h.box.stripe.world, invoice["id"])
        h.sender.send(list(reversed(paid)))
        h.sender.deliver_pending()
        _drain(h)
        counters = rx.spool.counters()
    ids = [e["id"] for e in failed + paid]
    assert len(h.sender.log) == 2 * len(ids) and all(d.ok for d in h.sender.log)
    assert counters["duplicate"] == len(ids) and counters["processed"] == len(ids)
    assert _raw_counts(h, ids) == dict.fromkeys(ids, 1)
    tasks = _tasks(h, account)
    assert len(tasks) == 1 and tasks[0]["Status"] == "Completed"


def test_a_paid_invoice_delivered_before_its_failure_opens_no_task(hooked: Hooked) -> None:
    """The whole story reversed in one batch: the invoice's newest event (paid) wins over
    the older failure however they arrive, so no Task is opened for a settled invoice."""
    h = hooked
    sub_id, account = _linked_subscription(h)
    with receiver(h.settings, port=0, worker=False) as rx:
        register(h.sender, rx.url)
        invoice, failed = fail_payment(h.box.stripe.world, sub_id)
        paid = pay_invoice(h.box.stripe.world, invoice["id"])
        h.sender.send(list(reversed(failed + paid)))
        h.sender.deliver_pending()
        _drain(h)
    assert _tasks(h, account) == []
    assert _health(h, account) != "Failed"
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        row = con.execute(
            "SELECT payload->>'status' FROM raw_stripe_invoice WHERE id = ?", [invoice["id"]]
        ).fetchone()
    finally:
        con.close()
    assert row == ("paid",)


def test_the_stand_in_retries_a_refused_delivery_with_backoff(hooked: Hooked) -> None:
    """Stripe retries a non-2xx answer with exponential backoff; the stand-in's schedule
    runs on an injected clock, so no test waits. A receiver that answers 503 (its spool
    unwritable) gets the same event again until it takes it."""
    h = hooked
    sub_id, _ = _linked_subscription(h)
    with receiver(h.settings, port=0, worker=False) as rx:
        register(h.sender, rx.url)
        real_put = rx.spool.put
        failures = iter(range(2))

        def flaky(*args: Any, **kwargs: Any) -> bool:
            if next(failures, None) is not None:
                raise OSError("disk full")
            return real_put(*args, **kwargs)

        rx.spool.put = flaky  # type: ignore[method-assign]
        _, failed = fail_payment(h.box.stripe.world, sub_id)
        h.sender.send(failed[:1])
        h.sender.deliver_pending()
        assert [d.status for d in h.sender.log] == [503, 503, 200]
        assert [d.attempt for d in h.sender.log] == [1, 2, 3]
        gaps = [b.at - a.at for a, b in zip(h.sender.log, h.sender.log[1:], strict=False)]
        assert gaps[1] > gaps[0] >= 1
        assert rx.spool.event_ids() == [failed[0]["id"]]
