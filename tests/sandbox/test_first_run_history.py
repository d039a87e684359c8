"""A world seen for the first time today: its past seat cuts fire ``downgrade`` at once.

The world's own events say when each subscription's seats changed. A backfill reads
today's state and only the last 30 days of events (all Stripe keeps), so a cut made 45
to 85 days ago is known to the service only through the invoices billed since; the
first run must still fire ``downgrade`` for it, and MRR movements must reach back to the
first invoices.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from churn import warehouse
from churn.job.run import DEFAULT_STEPS, run_job
from churn.sandbox.demo import demo_settings, serve_world
from churn.sandbox.world import World, generate_world, write_world

DAY = 86_400
pytestmark = pytest.mark.slow


def _seats_at(world: World, t: int) -> dict[str, tuple[str, int]]:
    """subscription -> (customer, licensed seats) at ``t``, from the world's events."""
    state: dict[str, dict[str, Any]] = {}
    for event in sorted(world.events, key=lambda e: e["created"]):
        obj = event["data"]["object"]
        if event["created"] <= t and obj.get("object") == "subscription":
            state[obj["id"]] = obj
    return {
        sid: (s["customer"], sum(int(i.get("quantity") or 0) for i in s["items"]["data"]))
        for sid, s in state.items()
        if s["status"] in ("active", "past_due")
    }


def test_first_run_fires_downgrades_made_before_the_events_stripe_keeps(
    tmp_path: Path,
) -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    world = generate_world(200, seed=23, now=now)
    folder = tmp_path / "world"
    write_world(world, folder, seed=23)
    t_now = int(now.timestamp())
    before, after_cut, today = (
        _seats_at(world, t_now - 89 * DAY),
        _seats_at(world, t_now - 45 * DAY),
        _seats_at(world, t_now),
    )
    # Seats cut by at least 10% between 89 and 45 days ago and unchanged since.
    cut = {
        cus for sid, (cus, seats) in today.items()
        if sid in before and seats == after_cut.get(sid, (cus, -1))[1]
        and seats <= 0.9 * before[sid][1]
    }  # fmt: skip
    assert cut, "the world should cut some seats in that window"

    db = tmp_path / "w.duckdb"
    with serve_world(folder) as sandbox:
        settings = demo_settings(sandbox, db).with_overrides(
            run={"as_of": now.replace(tzinfo=None)}
        )
        result = run_job(settings, steps=[s for s in DEFAULT_STEPS if s.name != "push"])
    assert result.status == "success", [o.error for o in result.steps]

    con = warehouse.connect(db, read_only=True)
    try:
        links = dict(
            con.execute("SELECT customer_id, account_id FROM core_account_links").fetchall()
        )
        fired = {
            r[0]
            for r in con.execute(
                "SELECT account_id FROM signal_events WHERE signal = 'downgrade' AND as_of = ?",
                [now.replace(tzinfo=None)],
            ).fetchall()
        }
        first_month = con.execute("SELECT min(month) FROM mrr_movements").fetchone()
    finally:
        con.close()
    missed = {c for c in cut if (links.get(c) or c) not in fired}  # unmatched: keyed by customer
    assert not missed, f"{len(missed)} of {len(cut)} past seat cuts did not fire"
    first_invoice = min(i["created"] for i in world.stripe["invoice"])
    first = datetime.fromtimestamp(first_invoice, UTC).date().replace(day=1)
    assert first_month is not None and first_month[0] <= first
