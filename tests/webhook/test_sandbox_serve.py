"""`churn sandbox serve WORLD --webhook URL`: the stand-in delivers signed webhooks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churn.job.webhook import receiver
from churn.pipelines.webhook import PENDING
from churn.settings import load_settings

pytestmark = pytest.mark.slow


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
            for _ in range(600):  # a bound, not a deadline
                types = {i.split("_")[0] for i in rx.spool.event_ids(PENDING)}
                if len(rx.spool.event_ids(PENDING)) >= 5:
                    break
                time.sleep(0.05)
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=30) == 0
        counters = rx.spool.counters()
    assert types == {"evt"}
    assert counters.get("accepted", 0) >= 5
    assert not any(k.startswith("refused") for k in counters), counters
