"""The run's model step and the model scoring uses: retrain on a cadence, and a past date
scored by the version in force then (never one trained on data after it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from churn import warehouse
from churn.job.model import load_in_force, retrain_if_due
from churn.job.run import DEFAULT_STEPS
from churn.settings import Settings, SignalSettings
from churn.signals.model.features import FEATURE_NAMES

CUTOFF = datetime(2026, 11, 1, tzinfo=UTC).replace(tzinfo=None)  # naive UTC, as stored


def _store_baseline(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> None:
    """A baseline row as ``save_model`` writes it: this release's feature list."""
    con.execute(
        "INSERT INTO model_registry (version, kind, trained_at, cutoff, horizon_days, features,"
        " metrics, card) VALUES (?, 'baseline', ?, ?, 90, ?, '{}', ?)",
        [f"baseline-{cutoff:%Y%m%d}", cutoff, cutoff, json.dumps(list(FEATURE_NAMES)),
         json.dumps({"cutoff": cutoff.isoformat()})],
    )  # fmt: skip


def test_the_model_step_runs_between_links_and_scoring() -> None:
    names = [s.name for s in DEFAULT_STEPS]
    assert names.index("links") < names.index("model") < names.index("score")


def test_no_retraining_before_the_cadence(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """A version stored 6 days before the instant scored (weekly cadence): nothing trained,
    and the counts say how old the newest one is."""
    _store_baseline(con, CUTOFF)
    settings = Settings(db=tmp_path / "x.duckdb")
    got = retrain_if_due(settings, con, CUTOFF + timedelta(days=6))
    assert got.counts == {"trained": 0, "days_since_last_training": 6}
    rows = con.execute("SELECT count(*) FROM model_registry").fetchone()
    assert rows == (1,)


def test_retraining_can_be_switched_off(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    settings = Settings(
        db=tmp_path / "x.duckdb", signals=SignalSettings(model_retrain_every_days=0)
    )
    assert retrain_if_due(settings, con, CUTOFF).counts == {"trained": 0, "retrain_disabled": 1}
    assert con.execute("SELECT count(*) FROM model_registry").fetchone() == (0,)


def test_a_due_retraining_on_too_little_history_stores_the_baseline(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """An empty warehouse has no churners: the baseline is stored (so the next run does
    not try again before the cadence), nothing promoted, and the rule-based score stays."""
    settings = Settings(db=tmp_path / "x.duckdb")
    got = retrain_if_due(settings, con, CUTOFF)
    assert got.counts == {"trained": 1, "promoted": 0, "baseline": 1}
    assert got.notes and "not promoted" in got.notes[0]
    assert load_in_force(con, CUTOFF + timedelta(days=30)) is None
    assert retrain_if_due(settings, con, CUTOFF + timedelta(days=1)).counts["trained"] == 0


def test_a_version_trained_on_other_features_is_not_in_force_and_retraining_is_due(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """After an upgrade that changed the feature list, the stored version cannot score (its
    columns would not line up): it is not in force, and the run's model step retrains at
    once instead of waiting for the cadence."""
    from churn.job.model import _FEATURES_JSON

    con.execute(
        "INSERT INTO model_registry (version, kind, trained_at, cutoff, horizon_days, features,"
        " metrics, card, serialization, model, promoted, promoted_at)"
        " VALUES ('old', 'logistic', ?, ?, 90, '[\"tenure_days\"]', '{}', '{}', 'skops', ?,"
        " TRUE, ?)",
        [CUTOFF, CUTOFF, b"not loaded", CUTOFF],
    )
    assert load_in_force(con, CUTOFF + timedelta(days=1)) is None
    assert con.execute(
        "SELECT count(*) FROM model_registry WHERE features = ?", [_FEATURES_JSON]
    ).fetchone() == (0,)
    settings = Settings(db=tmp_path / "x.duckdb")
    got = retrain_if_due(settings, con, CUTOFF + timedelta(days=1))
    assert got.counts["trained"] == 1
    assert load_in_force(con, CUTOFF + timedelta(days=2)) is None  # empty: the baseline
    assert retrain_if_due(settings, con, CUTOFF + timedelta(days=2)).counts["trained"] == 0


def _store_fitted(con: duckdb.DuckDBPyConnection, version: str, seed: int) -> None:
    """A promoted row holding a small fitted estimator, stored as skops bytes."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from churn.signals.model import serialize

    rnd = np.random.default_rng(seed)
    x = rnd.normal(size=(40, len(FEATURE_NAMES)))
    est = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    con.execute(
        "INSERT INTO model_registry (version, kind, trained_at, cutoff, horizon_days, features,"
        " metrics, card, serialization, model, promoted, promoted_at)"
        " VALUES (?, 'logistic', ?, ?, 90, ?, '{}', '{}', 'skops', ?, TRUE, ?)",
        [version, CUTOFF, CUTOFF, json.dumps(list(FEATURE_NAMES)), serialize.dumps(est), CUTOFF],
    )  # fmt: skip


def test_the_model_in_force_is_rebuilt_once_per_process(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding a stored model imports scikit-learn and skops and reads its bytes (about
    2 CPU seconds, most of a 1% incremental run's scoring): each stored row is rebuilt once
    per process (``churn schedule`` runs the job in one process), and another warehouse's
    model under the same version name is its own."""
    from churn.signals.model import serialize

    calls: list[int] = []
    real = serialize.loads

    def counted(data: bytes) -> object:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(serialize, "loads", counted)
    version = f"logistic-{tmp_path.name}"  # a name no other test's row has in this process
    _store_fitted(con, version, seed=1)
    at = CUTOFF + timedelta(days=1)
    first = load_in_force(con, at)
    second = load_in_force(con, at)
    assert first is not None and first is second
    assert len(calls) == 1
    other = warehouse.connect(tmp_path / "other.duckdb")
    try:
        _store_fitted(other, version, seed=2)
        elsewhere = load_in_force(other, at)
    finally:
        other.close()
    assert elsewhere is not None and elsewhere is not first
    assert len(calls) == 2
