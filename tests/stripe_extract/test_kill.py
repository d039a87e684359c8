"""SIGKILL the extract (a real `churn extract stripe` process) at random points of a
backfill and of an incremental run; the rerun must leave the warehouse as one clean run."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import extract_stripe
from churn.settings import load_settings
from faults import tally

from .conftest import HANG, TEST_KEY, LocalStripe, add_card, build_world
from .landed import COMMITTED, extract_cli, extract_env, landed, lost_and_extra, read_commits

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.xdist_group("localstripe-kill")]

KILLS_PER_PHASE = 6


def _env(db: Path, base: str) -> dict[str, str]:
    return extract_env(
        db,
        base,
        TEST_KEY,
        STRIPE_PAGE_SIZE="2",  # many pages: many transactions to be killed between
        STRIPE_LAND_BATCH_PAGES="2",  # and batches of pages, as a real backfill lands them
        STRIPE_EVENTS_BATCH_PAGES="1",  # events a page a transaction: as many kill points
        STRIPE_MAX_RETRIES="0",
        STRIPE_EVENTS_OVERLAP_SECONDS="0",
        STRIPE_EVENTS_ORDER="oldest_first",
    )


def _cli(db: Path, base: str) -> subprocess.Popen[bytes]:
    # -v: the extract logs each committed page, which lets the kills land mid-run.
    return extract_cli(_env(db, base))


def _clean_run(db: Path, base: str) -> int:
    """Runs to the end; returns how many pages it committed."""
    process = _cli(db, base)
    _, err = process.communicate(timeout=HANG)
    assert process.returncode == 0, err[-2000:]
    return err.count(COMMITTED)


def _rerun(db: Path, base: str) -> None:
    settings = load_settings(_env(db, base))
    con = warehouse.connect(db)
    try:
        extract_stripe(settings, con, progress=False)
    finally:
        con.close()


def _progress(db: Path) -> tuple[int, bool]:
    """(committed sync_state rows, backfill complete) of a killed run's file."""
    con = warehouse.connect(db)
    try:
        rows = con.execute("SELECT stream, details::VARCHAR FROM sync_state").fetchall()
        events = con.execute("SELECT count(*) FROM raw_stripe_event").fetchone()
    finally:
        con.close()
    done = any(s == "stripe:backfill:all" and '"done": true' in d for s, d in rows)
    return len(rows) + (events[0] if events else 0), done


def _kill_after(db: Path, base: str, commits: int, jitter: float) -> None:
    """SIGKILL ``jitter`` seconds after the ``commits``-th committed page (0: after start)."""
    process = _cli(db, base)
    read_commits(process, commits)
    time.sleep(jitter)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=HANG)


def _phase(
    tmp: Path, base: str, start_from: Path | None, name: str, seed: int
) -> list[tuple[float, int]]:
    """Clean run vs KILLS_PER_PHASE killed-then-rerun runs from the same starting file."""

    def fresh(tag: str) -> Path:
        db = tmp / f"{name}-{tag}.duckdb"
        if start_from is not None:
            shutil.copy(start_from, db)
        return db

    clean = fresh("clean")
    pages = _clean_run(clean, base)
    assert pages >= 2 * KILLS_PER_PHASE
    _rerun(clean, base)  # a rerun after a clean run changes nothing either
    expected = landed(clean)
    rng = random.Random(seed)
    points = []
    for i in range(KILLS_PER_PHASE):
        # a random page, then a random moment after it (mid-fetch, mid-transaction...)
        after = rng.randrange(0, pages)
        jitter = rng.uniform(0, 0.03)
        db = fresh(f"kill{i}")
        _kill_after(db, base, after, jitter)
        committed, _ = _progress(db)
        points.append((after, committed))
        _rerun(db, base)
        got = landed(db)
        lost, extra = lost_and_extra(expected, got)
        tally.record(kills=1, runs_healed=1, rows_lost=lost, duplicates=extra)
        assert got == expected, f"{name}: killed {jitter:.3f}s after page {after}"
    return points


def test_sigkill_backfill_and_incremental_then_rerun(
    localstripe: LocalStripe, tmp_path: Path
) -> None:
    c = localstripe.client()
    localstripe.reset()
    # The world's own events stay before the backfill's cursor: stamped 5 s early on
    # localstripe's clock (Stripe stamps to the second), not waited out.
    localstripe.shift_clock(-5)
    world = build_world(c)
    localstripe.shift_clock(0)

    backfill_points = _phase(tmp_path, localstripe.base, None, "backfill", seed=1)

    base_db = tmp_path / "base.duckdb"
    _clean_run(base_db, localstripe.base)
    # The changes below are stamped after the base run's last second: 2 s on, on
    # localstripe's clock, instead of sleeping until the wall clock's second turns.
    localstripe.shift_clock(2)
    # Changes that emit events: new customers with subscriptions, cancellations, deletions.
    for i in range(12):
        cus = c.v1.customers.create({"email": f"late{i}@late.example", "name": f"Late {i}"})
        add_card(c, cus.id, "4242424242424242")
        c.v1.subscriptions.create({"customer": cus.id, "items": [{"plan": "basic-monthly"}]})
    for role in ("sub2", "sub3", "sub4"):
        c.v1.subscriptions.cancel(world.subscriptions[role])
    c.v1.customers.delete(world.customers[6])
    incremental_points = _phase(tmp_path, localstripe.base, base_db, "incremental", seed=2)

    # The kills landed mid-run, not only before or after all work.
    for points in (backfill_points, incremental_points):
        assert len({n for _, n in points}) >= 3, points
    print(
        "kill points (page, state rows at the kill):",
        backfill_points,
        incremental_points,
    )
