"""Over loopback against the stand-ins: Stripe's deliveries to Salesforce through the
receiver, the spool and the worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hook_world import Hooked, linked_subscriptions, raw_event_counts, register, tasks

from churn import warehouse
from churn.job.webhook import open_spool, receiver, work
from churn.sandbox.stripe.webhooks import fail_payment, pay_invoice

#: Seconds a wait may take before the test fails: a guard against a hang, not a speed check.
HANG = 600.0

pytestmark = pytest.mark.slow


def _drain(h: Hooked) -> None:
    work(h.settings, open_spool(h.settings), threading.Event(), once=True)


def _linked_subscription(h: Hooked) -> tuple[str, str]:
    found = linked_subscriptions(h)
    assert found, "no linked live subscription without a Task in the world"
    return found[0]


def _tasks(h: Hooked, account: str) -> list[dict[str, Any]]:
    return tasks(h, account)


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
    assert raw_event_counts(h, ids) == dict.fromkeys(ids, 1)
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


def test_while_a_run_writes_deliveries_are_acknowledged_and_the_worker_catches_up(
    hooked: Hooked,
) -> None:
    from churn.job.run import Step, run_job

    h = hooked
    sub_id, account = _linked_subscription(h)
    holding = threading.Event()
    release = threading.Event()

    def hold(settings: Any, con: Any, dry_run: bool) -> Any:
        con.execute("CREATE OR REPLACE TABLE _held_by_run AS SELECT 1 AS x")  # it writes
        holding.set()
        release.wait(HANG)
        return None

    results: list[Any] = []
    run = threading.Thread(
        target=lambda: results.append(run_job(h.settings, steps=(Step("hold", hold),)))
    )
    with receiver(h.settings, port=0, worker=True) as rx:
        # The worker's batches, told as they end (its spool's mark_done), instead of polls.
        batch_done = threading.Condition()
        mark_done = rx.spool.mark_done

        def mark_done_and_tell(seqs: Any) -> None:
            mark_done(seqs)
            with batch_done:
                batch_done.notify_all()

        rx.spool.mark_done = mark_done_and_tell  # type: ignore[method-assign]
        register(h.sender, rx.url)
        run.start()
        assert holding.wait(HANG)
        _invoice, failed = fail_payment(h.box.stripe.world, sub_id)
        h.sender.send(failed)
        h.sender.deliver_pending()
        assert [d.status for d in h.sender.log] == [200] * len(failed)
        # Acknowledged and durable; the worker cannot have landed them: the run holds
        # the lock (and DuckDB's single writer).
        assert rx.spool.pending() == len(failed)
        assert _tasks(h, account) == []
        release.set()
        run.join(HANG)
        assert results and results[0].status == "success"
        # The worker catches up once the run is done: woken by each batch it finishes.
        with batch_done:
            assert batch_done.wait_for(lambda: rx.spool.pending() == 0, HANG)
        assert _tasks(h, account)
    assert raw_event_counts(h, [e["id"] for e in failed]) == {e["id"]: 1 for e in failed}
    assert len(_tasks(h, account)) == 1
    assert _health(h, account) == "Failed"


def test_scoring_a_few_accounts_gives_their_rows_of_scoring_all(hooked: Hooked) -> None:
    """The worker scores only the accounts a batch touched: their rows must be what the
    scoring step computes for them among all accounts."""
    from churn.job.scoring import compute
    from churn.job.webhook import ModelCache, score_accounts

    h = hooked
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        as_of = warehouse.utcnow()
        every = compute(con, h.settings, as_of)
        accounts = sorted(every["account_health"]["account_id"].to_list())[::3]
        few = score_accounts(con, h.settings, as_of, accounts, ModelCache())
    finally:
        con.close()
    for name in ("account_health", "signal_events"):
        want = every[name].filter(every[name]["account_id"].is_in(accounts))
        assert few[name].sort(few[name].columns[:3]).equals(want.sort(want.columns[:3])), name
    assert few["account_health"].height == len(accounts)


def test_an_event_that_cannot_land_is_set_aside_and_the_rest_land(hooked: Hooked) -> None:
    """A bad event fails its batch; the worker goes on one event at a time, sets the bad
    one aside after MAX_ATTEMPTS and lands the others."""
    import json

    from churn.job.webhook import MAX_ATTEMPTS
    from churn.pipelines.webhook import FAILED

    h = hooked
    sub_id, account = _linked_subscription(h)
    _, failed = fail_payment(h.box.stripe.world, sub_id)
    bad = {**failed[0], "id": "evt_bad", "created": 10**20}  # no such second
    spool = open_spool(h.settings)
    for event in [bad, *failed]:
        spool.put(event, json.dumps(event), used=True)
    _drain(h)
    assert spool.event_ids(FAILED) == ["evt_bad"]
    assert spool.pending() == 0
    counters = spool.counters()
    assert counters["failed_events"] == 1 and counters["batch_failed"] == MAX_ATTEMPTS
    assert raw_event_counts(h, [e["id"] for e in failed]) == {e["id"]: 1 for e in failed}
    assert _health(h, account) == "Failed"


def test_one_model_cache_serves_every_batch_of_a_worker(
    hooked: Hooked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the model in force takes seconds: a worker loads it once, not per batch."""
    import json

    from churn.job import webhook

    h = hooked
    seen: list[Any] = []
    real = webhook.score_accounts

    def spy(con: Any, settings: Any, as_of: Any, accounts: Any, models: Any = None) -> Any:
        seen.append(models)
        return real(con, settings, as_of, accounts, models)

    monkeypatch.setattr(webhook, "score_accounts", spy)
    spool = open_spool(h.settings)
    for sub_id, _ in linked_subscriptions(h)[:2]:
        for event in fail_payment(h.box.stripe.world, sub_id)[1]:
            spool.put(event, json.dumps(event), used=True)
    settings = h.settings.with_overrides(webhook={"batch_size": 3})
    work(settings, spool, threading.Event(), once=True)
    assert len(seen) == 2
    assert seen[0] is not None and seen[0] is seen[1]
