"""The marts keep every snapshot of the recent days and one a day before that."""

from __future__ import annotations

import datetime as dt

import duckdb

from churn.job.retention import MARTS
from churn.job.scoring import score
from churn.settings import RunSettings, Settings
from golden_world import seed_two_accounts


def _snapshots(con: duckdb.DuckDBPyConnection, mart: str) -> list[str]:
    rows = con.execute(f"SELECT DISTINCT as_of FROM {mart} ORDER BY 1").fetchall()
    return [r[0].isoformat(sep=" ") for r in rows]


def test_old_snapshots_thin_to_the_last_of_each_day(
    con: duckdb.DuckDBPyConnection, db_path: object
) -> None:
    seed_two_accounts(con)
    settings = Settings(db=db_path, run=RunSettings(keep_every_snapshot_days=2))
    start = dt.datetime.fromisoformat("2026-02-10 00:00")
    # a 6-hour cadence over four days: 16 runs
    runs = [start + dt.timedelta(hours=6 * i) for i in range(16)]
    for as_of in runs:
        result = score(settings, con, as_of=as_of)
    # the newest is 02-13 18:00: everything from 02-11 18:00 on is kept, before it the
    # last of each day (02-10 18:00, 02-11 12:00 being before the window's start)
    kept = _snapshots(con, "account_health")
    assert kept == [
        "2026-02-10 18:00:00",
        "2026-02-11 12:00:00",
        "2026-02-11 18:00:00",
        "2026-02-12 00:00:00",
        "2026-02-12 06:00:00",
        "2026-02-12 12:00:00",
        "2026-02-12 18:00:00",
        "2026-02-13 00:00:00",
        "2026-02-13 06:00:00",
        "2026-02-13 12:00:00",
        "2026-02-13 18:00:00",
    ]
    for mart in MARTS:
        assert set(_snapshots(con, mart)) <= set(kept), mart
    assert _snapshots(con, "account_mrr") == kept
    assert result.counts.get("snapshots_thinned", 0) in (0, 1)


def test_a_backfill_of_old_dates_is_not_thinned_by_the_day_it_runs(
    con: duckdb.DuckDBPyConnection, db_path: object
) -> None:
    seed_two_accounts(con)
    settings = Settings(db=db_path, run=RunSettings(keep_every_snapshot_days=0))
    days = [dt.datetime.fromisoformat(f"2026-01-{d:02d}") for d in range(1, 11)]
    for as_of in days:
        score(settings, con, as_of=as_of)
    assert len(_snapshots(con, "account_health")) == 10
