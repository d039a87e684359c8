"""Scoring a past ``now``: ``churn run --as-of`` and ``CHURN_RUN__AS_OF``."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.errors import ConfigError
from churn.job import run as job_run
from churn.job.run import DEFAULT_STEPS, Step, run_job
from churn.settings import load_settings

STEPS = {s.name: s for s in DEFAULT_STEPS}


def _settings(tmp_path: Path, **env: str) -> Any:
    return load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb"), **env})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-09-01", datetime(2026, 9, 1)),  # noqa: DTZ001 - naive UTC is the convention
        ("2026-09-01T10:30:00+02:00", datetime(2026, 9, 1, 8, 30)),  # noqa: DTZ001
        ("2026-09-01T10:30:00Z", datetime(2026, 9, 1, 10, 30)),  # noqa: DTZ001
    ],
)
def test_as_of_is_read_as_utc(tmp_path: Path, text: str, expected: datetime) -> None:
    assert _settings(tmp_path, CHURN_RUN__AS_OF=text).run.as_of == expected


def test_a_bad_as_of_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHURN_RUN__AS_OF"):
        _settings(tmp_path, CHURN_RUN__AS_OF="last tuesday")


def test_the_score_step_scores_as_of_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[datetime] = []

    def fake_score(s: Any, con: duckdb.DuckDBPyConnection, *, as_of: datetime) -> Any:
        seen.append(as_of)
        return None

    monkeypatch.setattr("churn.job.scoring.score", fake_score)
    settings = _settings(tmp_path, CHURN_RUN__AS_OF="2026-09-01")
    result = run_job(settings, steps=[STEPS["score"]])
    assert result.status == "success"
    assert seen == [datetime(2026, 9, 1)]  # noqa: DTZ001


def test_without_as_of_the_score_step_scores_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[datetime] = []
    monkeypatch.setattr("churn.job.scoring.score", lambda s, con, *, as_of: seen.append(as_of))
    before = warehouse.utcnow()
    run_job(_settings(tmp_path), steps=[STEPS["score"]])
    assert len(seen) == 1 and before <= seen[0] <= warehouse.utcnow()


def test_a_backfill_older_than_the_latest_scoring_is_not_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = warehouse.connect(tmp_path / "w.duckdb")
    con.execute(
        "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, known_churn,"
        " reporting_currency, subscription_count) VALUES ('001A', ?, 'Healthy', 0, FALSE, 'USD', 1)",
        [datetime(2026, 10, 1)],  # noqa: DTZ001
    )
    con.close()

    def no_push(*a: Any, **k: Any) -> Any:
        raise AssertionError("a back-fill must not push")

    monkeypatch.setattr("churn.pipelines.push.sync.push", no_push)
    settings = _settings(tmp_path, CHURN_RUN__AS_OF="2026-09-01")
    result = run_job(settings, steps=[STEPS["push"]])
    assert result.status == "success" and result.exit_code == 0
    assert result.steps[0].counts == {"not_pushed_backfill": 1}


def test_the_latest_as_of_is_pushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(
        "churn.pipelines.push.sync.push", lambda s, con, *, dry_run: calls.append(dry_run)
    )
    settings = _settings(tmp_path, CHURN_RUN__AS_OF="2026-09-01")
    run_job(settings, steps=[Step("push", job_run._push)])
    assert calls == [False]


@pytest.mark.parametrize("value", ["2999-01-01", "soon"])
def test_cli_refuses_a_future_or_unreadable_as_of_in_one_line(tmp_path: Path, value: str) -> None:
    future = (warehouse.utcnow() + timedelta(days=1)).date().isoformat()
    value = future if value.startswith("2999") else value
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "w.duckdb"), "run", "--as-of", value])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1  # one message (the console wraps it at 80)
    assert "as_of" in result.output.lower() or "as-of" in result.output.lower()
