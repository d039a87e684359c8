from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.errors import ConfigError
from churn.pipelines.usage import load_usage
from churn.settings import Settings
from churn.warehouse import connect


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
    with pytest.raises(ConfigError, match="CHURN_USAGE__FOLDER"):
        load_usage(_settings(tmp_path, None), con)
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
