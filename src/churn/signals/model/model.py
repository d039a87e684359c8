"""The churn-risk model's entry points: :func:`train`, :func:`predict`, :func:`evaluate`.

- :func:`train` (tables, settings, cutoff): features at snapshots every
  ``model_snapshot_every_days`` over the history, rows usable at the cutoff only
  (``S + horizon <= cutoff``, known churn apart), a time-ordered back-test of each
  candidate beside the rule-based risk score, the best candidate refitted on every usable
  row and calibrated on out-of-fold predictions. With fewer churners than
  ``model_min_churners`` the model is the baseline (the rule-based score, kind
  ``baseline``): the fallback while history is short.
- :func:`predict` (tables, as_of, model, settings): one row per live account without a
  scheduled cancellation (known churn is reported apart, by ``account_health``):
  ``account_id, churn_probability, reasons (sentences), model_version``.
- :func:`evaluate`: train at a cutoff, score at it, compare with who churned in the
  following horizon (from the warehouse, or a truth frame), each figure beside the
  baseline's, overall and per segment.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.errors import ScoringError
from churn.signals.model import serialize
from churn.signals.model.compiled import MAX_ROWS as MAX_COMPILED_ROWS
from churn.signals.model.compiled import CompiledModel, compile_estimator
from churn.signals.model.features import (
    DESCRIPTIONS,
    FEATURE_NAMES,
    compute_features,
    snapshot_dates,
)
from churn.signals.model.metrics import calibration_table, summary
from churn.signals.model.reasons import contributions, moves, reasons_frame
from churn.signals.model.routing import may_change, may_change_compiled
from churn.signals.model.train import (
    backtest,
    fit_calibrated,
    labels,
    matrix,
    threads,
    usable,
)
from churn.signals.tables import Tables

PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "churn_probability": pl.Float64(),
    "reasons": pl.List(pl.String()),
    "model_version": pl.String(),
}
#: Training snapshots start this long after the first subscription known (tenure > 0).
HISTORY_WARMUP_DAYS = 30
#: The back-test tests on this many snapshots per fold, scored by the baseline too.
BASELINE = "baseline"


@dataclass
class ChurnModel:
    """A trained model (or the baseline), its reference values and its card.

    ``compiled`` (:mod:`churn.signals.model.compiled`), when the pipeline could be
    compiled, gives the same probabilities without scikit-learn; the fitted estimator is
    then rebuilt from ``blob`` only when it is needed (more rows than
    :data:`~churn.signals.model.compiled.MAX_ROWS`)."""

    version: str
    kind: str
    estimator: Any | None
    reference: list[float]
    card: dict[str, Any] = field(default_factory=dict)
    compiled: CompiledModel | None = None
    blob: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def is_baseline(self) -> bool:
        return self.estimator is None and self.blob is None

    def fitted(self) -> Any:
        """The scikit-learn estimator, rebuilt from its skops bytes on first use."""
        with self._lock:
            if self.estimator is None and self.blob is not None:
                self.estimator = serialize.loads(self.blob)
            return self.estimator

    def proba(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Probabilities of churn: :meth:`predictor` for ``x``'s rows alone."""
        return self.predictor(x.shape[0])(x)

    def predictor(self, rows: int) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
        """What predicts a scoring of ``rows`` rows in all (its accounts and the reasons'
        moved rows, however they are cut in calls): the compiled arrays up to
        :data:`~churn.signals.model.compiled.MAX_ROWS` rows, else the estimator (the
        arrays' walk costs about 3 times scikit-learn's per row, whose import costs 1.5
        CPU seconds once). Both give the same numbers."""
        assert not self.is_baseline
        compiled = self.compiled if rows <= MAX_COMPILED_ROWS else None

        def predict(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
            if x.shape[0] == 0:
                return np.zeros(0)
            if compiled is not None:
                return compiled.proba(x)
            estimator = self.fitted()
            with threads():
                return np.asarray(estimator.predict_proba(x)[:, 1], dtype=np.float64)

        return predict

    def to_blob(self) -> bytes | None:
        if self.blob is not None:
            return self.blob
        return None if self.estimator is None else serialize.dumps(self.estimator)

    def compiled_bytes(self) -> bytes | None:
        return None if self.compiled is None else self.compiled.to_bytes()

    @classmethod
    def from_stored(
        cls,
        version: str,
        kind: str,
        blob: bytes | None,
        card: dict[str, Any],
        compiled: bytes | None = None,
    ) -> ChurnModel:
        """Rebuild from ``model_registry`` columns: the compiled arrays when stored (the
        estimator's bytes kept for when they are needed), else the estimator, through
        skops' trusted list."""
        arrays = None if compiled is None or blob is None else CompiledModel.from_bytes(compiled)
        estimator = None if blob is None or arrays is not None else serialize.loads(blob)
        reference = list(card.get("reference", []))
        return cls(version, kind, estimator, reference, card, arrays, blob)


def history_start(tables: Tables) -> datetime | None:
    got = tables.frame("SELECT min(valid_from) AS t FROM history_subscriptions")
    value = got["t"][0] if got.height else None
    return value if isinstance(value, datetime) else None


def training_snapshots(
    tables: Tables, settings: SignalSettings, cutoff: datetime
) -> list[datetime]:
    """Snapshot dates whose horizon ends by ``cutoff``, every N days back from it."""
    start = history_start(tables)
    if start is None:
        return []
    last = cutoff - timedelta(days=settings.churn_horizon_days)
    return snapshot_dates(
        start + timedelta(days=HISTORY_WARMUP_DAYS), last, settings.model_snapshot_every_days
    )


def _sample_accounts(frame: pl.DataFrame, max_rows: int) -> pl.DataFrame:
    """Whole accounts, deterministically, so that at most ``max_rows`` rows remain."""
    if frame.height <= max_rows:
        return frame
    keep = max_rows / frame.height
    bucket = pl.col("account_id").hash(seed=12).mod(10_000)
    return frame.filter(bucket < int(keep * 10_000))


def training_frame(
    tables: Tables, settings: SignalSettings, cutoff: datetime, batch: int = 6
) -> pl.DataFrame:
    """Usable training rows at ``cutoff``: snapshots in batches (bounded memory)."""
    snaps = training_snapshots(tables, settings, cutoff)
    parts: list[pl.DataFrame] = []
    per_batch = max(1_000, settings.model_max_training_rows * batch // max(len(snaps), 1))
    for i in range(0, len(snaps), batch):
        part = compute_features(tables, snaps[i : i + batch], settings, settings.churn_horizon_days)
        part = usable(part, cutoff, settings.churn_horizon_days)
        parts.append(_sample_accounts(part, per_batch))
    if not parts:
        return compute_features(tables, [], settings)
    return pl.concat(parts)


def baseline_at(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """account_id, risk_score (0..100), top_reasons: the rule-based score at ``as_of``."""
    from churn.signals.health import risk_score
    from churn.signals.registry import SIGNALS

    rows = [s.score(tables, as_of, settings) for s in SIGNALS if s.kind == "risk"]
    signals = pl.concat(rows) if rows else pl.DataFrame()
    if signals.height == 0:
        return pl.DataFrame(
            schema={
                "account_id": pl.String,
                "risk_score": pl.Int32,
                "top_reasons": pl.List(pl.String),
            }
        )
    reasons = (
        signals.sort(["score", "signal", "reason"], descending=[True, False, False])
        .group_by("account_id", maintain_order=True)
        .agg(top_reasons=pl.col("reason").head(3))
    )
    return risk_score(signals, settings).join(reasons, on="account_id", how="left")


def _reference(frame: pl.DataFrame) -> list[float]:
    """Per feature, the value typical of accounts that stayed: the median among
    non-churners, or NaN when most of them have no value (e.g. never failed)."""
    stayed = frame.filter(~pl.col("churned")) if frame.height else frame
    out: list[float] = []
    for name in FEATURE_NAMES:
        col = stayed[name].to_numpy().astype(np.float64) if stayed.height else np.zeros(0)
        finite = col[~np.isnan(col)]
        out.append(float(np.median(finite)) if len(finite) * 2 > len(col) else float("nan"))
    return out


def train(
    tables: Tables,
    settings: SignalSettings,
    cutoff: datetime,
    *,
    trained_at: datetime | None = None,
    seed: int = 0,
) -> tuple[ChurnModel, dict[str, Any]]:
    """Train at ``cutoff`` (labels known by then only); the model and its card."""
    horizon = settings.churn_horizon_days
    rows = training_frame(tables, settings, cutoff)
    y = labels(rows)
    churners = int(y.sum()) if len(y) else 0
    snaps = sorted(rows["snapshot_at"].unique().to_list()) if rows.height else []
    card: dict[str, Any] = {
        "trained_at": (trained_at or cutoff).isoformat(),
        "cutoff": cutoff.isoformat(),
        "horizon_days": horizon,
        "data_window": {
            "first_snapshot": snaps[0].isoformat() if snaps else None,
            "last_snapshot": snaps[-1].isoformat() if snaps else None,
            "snapshots": len(snaps),
            "every_days": settings.model_snapshot_every_days,
        },
        "rows": rows.height,
        "accounts": rows["account_id"].n_unique() if rows.height else 0,
        "churners": churners,
        "min_churners": settings.model_min_churners,
        "features": [{"name": n, "description": DESCRIPTIONS[n]} for n in FEATURE_NAMES],
        "known_churn": "accounts with a scheduled cancellation at a snapshot are kept out",
        "serialization": "skops.io with an explicit trusted-type list; never pickle",
        "salesforce_context": "as known at each snapshot from SystemModstamp: an owner"
        " inactive only when deactivated by then, contacts and open Opportunities unchanged"
        " since (no Salesforce field history kept)",
    }
    if churners < settings.model_min_churners or len(set(y.tolist())) < 2:
        why = (
            f"{churners} churners in usable history, fewer than "
            f"{settings.model_min_churners}: the rule-based risk score stays in force"
        )
        return _baseline(card, cutoff, why)
    test_snaps = _backtest_test_snapshots(rows, horizon)
    base = {s: baseline_at(tables, s, settings) for s in test_snaps}
    # The warehouse is read; what follows is scikit-learn's, beside the rows in memory.
    tables.release_cache()
    result = backtest(rows, horizon, base, seed)
    if result.chosen == BASELINE:
        # Enough churners, but bunched in time: no fold had churners and stayers on both
        # its sides, so no candidate could be tested against the baseline.
        why = (
            f"{churners} churners in usable history, but no back-test fold had churners"
            " and stayers in both its training and its test snapshots: the rule-based"
            " risk score stays in force"
        )
        return _baseline(card | {"backtest": {"metrics": result.metrics, "folds": []}}, cutoff, why)
    estimator = fit_calibrated(result.chosen, rows, seed)
    reference = _reference(rows)
    blob = serialize.dumps(estimator)
    with threads():
        compiled = compile_estimator(estimator, matrix(rows))
    version = f"{result.chosen}-{cutoff:%Y%m%d}-{hashlib.sha256(blob).hexdigest()[:8]}"
    card |= {
        "kind": result.chosen,
        "version": version,
        "backtest": {"metrics": result.metrics, "folds": result.folds},
        "reference": reference,
        "prediction": "compiled arrays (npz, no pickle), equal bit for bit to"
        " scikit-learn's on the training rows"
        if compiled is not None
        else "scikit-learn (this pipeline is not compiled)",
    }
    return ChurnModel(version, result.chosen, estimator, reference, card, compiled, blob), card


def _baseline(
    card: dict[str, Any], cutoff: datetime, why: str
) -> tuple[ChurnModel, dict[str, Any]]:
    """The rule-based score in force, with the card saying why."""
    version = f"baseline-{cutoff:%Y%m%d}"
    card = card | {"kind": BASELINE, "why": why, "version": version}
    return ChurnModel(version, BASELINE, None, [], card), card


def _backtest_test_snapshots(rows: pl.DataFrame, horizon: int) -> list[datetime]:
    from churn.signals.model.train import backtest_folds

    folds = backtest_folds(rows["snapshot_at"].unique().to_list(), horizon)
    return sorted({s for f in folds for s in f.test})


def _score_frame(
    model: ChurnModel, feats: pl.DataFrame
) -> tuple[npt.NDArray[np.float64], list[list[str]]]:
    x = matrix(feats)
    reference = np.asarray(model.reference, dtype=np.float32)
    if len(reference) != x.shape[1]:
        reference = np.full(x.shape[1], np.nan, dtype=np.float32)
    if model.compiled is None:
        routed = may_change(model.fitted(), x, reference)
    else:  # the same splits read from the arrays (scikit-learn not loaded for them)
        layout = model.compiled.tree_layout()
        routed = None if layout is None else may_change_compiled(layout, x, reference)
    # every row predicted in this scoring: the accounts, and each move that can change one
    predict = model.predictor(x.shape[0] + int(moves(x, reference, routed).sum()))
    p, contrib = contributions(predict, x, reference, may_change=routed)
    return p, reasons_frame(feats, contrib)


def predict(
    tables: Tables,
    as_of: datetime,
    model: ChurnModel,
    settings: SignalSettings,
    accounts: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Per live account without a scheduled cancellation: its probability of churn within
    the horizon, up to three reasons in words, and the model version. ``accounts``: only
    these (the webhook worker's); each account's row does not depend on the others (the
    reasons' reference values are the model's own)."""
    trained_on = [f["name"] for f in model.card.get("features", [])]
    if not model.is_baseline and trained_on and trained_on != list(FEATURE_NAMES):
        raise ScoringError(
            f"model {model.version} was trained on other features than this version"
            " computes: retrain it (churn model train)"
        )
    feats = compute_features(tables, [as_of], settings).filter(~pl.col("known_churn"))
    if accounts is not None:
        feats = feats.filter(pl.col("account_id").is_in(list(accounts)))
    if model.is_baseline:
        base = baseline_at(tables, as_of, settings)
        out = feats.select("account_id").join(base, on="account_id", how="left")
        return out.select(
            "account_id",
            churn_probability=pl.col("risk_score").fill_null(0).cast(pl.Float64) / 100,
            reasons=pl.col("top_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            model_version=pl.lit(model.version),
        ).sort("account_id")
    p, reasons = _score_frame(model, feats)
    return pl.DataFrame(
        {
            "account_id": feats["account_id"],
            "churn_probability": p,
            "reasons": reasons,
            "model_version": [model.version] * feats.height,
        },
        schema=PREDICTION_SCHEMA,
    ).sort("account_id")


@dataclass
class Evaluation:
    """What ``churn model evaluate`` prints: figures beside the baseline, per segment."""

    cutoff: datetime
    model: ChurnModel
    overall: dict[str, dict[str, float]]
    segments: dict[str, dict[str, dict[str, float]]]
    calibration: dict[str, list[dict[str, float]]]
    known_churn: int
    known_churn_churned: int
    label_source: str
    extra: dict[str, float] = field(default_factory=dict)


def _mrr_band(mrr_minor: pl.Expr) -> pl.Expr:
    return (
        pl.when(mrr_minor < 10_000)
        .then(pl.lit("MRR < 100"))
        .when(mrr_minor < 100_000)
        .then(pl.lit("MRR 100-1,000"))
        .otherwise(pl.lit("MRR >= 1,000"))
    )


def evaluate(
    tables: Tables,
    settings: SignalSettings,
    cutoff: datetime,
    *,
    truth: pl.DataFrame | None = None,
    model: ChurnModel | None = None,
    seed: int = 0,
) -> Evaluation:
    """Train on snapshots with ``S + horizon <= cutoff`` (unless ``model`` is given), score
    the accounts live at ``cutoff`` without a scheduled cancellation, and compare with who
    churned in ``(cutoff, cutoff + horizon]``: from ``truth`` (key, churned_at, health; key
    is the account id, else the customer id) when given, else from the warehouse."""
    horizon = settings.churn_horizon_days
    if model is None:
        model, _ = train(tables, settings, cutoff, seed=seed)
    feats = compute_features(tables, [cutoff], settings, horizon)
    known = feats.filter(pl.col("known_churn"))
    feats = feats.filter(~pl.col("known_churn"))
    extra: dict[str, float] = {}
    if truth is not None:
        t = truth.unique("key", keep="first")
        end = cutoff + timedelta(days=horizon)
        joined = feats.join(t, left_on="account_id", right_on="key", how="inner").filter(
            pl.col("churned_at").is_null() | (pl.col("churned_at") > cutoff)
        )
        feats = joined.with_columns(
            churned=pl.col("churned_at").is_not_null() & (pl.col("churned_at") <= end)
        )
        known_joined = known.join(t, left_on="account_id", right_on="key", how="inner")
        known_churned = int(
            known_joined.filter(
                pl.col("churned_at").is_not_null() & (pl.col("churned_at") <= end)
            ).height
        )
        source = "truth"
    else:
        known_churned = int(known["churned"].sum())
        source = "warehouse"
    y = labels(feats)
    base = baseline_at(tables, cutoff, settings)
    b = (
        feats.select("account_id")
        .join(base, on="account_id", how="left")["risk_score"]
        .fill_null(0)
        .cast(pl.Float64)
        .to_numpy()
        / 100
    )
    p = b if model.is_baseline else model.proba(matrix(feats))
    overall = {"model": summary(y, p), BASELINE: summary(y, b)}
    if truth is not None and "health" in feats.columns:
        h = -feats["health"].cast(pl.Float64).to_numpy()
        overall["hidden_health"] = summary(y, h)
        extra["hidden_health_auc"] = overall["hidden_health"]["roc_auc"]
    seg_cols = feats.select(
        plan=pl.when(pl.col("is_annual") > 0).then(pl.lit("yearly")).otherwise(pl.lit("monthly")),
        band=_mrr_band(pl.col("mrr_minor")),
    )
    segments: dict[str, dict[str, dict[str, float]]] = {}
    for col in ("plan", "band"):
        for value in sorted(seg_cols[col].unique().to_list()):
            mask = (seg_cols[col] == value).to_numpy()
            if mask.sum() == 0:
                continue
            segments[str(value)] = {
                "model": summary(y[mask], p[mask]),
                BASELINE: summary(y[mask], b[mask]),
            }
    calibration = {"model": calibration_table(y, p), BASELINE: calibration_table(y, b)}
    return Evaluation(
        cutoff, model, overall, segments, calibration, known.height, known_churned, source, extra
    )
