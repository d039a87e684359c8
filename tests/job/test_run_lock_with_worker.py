"""The run lock shared by `churn run` and the webhook worker: they never overlap, and a
run that finds the worker mid-batch waits for it (flagged, so the worker takes no next
batch first) instead of refusing to start."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from churn.errors import LockHeldError
from churn.job.run import WEBHOOK_HOLDER, run_lock, run_waiting

#: Seconds a wait may take before the test fails: a guard against a hang, not a speed check.
HANG = 600.0


def test_a_run_waits_for_the_workers_batch_and_the_worker_yields(tmp_path: Path) -> None:
    lock = tmp_path / "churn.duckdb.lock"
    batch_running = threading.Event()
    finish_batch = threading.Event()
    order: list[str] = []

    def worker_batch() -> None:
        with run_lock(lock, holder=WEBHOOK_HOLDER):
            batch_running.set()
            finish_batch.wait(HANG)
            order.append("worker batch done")

    def run() -> None:
        with run_lock(lock, wait_for_worker_seconds=60):
            order.append("run")

    w = threading.Thread(target=worker_batch)
    w.start()
    assert batch_running.wait(HANG)
    r = threading.Thread(target=run)
    r.start()
    # The run flags its wait before it polls; the worker would see it between batches.
    for _ in range(int(HANG * 100)):  # a file flag, polled: a bound against a hang
        if run_waiting(lock):
            break
        threading.Event().wait(0.01)
    assert run_waiting(lock)
    finish_batch.set()
    w.join(HANG)
    r.join(HANG)
    assert order == ["worker batch done", "run"]
    assert not run_waiting(lock)


def test_a_run_still_refuses_at_once_when_another_run_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "churn.duckdb.lock"
    with (
        run_lock(lock),
        pytest.raises(LockHeldError, match="another churn run holds the lock"),
        run_lock(lock, wait_for_worker_seconds=60),
    ):
        pass


def test_the_worker_never_waits_for_a_run(tmp_path: Path) -> None:
    lock = tmp_path / "churn.duckdb.lock"
    with run_lock(lock), pytest.raises(LockHeldError), run_lock(lock, holder=WEBHOOK_HOLDER):
        pass
