from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.errors import ConfigError
from churn.job.run import Step, run_job
from churn.job.scoring import score, usage_gaps
from churn.pipelines.usage import load_usage
from churn.settings import Settings
from churn.warehouse import connect
from golden_world import seed


def _settings(tmp_path: Path, folder: Path | None, account_field: str | None = None) -> Settings:
    return Settings(db=tmp_path / "w.duckdb").with_overrides(
        usage={"folder": folder, "account_field": account_field}
    )


def test_csv_and_parquet_upsert_and_quarantine(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "a.csv").write_text(
        "account_id,day,active_seats\n"
        "001A,2025-01-01,10\n"
        "001A,2025-01-02,x\n"
        ",2025-01-02,3\n"
        "001B,01/02/2025,4\n"
        "001B,2025-01-02,-1\n"
        "001A,2025-01-01,12\n"
    )
    pl.DataFrame(
        {"customer_id": ["cus_1"], "day": ["2025-01-03"], "active_seats": [7]}
    ).write_parquet(feed / "b.parquet")
    settings = _settings(tmp_path, feed)
    con = connect(settings.db)
    first = load_usage(settings, con)
    assert first.counts == {
        "files": 2, "rows": 2, "quarantined": 4, "account_field": 0, "files_unchanged": 0
    }  # fmt: skip
    rows = con.execute(
        "SELECT account_id, CAST(day AS VARCHAR), active_seats, source FROM core_usage ORDER BY 1"
    ).fetchall()
    assert rows == [("001A", "2025-01-01", 12, "a.csv"), ("cus_1", "2025-01-03", 7, "b.parquet")]
    bad = con.execute("SELECT object_id, reason FROM quarantine ORDER BY object_id").fetchall()
    assert bad == [
        ("a.csv:3", "active_seats is not an integer"),
        ("a.csv:4", "missing account_id"),
        ("a.csv:5", "day is not a YYYY-MM-DD date"),
        ("a.csv:6", "active_seats is negative"),
    ]
    again = load_usage(settings, con)
    assert again.counts["files_unchanged"] == 2 and again.counts["files"] == 0
    assert con.execute("SELECT count(*) FROM core_usage").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM quarantine").fetchall() == [(4,)]
    # A file that changed is loaded again (an upsert: what it still holds stays once).
    with (feed / "a.csv").open("a") as fh:
        fh.write("001A,2025-01-05,9\n")
    third = load_usage(settings, con)
    assert third.counts["files"] == 1 and third.counts["files_unchanged"] == 1
    assert con.execute("SELECT count(*) FROM core_usage").fetchall() == [(3,)]


def test_account_field_source_and_config_errors(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None, "Active_Seats__c")
    con = connect(settings.db)
    con.execute(
        "INSERT INTO raw_sf_account VALUES (?, ?, '2025-02-03 10:00:00', FALSE, now()),"
        " (?, ?, '2025-02-03 10:00:00', FALSE, now())",
        [
            "001A",
            json.dumps({"Active_Seats__c": 25.0}),
            "001B",
            json.dumps({"Active_Seats__c": None}),
        ],
    )
    result = load_usage(settings, con)
    assert result.counts["account_field"] == 1
    assert con.execute(
        "SELECT account_id, CAST(day AS VARCHAR), active_seats FROM core_usage"
    ).fetchall() == [("001A", "2025-02-03", 25)]
    # No source at all is not an error: the feed is optional (README, Going live: "Usage
    # feed (optional)"); the result says so in one note.
    unset = load_usage(_settings(tmp_path, None), con)
    assert unset.counts == {"not_configured": 1}
    assert len(unset.notes) == 1 and "CHURN_USAGE__FOLDER" in unset.notes[0]
    with pytest.raises(ConfigError, match="CHURN_USAGE__ACCOUNT_FIELD"):
        load_usage(_settings(tmp_path, None, "x'); DROP"), con)


