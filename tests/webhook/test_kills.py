"""SIGKILL the receiver and the worker (real `churn webhook` processes) at several points:
every acknowledged event is landed exactly once after a restart, nothing is pushed twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from hook_world import SECRET, Hooked, linked_subscriptions, raw_event_counts, tasks

from churn.job.webhook import open_spool, work
from churn.pipelines.webhook import PENDING
from churn.sandbox.stripe.webhooks import Delivery, Endpoint, fail_payment
from faults import tally

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _env(h: Hooked, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SALESFORCE_"))}
    env.update(h.box.env())
    env.update(
        CHURN_DB=str(h.settings.db),
        STRIPE_WEBHOOK_SECRET=SECRET,
        CHURN_WEBHOOK__PORT=str(port),
        CHURN_WEBHOOK__POLL_SECONDS="0.05",
        **extra,
    )
    return env


def _churn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "churn", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`churn webhook serve --no-worker` on a port the OS picks; returns once it listens
    (the line it prints after the bind: deliveries wait in the backlog from then on)."""
    receiver = _churn("webhook", "serve", "--no-worker", env=env)
    assert receiver.stdout is not None
    for line in receiver.stdout:
        if "listening on " in line:
            return receiver, line.split("listening on ", 1)[1].strip()
    raise AssertionError(f"receiver did not start: {receiver.communicate()}")


class _Acks(list[Delivery]):
    """The sender's delivery log, waking a waiter at each delivery."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self.changed = changed

    def append(self, delivery: Delivery) -> None:
        with self.changed:
            super().append(delivery)
            self.changed.notify_all()

    def ok(self) -> int:
        with self.changed:
            return sum(d.ok for d in self)


#: How long a wait may take before the test fails: a guard against a hang, not a speed
#: check (the waits end on events; a loaded machine is slower, never this much).
HANG = 600.0


def _events(h: Hooked, n_subs: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for sub_id, _ in linked_subscriptions(h)[:n_subs]:
        events += fail_payment(h.box.stripe.world, sub_id)[1]
    return events


def _deliver_until(h: Hooked, acks: _Acks, target: int) -> threading.Thread:
    """Deliver what is queued on a thread; return it once ``target`` deliveries were
    acknowledged in all (or it delivered everything first)."""
    finished = threading.Event()

    def deliver() -> None:
        try:
            h.sender.deliver_pending()
        finally:
            with acks.changed:
                finished.set()
                acks.changed.notify_all()

    delivering = threading.Thread(target=deliver)
    delivering.start()
    with acks.changed:
        assert acks.changed.wait_for(
            lambda: finished.is_set() or sum(d.ok for d in acks) >= target, timeout=HANG
        )
    return delivering


def test_killing_the_receiver_loses_no_acknowledged_event(hooked: Hooked) -> None:
    h = hooked
    # Port 0 for every receiver (no port picked here and bound later: another suite beside
    # this one could take it in between); each restart is registered at its new URL.
    env = _env(h, 0)
    h.sender.log = acks = _Acks(threading.Condition())
    rng = random.Random(3)
    events = _events(h, 12)
    assert len(events) >= 30
    kills = 0
    for round_ in range(3):
        receiver, url = _serve(env)
        h.sender.endpoints = [Endpoint(url, SECRET)]
        chunk = events[round_ * len(events) // 3 : (round_ + 1) * len(events) // 3]
        h.sender.send(chunk)
        # Kill after a random number of acknowledgements, mid-burst: woken by each one.
        target = acks.ok() + rng.randrange(1, len(chunk))
        delivering = _deliver_until(h, acks, target)
        receiver.send_signal(signal.SIGKILL)
        receiver.communicate(timeout=HANG)
        kills += 1
        # What was in flight fails, is retried on the sender's own clock, then given up.
        delivering.join(HANG)
        assert not delivering.is_alive()
    # Stripe retries what it could not deliver; the receiver is back.
    receiver, url = _serve(env)
    try:
        h.sender.endpoints = [Endpoint(url, SECRET)]
        h.sender.send([e for e in events if e["id"] in {i for i, _ in h.sender.given_up}])
        h.sender.given_up.clear()
        h.sender.deliver_pending()
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.communicate(timeout=HANG)
    acked = {d.event_id for d in h.sender.log if d.ok}
    spool = open_spool(h.settings)
    lost = acked - set(spool.event_ids())
    assert not lost
    assert acked == {e["id"] for e in events}
    work(h.settings, spool, threading.Event(), once=True)
    counts = raw_event_counts(h, sorted(acked))
    dupes = sum(n - 1 for n in counts.values())
    tally.record(faults_injected=kills, kills=kills, runs_healed=1,
                 rows_lost=len(acked - set(counts)), duplicates=dupes)  # fmt: skip
    assert counts == dict.fromkeys(acked, 1)


POINTS = ("claimed", "landed", "pushed", "done")


def _kill_worker_at(env: dict[str, str], batch: int, point: str, jitter: float) -> bool:
    """SIGKILL ``churn webhook work --once`` ``jitter`` s after its ``batch``-th ``point``
    line; False when it finished before."""
    proc = _churn("-v", "webhook", "work", "--once", env=env)
    assert proc.stderr is not None
    seen = 0
    for line in proc.stderr:
        if f"webhook batch: {point}" in line:
            seen += 1
            if seen == batch:
                time.sleep(jitter)
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=HANG)
                return True
    proc.communicate(timeout=HANG)
    return False


def test_killing_the_worker_at_any_point_lands_each_event_once(hooked: Hooked) -> None:
    h = hooked
    targets = linked_subscriptions(h)[:10]
    events: list[dict[str, Any]] = []
    for sub_id, _ in targets:
        events += fail_payment(h.box.stripe.world, sub_id)[1]
    spool = open_spool(h.settings)
    for event in events:
        import json

        spool.put(event, json.dumps(event), used=True)
    env = _env(h, 0, CHURN_WEBHOOK__BATCH_SIZE="6")
    rng = random.Random(5)
    kills = 0
    for _ in range(6):
        if not spool.pending():
            break
        point = rng.choice(POINTS)
        if _kill_worker_at(env, rng.randint(1, 2), point, rng.uniform(0, 0.05)):
            kills += 1
    # Restarted: it finishes what the killed ones left.
    done = subprocess.run(
        [sys.executable, "-m", "churn", "webhook", "work", "--once"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert spool.event_ids(PENDING) == []
    ids = [e["id"] for e in events]
    counts = raw_event_counts(h, ids)
    field = h.settings.salesforce.task_external_id_field
    keys = [t[field] for t in tasks(h)]
    dupes = sum(n - 1 for n in counts.values()) + len(keys) - len(set(keys))
    tally.record(faults_injected=kills, kills=kills, runs_healed=1,
                 rows_lost=len(set(ids) - set(counts)), duplicates=dupes)  # fmt: skip
    assert kills >= 3
    assert counts == dict.fromkeys(ids, 1)
    assert len(keys) == len(set(keys))
    for _, account in targets:
        assert len(tasks(h, account)) == 1, account
