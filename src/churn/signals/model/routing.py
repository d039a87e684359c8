"""Which feature moves can change a tree model's prediction, without predicting them.

A reason is the account's probability minus its probability with one feature set to its
reference value (:func:`churn.signals.model.reasons.contributions`). For the gradient
boosting candidate (``HistGradientBoostingClassifier`` behind a median imputer and a
missing indicator for every feature; as stored before, indicators only for the features
that had gaps; or on the raw features, missing values native; optionally calibrated), a
prediction depends on a feature only through the splits on its columns: every split
sends a value left when it is ``<= threshold`` and a missing value (raw features only)
the way the split learned. When the value and the reference fall on the same side of
every threshold of the feature's columns (its value and its indicator; or both missing),
every tree routes both rows to the same leaves, so both probabilities are the same
number and the difference is exactly 0: there is no need to predict the moved row. A
move between a missing value and a present one on raw features is always predicted.
:func:`may_change` says which rows need it.

Anything else (another estimator, a categorical split, an unexpected pipeline) gives
``None``: every moved row is predicted, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt


def _tree_pipeline(estimator: Any) -> tuple[Any | None, Any] | None:
    """(imputing step or None, boosting model) of a fitted gradient boosting candidate,
    else None. The step is a ``SimpleImputer`` with indicators for the features that had
    gaps (as stored before), or a ``FeatureUnion`` of a median imputer and a missing
    indicator for every feature."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if isinstance(estimator, CalibratedClassifierCV):
        fitted = getattr(estimator, "calibrated_classifiers_", [])
        if len(fitted) != 1:
            return None
        estimator = fitted[0].estimator
    if isinstance(estimator, Pipeline) and len(estimator.steps) == 1:
        estimator = estimator.steps[0][1]
    if isinstance(estimator, HistGradientBoostingClassifier):
        return None, estimator
    if not isinstance(estimator, Pipeline) or len(estimator.steps) != 2:
        return None
    step, model = estimator.steps[0][1], estimator.steps[1][1]
    if not isinstance(model, HistGradientBoostingClassifier):
        return None
    if isinstance(step, SimpleImputer):
        return step, model
    if (
        isinstance(step, FeatureUnion)
        and len(step.transformer_list) == 2
        and isinstance(step.transformer_list[0][1], SimpleImputer)
        and isinstance(step.transformer_list[1][1], MissingIndicator)
        and step.transformer_list[1][1].features == "all"
    ):
        return step, model
    return None


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
    indicators: list[int] | str = []
    if imputer is not None:
        indicator = getattr(imputer, "indicator_", None)
        if hasattr(imputer, "transformer_list"):  # value, then an indicator per feature
            indicators = "all"
        elif indicator is not None:
            indicators = [int(j) for j in indicator.features_]
    transform = None if imputer is None else imputer.transform
    return _routed(transform, indicators, np.concatenate(nodes), model.n_features_in_, x, reference)


def may_change_compiled(
    layout: tuple[Any, list[int] | str, npt.NDArray[Any], int],
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
) -> npt.NDArray[np.bool_] | None:
    """:func:`may_change` for a compiled tree model
    (:meth:`~churn.signals.model.compiled.CompiledModel.tree_layout`): the same splits,
    the same imputation, the same answer."""
    step, indicators, every, n_features_in = layout
    if len(every) == 0:
        return None
    return _routed(
        None if step is None else step.apply, indicators, every, n_features_in, x, reference
    )


def _routed(
    transform: Callable[[npt.NDArray[Any]], npt.NDArray[Any]] | None,
    indicators_of: list[int] | str,
    every: npt.NDArray[Any],
    n_features_in: int,
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
) -> npt.NDArray[np.bool_] | None:
    """The routing of :func:`may_change`: ``transform`` the imputing step (None: raw
    features reach the trees), ``indicators_of`` the features with an indicator column
    after the values (``"all"``: every feature), ``every`` the trees' nodes."""
    splits = every[every["is_leaf"] == 0]
    if splits["is_categorical"].any():
        return None
    n, n_features = x.shape
    if n == 0:
        return np.zeros((0, n_features), dtype=bool)
    if transform is None:  # missing values reach the trees
        xt = np.asarray(x, dtype=np.float64)
        rt = np.asarray(reference, dtype=np.float64)
        if xt.shape[1] != n_features or n_features_in != n_features:
            return None
        indicators: list[int] = []
    else:
        xt = np.asarray(transform(x), dtype=np.float64)
        rt = np.asarray(transform(reference.reshape(1, -1)), dtype=np.float64)[0]
        indicators = (
            list(range(n_features)) if isinstance(indicators_of, str) else list(indicators_of)
        )
        if xt.shape[1] != n_features + len(indicators) or np.isnan(xt).any() or np.isnan(rt).any():
            return None  # a missing value reaching these trees would follow its own rule
    # the columns the trees see for feature j: its value, then its indicator (imputed)
    columns: list[list[int]] = [[j] for j in range(n_features)]
    for k, j in enumerate(indicators):
        columns[j].append(n_features + k)
    out = np.zeros((n, n_features), dtype=bool)
    for j in range(n_features):
        for c in columns[j]:
            thresholds = np.unique(splits["num_threshold"][splits["feature_idx"] == c])
            if len(thresholds) == 0:
                continue
            # the same side of every threshold <=> as many thresholds below each value;
            # missing on one side only: predicted (the split's own rule sends it)
            x_nan, r_nan = np.isnan(xt[:, c]), np.bool_(np.isnan(rt[c]))
            below_x = np.searchsorted(thresholds, np.where(x_nan, 0.0, xt[:, c]), side="left")
            below_ref = np.searchsorted(thresholds, 0.0 if r_nan else rt[c], side="left")
            out[:, j] |= (x_nan != r_nan) | (~x_nan & ~r_nan & (below_x != below_ref))
    return out
