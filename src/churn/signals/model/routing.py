"""Which feature moves can change a tree model's prediction, without predicting them.

A reason is the account's probability minus its probability with one feature set to its
reference value (:func:`churn.signals.model.reasons.contributions`). For the gradient
boosting candidate (median imputation with missing indicators, then
``HistGradientBoostingClassifier``, optionally calibrated), a prediction depends on a
feature only through the splits on its columns: every split sends a value left when it is
``<= threshold`` (no missing value reaches the trees: the imputer fills them). When the
value and the reference fall on the same side of every threshold of the feature's columns
(its imputed value, and its missing indicator), every tree routes both rows to the same
leaves, so both probabilities are the same number and the difference is exactly 0: there
is no need to predict the moved row. :func:`may_change` says which rows need it.

Anything else (another estimator, a categorical split, an unexpected pipeline) gives
``None``: every moved row is predicted, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _tree_pipeline(estimator: Any) -> tuple[Any, Any] | None:
    """(imputer, boosting model) of a fitted gradient boosting candidate, else None."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, CalibratedClassifierCV):
        fitted = getattr(estimator, "calibrated_classifiers_", [])
        if len(fitted) != 1:
            return None
        estimator = fitted[0].estimator
    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    imputer, model = estimator.steps[0][1], estimator.steps[1][1]
    if not isinstance(imputer, SimpleImputer) or not isinstance(
        model, HistGradientBoostingClassifier
    ):
        return None
    return imputer, model


def may_change(
    estimator: Any, x: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]
) -> npt.NDArray[np.bool_] | None:
    """Per row and feature of ``x``: True where setting the feature to ``reference`` can
    change the prediction (some split routes the two values apart), False where it
    cannot (the difference is exactly 0); None when the estimator is not one whose splits
    are read here."""
    found = _tree_pipeline(estimator)
    if found is None:
        return None
    imputer, model = found
    nodes = [p.nodes for per_iteration in model._predictors for p in per_iteration]
    if not nodes:
        return None
    every = np.concatenate(nodes)
    splits = every[every["is_leaf"] == 0]
    if splits["is_categorical"].any():
        return None
    n, n_features = x.shape
    if n == 0:
        return np.zeros((0, n_features), dtype=bool)
    xt = np.asarray(imputer.transform(x), dtype=np.float64)
    rt = np.asarray(imputer.transform(reference.reshape(1, -1)), dtype=np.float64)[0]
    indicator = getattr(imputer, "indicator_", None)
    indicators = [] if indicator is None else [int(j) for j in indicator.features_]
    if xt.shape[1] != n_features + len(indicators) or np.isnan(xt).any() or np.isnan(rt).any():
        return None  # a missing value reaching the trees would follow its own rule
    # the columns the trees see for feature j: its imputed value, then its indicator
    columns: list[list[int]] = [[j] for j in range(n_features)]
    for k, j in enumerate(indicators):
        columns[j].append(n_features + k)
    out = np.zeros((n, n_features), dtype=bool)
    for j in range(n_features):
        for c in columns[j]:
            thresholds = np.unique(splits["num_threshold"][splits["feature_idx"] == c])
            if len(thresholds) == 0:
                continue
            # the same side of every threshold <=> as many thresholds below each value
            below_x = np.searchsorted(thresholds, xt[:, c], side="left")
            below_ref = np.searchsorted(thresholds, rt[c], side="left")
            out[:, j] |= below_x != below_ref
    return out