def test_cli_extract_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "u.csv").write_text("account_id,day,active_seats\n001A,2025-01-01,3\n")
    monkeypatch.setenv("CHURN_USAGE__FOLDER", str(feed))
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "w.duckdb"), "extract", "usage"])
    assert result.exit_code == 0, result.output
    assert "rows=1" in result.output


# --- usage that cannot support the seat signals is named by the scoring step -----------

AS_OF = datetime(2026, 2, 15)  # noqa: DTZ001 (naive UTC, as the warehouse stores it)


def _seat_world(con: duckdb.DuckDBPyConnection, usage: dict[str, list[str]]) -> None:
    """Customers c<i> with 10 seats each (c_gone cancelled in January) and their usage."""
    customers = sorted({*usage, "c_gone"} - {"cus_ghost"})
    seed(
        con,
        {
            "core_prices": [{"price_id": "p1", "unit_amount": 1000}],
            "core_customers": [{"customer_id": c} for c in customers],
            "history_subscriptions": [
                {
                    "subscription_id": f"s_{c}",
                    "customer_id": c,
                    "valid_from": "2026-01-01T00:00:00",
                    "current_period_end": "2026-03-01T00:00:00",
                    **(
                        {"status": "canceled", "current_period_end": "2026-01-20"}
                        if c == "c_gone"
                        else {}
                    ),
                }
                for c in customers
            ],
            "history_subscription_items": [
                {
                    "subscription_id": f"s_{c}",
                    "item_id": f"si_{c}",
                    "valid_from": "2026-01-01T00:00:00",
                    "price_id": "p1",
                    "quantity": 10,
                }
                for c in customers
            ],
            "core_usage": [
                {"account_id": c, "day": d, "active_seats": 2}
                for c, days in usage.items()
                for d in days
            ],
        },
    )


def _days(first: str, n: int, step: int = 1) -> list[str]:
    d0 = date.fromisoformat(first)
    return [(d0 + timedelta(days=step * i)).isoformat() for i in range(n)]


def test_a_feed_too_sparse_for_the_seat_signals_is_named_by_the_scoring_step(
    con: duckdb.DuckDBPyConnection, caplog: pytest.LogCaptureFixture
) -> None:
    _seat_world(
        con,
        {
            # monthly, one sample each in the window: too few
            "c1": ["2026-02-01"],
            "c2": ["2026-02-01"],
            "c3": ["2026-02-01"],
            # daily, three days: too little coverage
            "c4": _days("2026-02-10", 3),
            # weekly and enough: the signal fires, nothing to say
            "c5": _days("2026-01-18", 5, 7),
            # keyed by an id nobody knows; usage of a customer that left: counted only
            "cus_ghost": _days("2026-02-01", 10),
            "c_gone": _days("2026-01-10", 5),
        },
    )
    with caplog.at_level(logging.INFO, logger="churn.job.scoring"):
        result = score(Settings(db=Path("unused.duckdb")), con, as_of=AS_OF)
    assert result.signals.filter(pl.col("signal") == "seat_utilization")[
        "account_id"
    ].to_list() == ["c5"]
    assert {k: v for k, v in result.counts.items() if k.startswith("seat_usage_")} == {
        "seat_usage_too_few_samples": 3,
        "seat_usage_too_little_coverage": 1,
        "seat_usage_unknown_key": 1,
        "seat_usage_no_seats": 1,
    }
    assert result.notes == (
        "seat signals: 3 accounts skipped: 1 usage sample in the 30-day window (and no other"
        " in the last 92 days); seat signals need 2",
        "seat signals: 1 account skipped: usage keyed by an id that is neither a Stripe"
        " customer nor a linked Account",
        "seat signals: 1 account skipped: usage samples cover 3 days of the 30-day window;"
        " seat signals need 7",
    )
    # Counts and reasons only: no account, customer or usage key in a note or a log line.
    logged = " ".join(r.getMessage() for r in caplog.records)
    for key in ("c1", "c4", "cus_ghost", "c_gone"):
        assert all(key not in note for note in result.notes)
        assert key not in logged
    assert result.notes[0] in logged


