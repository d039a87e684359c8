"""A model trains with DuckDB held to ``run.model_memory_limit`` (the blocks its features
read are not kept cached beside the fit), restored after, and again without it when a
warehouse's features need more."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

import churn.job.model as job_model
from churn.settings import Settings
from churn.warehouse import connect

AT = datetime(2026, 3, 1)  # noqa: DTZ001


def _limit(con: duckdb.DuckDBPyConnection) -> str:
    return str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])


def _record_limits(
    monkeypatch: pytest.MonkeyPatch, *, out_of_memory_first: bool = False
) -> list[str]:
    """The model's evaluation replaced by one recording the DuckDB limit it runs under
    (the first call out of memory, with ``out_of_memory_first``); the list it fills."""
    seen: list[str] = []

    def evaluate(tables: Any, *args: Any, **kwargs: Any) -> str:
        seen.append(_limit(tables.con))
        if out_of_memory_first and len(seen) == 1:
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate")
        return "evaluated"

    monkeypatch.setattr(job_model, "evaluate", evaluate)
    return seen


def test_training_runs_under_the_model_memory_limit_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = connect(tmp_path / "w.duckdb")
    default = _limit(con)
    seen = _record_limits(monkeypatch)
    settings = Settings(db=tmp_path / "w.duckdb", run={"model_memory_limit": "300MB"})
    assert job_model.evaluate_at(settings, con, AT) == "evaluated"
    assert seen == ["286.1 MiB"] and _limit(con) == default
    # A run bounded as a whole keeps its own bound.
    whole = Settings(db=tmp_path / "w.duckdb", run={"duckdb_memory_limit": "2GB"})
    con.execute("SET memory_limit = '2GB'")
    job_model.evaluate_at(whole, con, AT)
    assert seen[-1] == _limit(con) == "1.8 GiB"


def test_features_past_the_limit_are_computed_again_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    con = connect(tmp_path / "w.duckdb")
    default = _limit(con)
    seen = _record_limits(monkeypatch, out_of_memory_first=True)
    settings = Settings(db=tmp_path / "w.duckdb", run={"model_memory_limit": "300MB"})
    with caplog.at_level(logging.WARNING):
        assert job_model.evaluate_at(settings, con, AT) == "evaluated"
    assert seen == ["286.1 MiB", default]
    assert "CHURN_RUN__MODEL_MEMORY_LIMIT=300MB" in caplog.text


def test_release_cache_hands_back_the_blocks_read_and_keeps_the_limit(tmp_path: Path) -> None:
    """Before a fit, the blocks the features' SQL read leave DuckDB's buffer pool (at
    100,000 accounts about 1 GB beside scikit-learn's arrays); its limit stays."""
    from churn.signals.tables import Tables

    db = tmp_path / "w.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(2000000)")
    con.execute("CHECKPOINT")
    con.close()
    con = duckdb.connect(str(db))
    con.execute("SET memory_limit = '1GB'")

    def pooled() -> int:
        return int(
            con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()[0][0]
        )

    con.execute("SELECT sum(length(s)) FROM t").fetchall()
    read = pooled()
    Tables(con).release_cache()
    assert pooled() < read / 2
    Tables(con).release_cache()
    assert _limit(con) == "953.6 MiB"
