"""The churn-risk model: point-in-time features, training with a time-ordered back-test,
calibration, reasons in words, and safe (de)serialisation. Pure like the rest of
``churn.signals``: tables and an explicit ``as_of`` in, frames and fitted estimators out.
Writing and reading ``model_registry`` is the job layer's (``churn.job.model``)."""

from __future__ import annotations

from churn.signals.model.features import FEATURE_NAMES, FEATURES, compute_features
from churn.signals.model.model import (
    PREDICTION_SCHEMA,
    ChurnModel,
    Evaluation,
    baseline_at,
    evaluate,
    predict,
    train,
)

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "PREDICTION_SCHEMA",
    "ChurnModel",
    "Evaluation",
    "baseline_at",
    "compute_features",
    "evaluate",
    "predict",
    "train",
]
