"""The backfill's streams read concurrently: the same warehouse as one stream at a time,
429s from a stand-in enforcing a rate limit ridden out, and a kill at any point healed.

The sandbox's Stripe stand-in serves a small world; pages of 5 objects and batches of 2
pages make dozens of transactions, interleaved across streams.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import extract_stripe
from churn.pipelines.stripe.streams import STREAMS
from churn.sandbox.stripe.server import stripe_server
from churn.sandbox.world import World
from churn.settings import load_settings
from faults import tally
from stripe_extract.landed import (
    COMMITTED,
    extract_cli,
    extract_env,
    landed,
    lost_and_extra,
    read_commits,
)

#: Before any run of this module: the small world's own times are all earlier.
FETCHED_AFTER = warehouse.utcnow().replace(microsecond=0) - timedelta(minutes=1)


def _env(db: Path, base: str, key: str, **extra: str) -> dict[str, str]:
    return extract_env(
        db,
        base,
        key,
        STRIPE_PAGE_SIZE="5",
        STRIPE_LAND_BATCH_PAGES="2",
        # No client-side limit here (the stand-in enforces none): tested on its own.
        STRIPE_RATE_PER_SECOND="0",
        STRIPE_ENDPOINT_RATE_PER_SECOND="0",
        **extra,
    )


def _extract(env: dict[str, str]) -> Any:
    settings = load_settings(env)
    con = warehouse.connect(settings.db)
    try:
        return extract_stripe(settings, con, progress=False)
    finally:
        con.close()


def _contents(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    # History bounds a listing opens are its fetch time: compared as "a fetch time".
    return landed(db, FETCHED_AFTER)


def _differences(want: dict[str, list[Any]], got: dict[str, list[Any]]) -> dict[str, int]:
    return {
        t: len(set(rows) ^ set(got.get(t, [])))
        for t, rows in want.items()
        if sorted(rows, key=repr) != sorted(got.get(t, []), key=repr)
    }


def test_concurrent_backfill_lands_what_one_stream_at_a_time_lands(
    small_world: tuple[World, Path], tmp_path: Path
) -> None:
    _, folder = small_world
    with stripe_server(folder) as srv:
        sequential = _extract(
            _env(tmp_path / "seq.duckdb", srv.api_base, srv.api_key, STRIPE_CONCURRENCY="1")
        )
        concurrent = _extract(
            _env(tmp_path / "conc.duckdb", srv.api_base, srv.api_key, STRIPE_CONCURRENCY="6")
        )
    assert sequential.mode == concurrent.mode == "backfill"
    listed = {k: v for k, v in sequential.counts.items() if k.startswith("objects_")}
    assert sum(listed.values()) > 200  # dozens of pages, interleaved across streams
    assert concurrent.counts == sequential.counts
    assert concurrent.api_calls == sequential.api_calls
    want, got = _contents(tmp_path / "seq.duckdb"), _contents(tmp_path / "conc.duckdb")
    assert sum(len(rows) for rows in want.values()) > 1000
    assert _differences(want, got) == {}


def test_a_rate_limited_stand_in_is_ridden_out_by_all_streams(
    small_world: tuple[World, Path], tmp_path: Path
) -> None:
    """The stand-in answers 429 past 40 requests a second (10 per endpoint) to a client
    that does not hold itself to any rate: every stream backs off on the 429s (the limit
    is the account's) and the backfill lands what an unlimited one does."""
    _, folder = small_world
    with stripe_server(folder) as srv:
        _extract(_env(tmp_path / "free.duckdb", srv.api_base, srv.api_key))
    with stripe_server(folder, rate_per_second=40, endpoint_rate_per_second=10) as srv:
        result = _extract(
            _env(
                tmp_path / "limited.duckdb",
                srv.api_base,
                srv.api_key,
                STRIPE_MAX_RETRIES="20",
                STRIPE_BACKOFF_MAX_SECONDS="1",
            )
        )
        refused = srv.rate_limited
    assert refused > 0, "the stand-in never refused: the test proves nothing"
    tally.record(faults_injected=refused, runs_healed=1)
    assert result.api_calls > refused
    want, got = _contents(tmp_path / "free.duckdb"), _contents(tmp_path / "limited.duckdb")
    assert _differences(want, got) == {}


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_during_a_concurrent_backfill_heals(
    small_world: tuple[World, Path], tmp_path: Path
) -> None:
    """`churn extract stripe` with six streams at once, SIGKILLed after a random committed
    batch (plus a random moment), then rerun: the warehouse equals a clean run's."""
    _, folder = small_world
    with stripe_server(folder) as srv:
        clean = tmp_path / "clean.duckdb"
        env = _env(clean, srv.api_base, srv.api_key, STRIPE_CONCURRENCY="6")
        proc = subprocess.run(
            [sys.executable, "-m", "churn", "-v", "extract", "stripe", "--no-progress"],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        commits = proc.stderr.count(COMMITTED)
        assert commits >= 20
        expected = _contents(clean)
        rng = random.Random(16)
        states = set()
        for i in range(3):
            db = tmp_path / f"kill{i}.duckdb"
            after = rng.randrange(1, commits - 2)
            killed = extract_cli({**env, "CHURN_DB": str(db)})
            read_commits(killed, after)
            killed.send_signal(signal.SIGKILL)
            killed.communicate(timeout=60)
            landed = _contents(db)
            states.add(sum(len(landed[s.table]) for s in STREAMS))
            shutil.copy(db, tmp_path / f"kill{i}-as-killed.duckdb")
            _extract({**env, "CHURN_DB": str(db)})
            got = _contents(db)
            lost, extra = lost_and_extra(expected, got)
            tally.record(kills=1, runs_healed=1, rows_lost=lost, duplicates=extra)
            assert _differences(expected, got) == {}, f"killed after commit {after}"
        # the kills landed mid-backfill, at different points
        assert len(states) >= 2, states
