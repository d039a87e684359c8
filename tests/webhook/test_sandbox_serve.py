"""`churn sandbox serve WORLD --webhook URL`: the stand-in delivers signed webhooks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from churn.job.webhook import receiver
from churn.pipelines.webhook import PENDING
from churn.settings import load_settings

pytestmark = pytest.mark.slow

HANG = 600.0  # seconds: a guard against a hang, not a speed check


def test_sandbox_serve_delivers_signed_webhooks_to_the_registered_url(
    hook_world: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, _ = hook_world
    secret = "whsec_sandbox_serve"
    settings = load_settings(
        env={
            "CHURN_DB": str(tmp_path / "churn.duckdb"),
            "STRIPE_API_KEY": "sk_test_sandbox",
            "STRIPE_WEBHOOK_SECRET": secret,
            "CHURN_WEBHOOK__PORT": "0",
        }
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "SALESFORCE_"))}
    with receiver(settings, port=0, worker=False) as rx:
        spooled = threading.Condition()
        put = rx.spool.put

        def put_and_tell(event: dict[str, Any], payload: str, *, used: bool) -> bool:
            new = put(event, payload, used=used)
            with spooled:
                spooled.notify_all()
            return new

        rx.spool.put = put_and_tell  # type: ignore[method-assign]
        serve = subprocess.Popen(
            [sys.executable, "-m", "churn", "sandbox", "serve", str(folder),
             "--webhook", rx.url, "--webhook-secret", secret,
             "--fail-payments-every", "0.2"],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            exports = {}
            while "STRIPE_WEBHOOK_SECRET" not in exports:
                line = serve.stdout.readline()
                assert line, "serve exited before printing its exports"
                key, _, value = line.removeprefix("export ").strip().partition("=")
                exports[key] = value
            assert exports["STRIPE_WEBHOOK_SECRET"] == secret
            # Woken by each delivery the receiver spools (no polling); the timeout is a
            # guard against a hang, not a speed check.
            with spooled:
                assert spooled.wait_for(lambda: len(rx.spool.event_ids(PENDING)) >= 5, HANG)
            types = {i.split("_")[0] for i in rx.spool.event_ids(PENDING)}
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=HANG) == 0
        counters = rx.spool.counters()
    assert types == {"evt"}
    assert counters.get("accepted", 0) >= 5
    assert not any(k.startswith("refused") for k in counters), counters
