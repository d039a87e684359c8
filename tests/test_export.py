"""`churn export`: the marts as Parquet partitioned by as_of, equal to the warehouse, idempotent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.job.scoring import score
from churn.settings import Settings
from churn.warehouse.export import MARTS, export_marts
from golden_world import seed_two_accounts

DAYS = (dt.datetime.fromisoformat("2026-02-01"), dt.datetime.fromisoformat("2026-02-15"))


def _scored(db: Path) -> None:
    con = warehouse.connect(db)
    seed_two_accounts(con)
    for as_of in DAYS:
        score(Settings(db=db), con, as_of=as_of)
    con.close()


def _read(out: Path, mart: str) -> list[tuple[object, ...]]:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            f"SELECT * FROM read_parquet('{out}/{mart}/*/*.parquet',"
            " hive_partitioning = false, filename = false) ORDER BY ALL"
        ).fetchall()


def _warehouse_rows(db: Path, mart: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(f"SELECT * FROM {mart} ORDER BY ALL").fetchall()


def test_export_writes_every_mart_partitioned_by_as_of(tmp_path: Path) -> None:
    db, out = tmp_path / "churn.duckdb", tmp_path / "export"
    _scored(db)
    result = export_marts(db, out)
    for mart in MARTS:
        parts = sorted(str(p.relative_to(out / mart)) for p in (out / mart).glob("*/*"))
        expected = [f"as_of_date={d:%Y-%m-%d}/as_of={d:%Y-%m-%dT%H%M%S}.parquet" for d in DAYS]
        assert result.snapshots[mart] == (2 if result.rows[mart] else 0), mart
        expected = expected if result.rows[mart] else []
        assert parts == expected, mart
        assert _read(out, mart) == _warehouse_rows(db, mart), mart
    assert result.rows["account_health"] == 4  # two accounts, two snapshots
    # an engine reading the Hive layout sees the partition columns
    with duckdb.connect() as con:
        dates = con.execute(
            f"SELECT DISTINCT as_of_date FROM read_parquet('{out}/account_health/*/*.parquet',"
            " hive_partitioning = true) ORDER BY 1"
        ).fetchall()
    assert [str(d[0]) for d in dates] == ["2026-02-01", "2026-02-15"]


def test_export_twice_keeps_one_copy_and_since_limits_the_snapshots(tmp_path: Path) -> None:
    db, out = tmp_path / "churn.duckdb", tmp_path / "export"
    _scored(db)
    export_marts(db, out)
    again = export_marts(db, out, since=DAYS[1])
    assert again.snapshots["account_health"] == 1
    assert _read(out, "account_health") == _warehouse_rows(db, "account_health")
    assert not list(out.rglob("*.partial"))


def test_cli_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, out = tmp_path / "churn.duckdb", tmp_path / "export"
    _scored(db)
    monkeypatch.setenv("CHURN_DB", str(db))
    result = CliRunner().invoke(app, ["export", str(out), "--since", "2026-02-10"])
    assert result.exit_code == 0, result.output
    assert "account_health" in result.output
    assert len(_read(out, "account_health")) == 2


def test_cli_export_without_a_warehouse_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["--db", str(tmp_path / "none.duckdb"), "export", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "run `churn run` first" in result.output
    assert "Traceback" not in result.output
