"""A small world served on loopback, backfilled once per session; each test gets a copy of
the warehouse and fresh stand-ins loaded with the same world."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_world import SECRET, Hooked

from churn.job.run import run_job
from churn.sandbox.demo import demo_settings, serve_world
from churn.sandbox.stripe.webhooks import WebhookSender
from churn.sandbox.world import generate_world, write_world


@pytest.fixture(scope="session")
def hook_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(world folder, a warehouse after one clean churn run over it)."""
    folder = tmp_path_factory.mktemp("hook-world")
    write_world(generate_world(40, seed=7), folder, seed=7)
    db = folder.parent / "hook-base.duckdb"
    with serve_world(folder) as box:
        result = run_job(demo_settings(box, db))
        assert result.status == "success", result.steps
    return folder, db


@pytest.fixture
def hooked(hook_world: tuple[Path, Path], tmp_path: Path) -> Iterator[Hooked]:
    folder, base = hook_world
    db = tmp_path / "churn.duckdb"
    shutil.copy(base, db)
    with serve_world(folder) as box:
        settings = demo_settings(box, db).with_overrides(
            stripe={"webhook_secret": [SECRET]},
            webhook={"port": 0, "poll_seconds": 0.05},
        )
        # No real waits: the sender's backoff sleeps advance a clock of its own.
        clock = [1_000_000.0]
        sender = WebhookSender(
            clock=lambda: clock[0],
            sleep=lambda s: clock.__setitem__(0, clock[0] + s),
        )
        yield Hooked(box, settings, sender, SECRET)
        sender.stop()
