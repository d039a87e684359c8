"""The back-test split, the leakage guards, calibration, storage and reasons (fast)."""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest

from churn.errors import ScoringError
from churn.signals.model import serialize
from churn.signals.model.features import FEATURE_NAMES
from churn.signals.model.metrics import calibration_table, summary, top_decile_lift
from churn.signals.model.reasons import contributions, reasons_frame, sentence
from churn.signals.model.train import (
    CANDIDATES,
    backtest,
    backtest_folds,
    fit_calibrated,
    probabilities,
    sample_stayers,
    usable,
)
from churn.signals.tables import Tables

T0 = datetime(2025, 1, 1)  # noqa: DTZ001 (naive UTC, as the warehouse)
SNAPS = [T0 + timedelta(days=14 * i) for i in range(40)]


def synthetic(n_accounts: int = 400, signal: float = 2.0, seed: int = 0) -> pl.DataFrame:
    """Accounts at every snapshot; churn depends on two features (and noise)."""
    rng = np.random.default_rng(seed)
    rows = n_accounts * len(SNAPS)
    data: dict[str, object] = {
        name: rng.normal(size=rows).astype(np.float32) for name in FEATURE_NAMES
    }
    data["utilization_30d"] = np.full(rows, np.nan, dtype=np.float32)  # a feed not there yet
    x = np.asarray(data["failures_180d"]) - np.asarray(data["mrr_change_90d"])
    p = 1 / (1 + np.exp(-(signal * x - 3)))
    return pl.DataFrame(
        {
            "account_id": [f"a{i % n_accounts}" for i in range(rows)],
            "snapshot_at": [SNAPS[i // n_accounts] for i in range(rows)],
            "known_churn": rng.random(rows) < 0.02,
            "churned": rng.random(rows) < p,
            "mrr_minor": np.full(rows, 10_000, dtype=np.int64),
            **data,
        }
    ).with_columns(pl.col("snapshot_at").cast(pl.Datetime("us")))


def test_folds_train_only_on_snapshots_whose_horizon_ended_before_the_test_block() -> None:
    folds = backtest_folds(SNAPS, horizon_days=90, folds=3, test_span=4)
    assert len(folds) == 3
    for fold in folds:
        assert fold.train and fold.test
        assert max(fold.train) + timedelta(days=90) <= min(fold.test)
        assert not set(fold.train) & set(fold.test)
    # later folds test later
    assert [min(f.test) for f in folds] == sorted(min(f.test) for f in folds)


def test_the_default_backtest_has_five_time_ordered_folds() -> None:
    """The model is chosen on five later blocks of two snapshots, not three of four."""
    folds = backtest_folds(SNAPS, horizon_days=90)
    assert len(folds) == 5
    assert all(len(f.test) == 2 for f in folds)
    assert [min(f.test) for f in folds] == sorted(min(f.test) for f in folds)
    assert max(folds[-1].test) == SNAPS[-1]
    for fold in folds:
        assert max(fold.train) + timedelta(days=90) <= min(fold.test)


def test_usable_rows_have_labels_known_at_the_cutoff_and_no_known_churn() -> None:
    frame = synthetic(20)
    cutoff = SNAPS[30]
    rows = usable(frame, cutoff, 90)
    assert rows.height > 0
    assert rows["snapshot_at"].max() + timedelta(days=90) <= cutoff  # type: ignore[operator]
    assert not rows["known_churn"].any()


def test_backtest_finds_the_signal_and_beats_a_flat_baseline() -> None:
    frame = synthetic(150)
    flat = {s: pl.DataFrame({"account_id": ["a0"], "risk_score": [50]}) for s in SNAPS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = backtest(frame, 90, flat)
    assert set(result.metrics) == {*CANDIDATES, "baseline"}
    assert result.chosen in CANDIDATES
    assert result.metrics[result.chosen]["roc_auc"] > 0.8
    assert result.metrics["baseline"]["roc_auc"] < 0.55
    for fold in result.folds:
        assert fold["train_until"] < fold["test_from"]


@pytest.mark.parametrize("kind", CANDIDATES)
def test_shuffled_labels_give_an_auc_near_one_half(kind: str) -> None:
    """Leakage guard: with the labels shuffled, nothing in the pipeline can find churn."""
    frame = synthetic(200, seed=1)
    rng = np.random.default_rng(7)
    shuffled = frame.with_columns(pl.Series("churned", rng.permutation(frame["churned"])))
    train = shuffled.filter(pl.col("snapshot_at") < SNAPS[30])
    test = shuffled.filter(pl.col("snapshot_at") >= SNAPS[37])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated(kind, train)
    auc = summary(test["churned"].cast(pl.Int8).to_numpy(), probabilities(est, test))["roc_auc"]
    assert abs(auc - 0.5) < 0.05, auc


@pytest.mark.parametrize("kind", CANDIDATES)
def test_calibrated_probabilities_match_the_observed_rate_per_decile(kind: str) -> None:
    frame = synthetic(600, seed=2)
    train = frame.filter(pl.col("snapshot_at") < SNAPS[30])
    test = frame.filter(pl.col("snapshot_at") >= SNAPS[33])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated(kind, train)
    y = test["churned"].cast(pl.Int8).to_numpy()
    figures = summary(y, probabilities(est, test))
    assert figures["max_calibration_gap"] < 0.05, figures
    assert figures["brier"] < 0.8 * figures["base_rate_brier"], figures


def test_a_sample_of_stayers_keeps_every_churner_and_weighs_the_stayers_back() -> None:
    frame = synthetic(400, seed=3)
    assert sample_stayers(frame, frame.height) == (frame, None)
    fitted, weights = sample_stayers(frame, 8_000, seed=1)
    assert weights is not None
    churned = frame["churned"].sum()
    stayers = frame.height - churned
    assert fitted.height == 8_000
    assert fitted["churned"].sum() == churned  # every churner
    kept = ~fitted["churned"].to_numpy()
    assert (weights[~kept] == 1.0).all()
    assert weights[kept].sum() == pytest.approx(stayers)  # as many stayers as the whole
    assert fitted.select("account_id", "snapshot_at").is_unique().all()
    again, _ = sample_stayers(frame.reverse(), 8_000, seed=1)
    assert again.equals(fitted)  # the same rows whatever order they came in
    other, _ = sample_stayers(frame, 8_000, seed=2)
    assert not other.equals(fitted)


@pytest.mark.parametrize("kind", CANDIDATES)
def test_a_model_fitted_on_a_sample_of_stayers_is_calibrated_to_the_whole(kind: str) -> None:
    """The back-test's folds past BACKTEST_MAX_ROWS train on every churner and a sample of
    the stayers: the calibration's weights bring the probabilities back to the whole's
    rate; the same sample without them is off by more than the 5-point bar."""
    frame = synthetic(600, seed=2)
    train = frame.filter(pl.col("snapshot_at") < SNAPS[30])
    test = frame.filter(pl.col("snapshot_at") >= SNAPS[33])
    fitted, weights = sample_stayers(train, 5_000, seed=0)
    assert weights is not None and weights.max() > 3
    y = test["churned"].cast(pl.Int8).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the intended calibration-only weights warn nothing
        weighted = summary(y, probabilities(fit_calibrated(kind, fitted, 0, weights), test))
    assert weighted["max_calibration_gap"] < 0.05, weighted
    assert weighted["brier"] < 0.8 * weighted["base_rate_brier"], weighted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unweighted = summary(y, probabilities(fit_calibrated(kind, fitted), test))
    assert unweighted["max_calibration_gap"] > 0.05, unweighted


def test_the_card_says_when_back_test_folds_were_fitted_on_a_sample() -> None:
    from churn.cli.model import sampled_folds_note

    whole = {"train_rows": 5_000, "train_rows_fitted": 5_000, "stayer_weight": 1.0}
    assert sampled_folds_note([whole, whole]) is None
    assert sampled_folds_note([{"train_rows": 5_000}]) is None  # a card from before
    sampled = [whole, {"train_rows": 433_519, "train_rows_fitted": 100_000},
               {"train_rows": 662_149, "train_rows_fitted": 100_000}]  # fmt: skip
    assert sampled_folds_note(sampled) == (
        "2 of 3 back-test folds were fitted on every churner and a sample of the stayers"
        " (100,000 of 433,519-662,149 rows), weighted back to their share; each was tested"
        " on all of its rows. The model in force is fitted on every row."
    )


def test_a_backtest_on_samples_of_its_folds_ranks_as_on_every_row() -> None:
    frame = synthetic(150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = backtest(frame, 90)
        sampled = backtest(frame, 90, max_rows=2_500)
    assert all(f["train_rows_fitted"] == f["train_rows"] for f in whole.folds)
    assert all(f["stayer_weight"] == 1.0 for f in whole.folds)
    assert all(f["train_rows_fitted"] == 2_500 < f["train_rows"] for f in sampled.folds)
    assert all(f["stayer_weight"] > 1.0 for f in sampled.folds)
    # the same test rows: the figures differ only by what the sample left out
    assert [f["test_rows"] for f in sampled.folds] == [f["test_rows"] for f in whole.folds]
    for kind in CANDIDATES:
        assert sampled.metrics[kind]["roc_auc"] == pytest.approx(
            whole.metrics[kind]["roc_auc"], abs=0.02
        )


@pytest.mark.parametrize("kind", CANDIDATES)
def test_a_model_round_trips_through_skops_with_the_trusted_list(kind: str) -> None:
    frame = synthetic(100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated(kind, frame)
    back = serialize.loads(serialize.dumps(est))
    np.testing.assert_allclose(probabilities(back, frame), probabilities(est, frame))


def _untrusted_payload() -> bytes:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    return sio.dumps(FunctionTransformer(func=math.floor))


def test_a_stored_blob_naming_anything_outside_the_trusted_list_is_refused() -> None:
    payload = _untrusted_payload()
    with pytest.raises(ScoringError, match="untrusted"):
        serialize.loads(payload)


def test_metrics_lift_and_calibration_table() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    p = np.where(y == 1, 0.9, 0.1)
    assert top_decile_lift(y, p) == pytest.approx(10.0)
    table = calibration_table(y, p)
    assert len(table) == 10
    assert sum(b["rows"] for b in table) == 100
    assert table[-1]["observed"] == 1.0


def _row(**values: float) -> dict[str, float]:
    row = dict.fromkeys(FEATURE_NAMES, float("nan"))
    row.update(values)
    return row


def test_reasons_are_sentences_a_csm_reads() -> None:
    r = _row(utilization_30d=0.35, utilization_change_60d=-0.45)
    assert sentence("utilization_change_60d", r) == "Seat use fell from 80% to 35% in 60 days."
    assert sentence("mrr_change_90d", _row(mrr_change_90d=-0.4)) == (
        "MRR fell 40% in the last 90 days."
    )
    assert sentence("failed_since_payment", _row(failed_since_payment=2)) == (
        "2 failed payments since the last successful one."
    )
    assert sentence("days_since_failure", _row()) == "No failed payment on record."
    for name in FEATURE_NAMES:  # every feature has words, none shows its column name
        text = sentence(name, _row(**dict.fromkeys(FEATURE_NAMES, 1.0)))
        assert name not in text and text.endswith(".")


def test_reasons_name_the_features_that_raise_the_probability_most() -> None:
    weights = np.zeros(len(FEATURE_NAMES))
    weights[FEATURE_NAMES.index("failures_180d")] = 1.0
    weights[FEATURE_NAMES.index("downgrade_180d")] = 0.5

    def predict(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(np.nan_to_num(x) @ weights - 3)))

    x = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    x[0, FEATURE_NAMES.index("failures_180d")] = 3
    x[0, FEATURE_NAMES.index("downgrade_180d")] = 0.5
    x[0, FEATURE_NAMES.index("tenure_days")] = 400  # no weight: never a reason
    reference = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    p, contrib = contributions(predict, x, reference)
    frame = pl.DataFrame({n: x[:, j] for j, n in enumerate(FEATURE_NAMES)})
    reasons = reasons_frame(frame, contrib)
    assert reasons == [
        [
            "3 failed payments in the last 6 months.",
            "MRR is 50% below its level of the last 6 months.",
        ]
    ]
    assert 0 < p[0] < 1


def test_a_stored_model_trained_on_other_features_is_refused_not_misread(
    con: object,
) -> None:
    from churn.settings import SignalSettings
    from churn.signals.model.model import ChurnModel, predict
    from churn.signals.tables import Tables

    card = {"features": [{"name": "tenure_days", "description": "old"}]}
    model = ChurnModel("old-1", "logistic", object(), [], card)
    with pytest.raises(ScoringError, match="retrain"):
        predict(Tables(con), T0, model, SignalSettings())  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", CANDIDATES)
def test_the_latest_snapshots_are_learned_from_not_only_calibrated_on(kind: str) -> None:
    """A usage feed that starts late (the latest quarter of the training snapshots) is
    the newest evidence the model has: the fitted model must learn from those rows too.
    Calibration reads out-of-fold predictions (folds by account), so no row is spent on
    calibration alone."""
    frame = synthetic(300, seed=3)
    late = pl.col("snapshot_at") >= SNAPS[24]
    rng = np.random.default_rng(11)
    use = rng.normal(size=frame.height).astype(np.float32)
    frame = frame.with_columns(
        pl.when(late)
        .then(pl.Series(use))
        .otherwise(None)
        .fill_null(float("nan"))
        .cast(pl.Float32)
        .alias("utilization_30d"),
    ).with_columns(churned=pl.when(late).then(pl.Series(use < -1.3)).otherwise(pl.col("churned")))
    train = frame.filter(pl.col("snapshot_at") < SNAPS[32])
    test = frame.filter(pl.col("snapshot_at") >= SNAPS[33])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated(kind, train)
    y = test["churned"].cast(pl.Int8).to_numpy()
    figures = summary(y, probabilities(est, test))
    assert figures["roc_auc"] > 0.9, figures


def test_gradient_boosting_keeps_the_known_direction_of_risk() -> None:
    """Where every subscription business knows the direction (``train.MONOTONIC``: more
    failed payments never lower the risk, more seat use never raises it), the boosted
    model keeps it whatever noise its training rows carry: here the direction-known
    features are noise, and moving one of them up never lowers a probability."""
    from churn.signals.model.train import MONOTONIC

    frame = synthetic(300, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated("gradient_boosting", frame)
    rows = frame.head(300)
    base = rows.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    grid = np.linspace(-3, 3, 25, dtype=np.float32)
    for name in ("failures_30d", "failures_365d", "utilization_90d", "card_days_after_renewal"):
        j = FEATURE_NAMES.index(name)
        probs = []
        for value in grid:
            x = base.copy()
            x[:, j] = value
            probs.append(est.predict_proba(x)[:, 1])
        steps = np.diff(np.asarray(probs), axis=0) * MONOTONIC[name]
        assert steps.min() >= -1e-12, (name, float(steps.min()))


def test_gradient_boosting_learns_with_a_feature_empty_in_a_calibration_fold() -> None:
    """Missing values go to the trees as they are; a feature with no value at all in the
    rows of one fit (a usage feed that starts late, seen by a few accounts only) is not
    learned from rather than failing the fit."""
    frame = synthetic(120, seed=2)
    few = pl.col("account_id").is_in(["a1", "a2"])
    frame = frame.with_columns(
        pl.when(few).then(pl.lit(0.5)).otherwise(float("nan")).cast(pl.Float32).alias("seats")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = fit_calibrated("gradient_boosting", frame)
    y = frame["churned"].cast(pl.Int8).to_numpy()
    assert summary(y, probabilities(est, frame))["roc_auc"] > 0.8


def test_churners_no_fold_can_test_leave_the_baseline_in_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Enough churners, all in the earliest snapshots: no back-test fold has churners in
    its test block, so no candidate is chosen. Training keeps the rule-based score with
    the reason on its card (it raised "unknown model kind 'baseline'" before)."""
    from churn.settings import SignalSettings
    from churn.signals.model import model

    frame = synthetic(60).with_columns(
        churned=pl.col("snapshot_at") <= SNAPS[5], known_churn=pl.lit(False)
    )
    monkeypatch.setattr(model, "training_frame", lambda tables, settings, cutoff: frame)
    monkeypatch.setattr(
        model,
        "baseline_at",
        lambda tables, as_of, settings: pl.DataFrame({"account_id": ["a0"], "risk_score": [0]}),
    )
    settings = SignalSettings()
    assert frame["churned"].sum() >= settings.model_min_churners
    # the warehouse is read through the two stubs above: an empty one is enough
    churn_model, card = model.train(
        Tables(duckdb.connect()), settings, SNAPS[-1] + timedelta(days=200)
    )
    assert churn_model.kind == model.BASELINE
    assert card["kind"] == "baseline"
    assert "no back-test fold" in card["why"]