def test_many_kinds_of_gap_are_capped_with_a_remainder(con: duckdb.DuckDBPyConnection) -> None:
    # Coverage of 1..6 daily rows: six distinct reasons, and one too-few-samples.
    usage = {f"c{n}": _days("2026-02-14", n, -1) for n in range(1, 8)}
    _seat_world(con, usage)
    counts, notes = usage_gaps(con, Settings(db=Path("unused.duckdb")), AS_OF)
    assert counts == {"seat_usage_too_few_samples": 1, "seat_usage_too_little_coverage": 5}
    assert len(notes) == 6 and notes[-1] == (
        "seat signals: 1 more accounts skipped for other usage gaps"
    )


def test_the_run_log_keeps_the_scoring_steps_notes(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "w.duckdb")
    con = connect(settings.db)
    _seat_world(con, {"c1": ["2026-02-01"], "c2": _days("2026-02-01", 10)})
    con.close()

    def score_step(s: Settings, c: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        return score(s, c, as_of=AS_OF)

    result = run_job(settings, steps=[Step("score", score_step)])
    con = connect(settings.db)
    try:
        [(notes, counts)] = con.execute("SELECT notes, counts FROM run_log").fetchall()
    finally:
        con.close()
    assert json.loads(notes) == {"score": list(result.notes["score"])}
    assert "1 usage sample in the 30-day window" in json.loads(notes)["score"][0]
    assert json.loads(counts)["score"]["seat_usage_too_few_samples"] == 1


def test_churn_score_prints_the_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "w.duckdb"
    con = connect(db)
    _seat_world(con, {"c1": ["2026-02-01"]})
    con.close()
    monkeypatch.delenv("CHURN_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["--db", str(db), "score", "--as-of", "2026-02-15"])
    assert result.exit_code == 0, result.output
    assert "seat_usage_too_few_samples: 1" in result.output
    assert "note: seat signals: 1 account skipped: 1 usage sample" in result.output


def test_a_restated_sample_is_a_new_version(tmp_path: Path) -> None:
    """A feed restates a day already loaded: today's value is the new one, a score as of
    a time between the two loads reads the old one (core_usage_as_of), and a day
    reloaded unchanged keeps its first loaded_at."""
    feed = tmp_path / "feed"
    feed.mkdir()
    (feed / "a.csv").write_text(
        "account_id,day,active_seats\n001A,2025-01-01,10\n001A,2025-01-02,5\n"
    )
    settings = _settings(tmp_path, feed)
    con = connect(settings.db)
    load_usage(settings, con)
    first = con.execute("SELECT max(loaded_at) FROM core_usage").fetchall()[0][0]
    (feed / "a.csv").write_text(
        "account_id,day,active_seats\n001A,2025-01-01,3\n001A,2025-01-02,5\n"
    )
    load_usage(settings, con)
    rows = con.execute(
        "SELECT CAST(day AS VARCHAR), active_seats, loaded_at > ? FROM core_usage ORDER BY day",
        [first],
    ).fetchall()
    assert rows == [("2025-01-01", 3, True), ("2025-01-02", 5, False)]
    assert con.execute(
        "SELECT CAST(day AS VARCHAR), active_seats, loaded_at FROM core_usage_history"
    ).fetchall() == [("2025-01-01", 10, first)]

    def as_of(t: datetime) -> list[tuple[Any, ...]]:
        return con.execute(
            "SELECT CAST(day AS VARCHAR), active_seats FROM core_usage_as_of(?, DATE '2024-12-01') "
            "ORDER BY day",
            [t],
        ).fetchall()

    assert as_of(first) == [("2025-01-01", 10), ("2025-01-02", 5)]
    assert as_of(first + timedelta(days=3650)) == [("2025-01-01", 3), ("2025-01-02", 5)]
    # before anything was loaded: the first statement of each day (a first run's history)
    assert as_of(first - timedelta(days=3650)) == [("2025-01-01", 10), ("2025-01-02", 5)]
