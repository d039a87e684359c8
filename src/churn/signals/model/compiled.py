"""A fitted model as plain arrays: the same probabilities without importing scikit-learn.

Loading a stored estimator imports scikit-learn (and SciPy under it) and skops: about
1.5 CPU seconds before the first prediction, most of what a 1% incremental run spends
scoring its few changed accounts. At training, :func:`compile_estimator` reads the
fitted pipeline into the arrays its prediction uses, and keeps them only when they give
**exactly** (bit for bit) the probabilities scikit-learn gives on the training rows; a
pipeline of another shape, or one whose arithmetic cannot be repeated exactly (sigmoid
calibration: SciPy's ``expit`` and NumPy's ``exp`` differ in the last bit of one value
in fifty), is not compiled, and the stored estimator scores as before.

Compiled, step by step as scikit-learn computes it (its dtypes, kept as fitted: a model
fitted on float32 keeps float32 coefficients; its order of operations):

- ``impute``: ``SimpleImputer`` (missing values NaN): each NaN replaced by its column's
  statistic, in the input's dtype; with ``add_indicator``, its missing indicator's
  columns appended (``np.hstack`` of the values and the booleans);
- ``indicator``: ``MissingIndicator``: ``isnan`` of its columns;
- ``union``: ``FeatureUnion``: its parts side by side (``np.hstack``);
- ``scale``: ``StandardScaler``: ``X -= mean_``, ``X /= scale_`` in place, each cast to
  the input's dtype first;
- ``linear``: ``LogisticRegression.decision_function``: ``X @ coef_.T + intercept_``;
- ``trees``: ``HistGradientBoostingClassifier.decision_function``: the baseline, plus
  each tree's leaf value in turn, in float64, every split sending a value left when it
  is ``<= threshold`` and a NaN the way it learned (numeric splits only);
- ``isotonic``: the calibrator of ``CalibratedClassifierCV(ensemble=False)``: the
  decision in the thresholds' dtype clipped to their range, then ``np.interp`` (what
  SciPy's ``interp1d`` delegates to for float64 data) or, for float32 thresholds,
  ``interp1d``'s own linear formula; class 0 is ``1 - p``.

Stored as an ``npz`` of numeric arrays plus one JSON layout, read with
``allow_pickle=False``: loading it can build no object and run no code.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

#: The format's version, in the layout; another version is not read (the estimator is).
FORMAT = 1
#: Rows predicted in one scoring (accounts and the reasons' moved rows) up to which the
#: arrays score: NumPy's level-by-level walk costs about 24 us a row against
#: scikit-learn's 7 (one thread, gradient boosting of 300 trees), whose import costs
#: about 1.5 CPU seconds once; past some 50,000 rows the estimator is the cheaper. Both
#: give the same numbers.
MAX_ROWS = 50_000
#: Training rows compared with scikit-learn's probabilities before a compiled model is kept.
CHECK_ROWS = 20_000

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Step:
    """One transform: ``kind`` and its arrays (by name); ``parts`` for a union."""

    kind: str
    arrays: dict[str, Array]
    parts: tuple[Step, ...] = ()

    def apply(self, x: Array) -> Array:
        if self.kind == "impute":
            out = np.array(x, copy=True)
            missing = np.isnan(x)
            # the statistic cast to the input's dtype, as an assignment into it does
            out[missing] = np.broadcast_to(self.arrays["statistics"], x.shape)[missing]
            if "indicator" in self.arrays:
                return np.hstack((out, missing[:, self.arrays["indicator"]]))
            return out
        if self.kind == "indicator":
            return np.isnan(x)[:, self.arrays["features"]]
        if self.kind == "union":
            return np.hstack([p.apply(x) for p in self.parts])
        if self.kind == "scale":
            out = np.array(x, copy=True)
            # scikit-learn casts mean_ and scale_ to the input's dtype first
            if "mean" in self.arrays:
                out -= self.arrays["mean"].astype(out.dtype)
            if "scale" in self.arrays:
                out /= self.arrays["scale"].astype(out.dtype)
            return out
        raise ValueError(f"unknown step {self.kind!r}")


@dataclass(frozen=True)
class CompiledModel:
    """Transforms, a decision (``linear`` or ``trees``) and an isotonic calibration."""

    steps: tuple[Step, ...]
    final: str
    arrays: dict[str, Array]

    def transform(self, x: Array) -> Array:
        for step in self.steps:
            x = step.apply(x)
        return x

    def decision(self, x: Array) -> npt.NDArray[np.float64]:
        xt = self.transform(x)
        if self.final == "linear":
            scores = xt @ self.arrays["coef"].T + self.arrays["intercept"]
            return np.asarray(scores.reshape(-1), dtype=np.float64)
        xt = np.asarray(xt, dtype=np.float64)
        raw = np.zeros(xt.shape[0], dtype=np.float64)
        raw += self.arrays["baseline"][0]
        for nodes in self.trees():
            raw += _leaf_values(nodes, xt)
        return raw

    def trees(self) -> list[Array]:
        bounds = self.arrays["tree_bounds"]
        every = self.arrays["nodes"]
        return [every[int(a) : int(b)] for a, b in itertools.pairwise(bounds.tolist())]

    def proba(self, x: Array) -> npt.NDArray[np.float64]:
        """The probability of class 1 (churn), as ``predict_proba(x)[:, 1]``."""
        xs, ys = self.arrays["iso_x"], self.arrays["iso_y"]
        # IsotonicRegression.predict: the decision in the thresholds' dtype, clipped
        t = np.clip(self.decision(x).astype(xs.dtype), self.arrays["iso_min"][0],
                    self.arrays["iso_max"][0])  # fmt: skip
        if len(ys) == 1:
            got = ys.repeat(t.shape)
        elif xs.dtype == np.float64 and ys.dtype == np.float64:
            got = np.interp(t, xs, ys)  # what interp1d delegates to for float64 data
        else:  # interp1d's own linear interpolation (float32 thresholds: logistic's)
            hi = np.searchsorted(xs, t).clip(1, len(xs) - 1).astype(int)
            lo = hi - 1
            slope = (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])
            got = slope * (t - xs[lo]) + ys[lo]
        p = np.asarray(got.astype(t.dtype), dtype=np.float64)
        p[(p > 1.0) & (p <= 1.0 + 1e-5)] = 1.0
        return p

    # -- the arrays a tree model's routing reads (churn.signals.model.routing) ----------

    def tree_layout(self) -> tuple[Step | None, list[int] | str, Array, int] | None:
        """What :func:`churn.signals.model.routing.may_change_compiled` reads of a tree
        model: (imputing step or None, the features with an indicator column, ``"all"``
        for every one, every node, the trees' number of input columns), else None."""
        if self.final != "trees":
            return None
        n_in = int(self.arrays["n_features"][0])
        nodes = self.arrays["nodes"]
        if not self.steps:
            return None, [], nodes, n_in
        if len(self.steps) != 1:
            return None
        step = self.steps[0]
        if step.kind == "impute":
            ind = step.arrays.get("indicator")
            return step, [] if ind is None else [int(j) for j in ind], nodes, n_in
        if (
            step.kind == "union"
            and len(step.parts) == 2
            and step.parts[0].kind == "impute"
            and "indicator" not in step.parts[0].arrays
            and step.parts[1].kind == "indicator"
            and list(step.parts[1].arrays["features"])
            == list(range(len(step.parts[0].arrays["statistics"])))
        ):
            return step, "all", nodes, n_in
        return None

    # -- bytes -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays: dict[str, Array] = {}

        def layout(step: Step, prefix: str) -> dict[str, Any]:
            names = {}
            for name, value in step.arrays.items():
                arrays[f"{prefix}.{name}"] = value
                names[name] = f"{prefix}.{name}"
            return {
                "kind": step.kind,
                "arrays": names,
                "parts": [layout(p, f"{prefix}.{i}") for i, p in enumerate(step.parts)],
            }

        steps = [layout(s, f"s{i}") for i, s in enumerate(self.steps)]
        for name, value in self.arrays.items():
            arrays[f"final.{name}"] = value
        spec = {"format": FORMAT, "steps": steps, "final": self.final,
                "arrays": sorted(self.arrays)}  # fmt: skip
        buf = io.BytesIO()
        payload: dict[str, Any] = {"__layout__": np.array(json.dumps(spec)), **arrays}
        np.savez_compressed(buf, **payload)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CompiledModel | None:
        """The model of :meth:`to_bytes`, or None for another format version."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            spec = json.loads(str(z["__layout__"]))
            if spec.get("format") != FORMAT:
                return None
            loaded = {k: z[k] for k in z.files if k != "__layout__"}

        def step(s: dict[str, Any]) -> Step:
            return Step(
                s["kind"],
                {name: loaded[key] for name, key in s["arrays"].items()},
                tuple(step(p) for p in s["parts"]),
            )

        return cls(
            tuple(step(s) for s in spec["steps"]),
            spec["final"],
            {name: loaded[f"final.{name}"] for name in spec["arrays"]},
        )


def _leaf_values(nodes: Array, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's leaf value in one tree (``TreePredictor.predict`` on raw values)."""
    n = x.shape[0]
    at = np.zeros(n, dtype=np.intp)
    rows = np.arange(n)
    is_leaf = nodes["is_leaf"].astype(bool)
    feature, threshold = nodes["feature_idx"], nodes["num_threshold"]
    go_left_missing = nodes["missing_go_to_left"].astype(bool)
    left, right = nodes["left"].astype(np.intp), nodes["right"].astype(np.intp)
    while rows.size:
        node = at[rows]
        inner = ~is_leaf[node]
        rows, node = rows[inner], node[inner]
        if not rows.size:
            break
        value = x[rows, feature[node]]
        missing = np.isnan(value)
        with np.errstate(invalid="ignore"):
            to_left = np.where(missing, go_left_missing[node], value <= threshold[node])
        at[rows] = np.where(to_left, left[node], right[node])
    return np.asarray(nodes["value"][at], dtype=np.float64)


# -- compiling (scikit-learn is imported here only) ------------------------------------


class NotCompiled(Exception):
    """The estimator has a shape this module does not compile (its reason)."""


def _step(est: Any) -> Step:
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import FeatureUnion
    from sklearn.preprocessing import StandardScaler

    if isinstance(est, SimpleImputer):
        stats = np.asarray(est.statistics_)
        if not (isinstance(est.missing_values, float) and np.isnan(est.missing_values)):
            raise NotCompiled("an imputer of values other than NaN")
        if np.isnan(stats).any():
            raise NotCompiled("an imputer that drops empty columns")
        arrays: dict[str, Array] = {"statistics": stats}
        if est.add_indicator:
            ind = est.indicator_
            if ind.features != "missing-only" or ind.sparse not in (False, "auto"):
                raise NotCompiled("an imputer's indicator of another kind")
            arrays["indicator"] = np.asarray(ind.features_, dtype=np.int64)
        return Step("impute", arrays)
    if isinstance(est, MissingIndicator):
        if not (isinstance(est.missing_values, float) and np.isnan(est.missing_values)):
            raise NotCompiled("an indicator of values other than NaN")
        if est.sparse not in (False, "auto"):
            raise NotCompiled("a sparse indicator")
        return Step("indicator", {"features": np.asarray(est.features_, dtype=np.int64)})
    if isinstance(est, FeatureUnion):
        if est.transformer_weights or est.n_jobs not in (None, 1):
            raise NotCompiled("a weighted or parallel feature union")
        return Step("union", {}, tuple(_step(t) for _, t in est.transformer_list))
    if isinstance(est, StandardScaler):
        arrays = {}
        if est.with_mean:
            arrays["mean"] = np.asarray(est.mean_)
        if est.with_std:
            arrays["scale"] = np.asarray(est.scale_)
        return Step("scale", arrays)
    raise NotCompiled(f"a step {type(est).__name__}")


def _final(est: Any) -> tuple[str, dict[str, Array]]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if isinstance(est, LogisticRegression):
        if len(est.classes_) != 2:
            raise NotCompiled("more than two classes")
        return "linear", {
            "coef": np.asarray(est.coef_),
            "intercept": np.asarray(est.intercept_),
        }
    if isinstance(est, HistGradientBoostingClassifier):
        if est.n_trees_per_iteration_ != 1 or getattr(est, "_preprocessor", None) is not None:
            raise NotCompiled("a multi-class or categorical boosting model")
        trees = [p.nodes for per_iteration in est._predictors for p in per_iteration]
        if not trees:
            raise NotCompiled("a boosting model with no trees")
        nodes: Array = np.concatenate(trees)
        if nodes["is_categorical"].any():
            raise NotCompiled("a categorical split")
        bounds = np.cumsum([0] + [len(t) for t in trees]).astype(np.int64)
        return "trees", {
            "baseline": np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1),
            "nodes": nodes,
            "tree_bounds": bounds,
            "n_features": np.asarray([est.n_features_in_], dtype=np.int64),
        }
    raise NotCompiled(f"a final estimator {type(est).__name__}")


def _compile(estimator: Any) -> CompiledModel:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.isotonic import IsotonicRegression
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, CalibratedClassifierCV):
        raise NotCompiled("an uncalibrated estimator")
    fitted = estimator.calibrated_classifiers_
    if len(fitted) != 1 or len(fitted[0].calibrators) != 1:
        raise NotCompiled("an ensemble of calibrated classifiers")
    calibrator = fitted[0].calibrators[0]
    if not isinstance(calibrator, IsotonicRegression) or calibrator.out_of_bounds != "clip":
        raise NotCompiled("a calibration other than isotonic (sigmoid's expit is not exact)")
    inner = fitted[0].estimator
    steps: list[Any] = [s for _, s in inner.steps] if isinstance(inner, Pipeline) else [inner]
    kind, arrays = _final(steps[-1])
    arrays = {
        **arrays,
        # as fitted: float32 when the decision was (logistic's)
        "iso_x": np.asarray(calibrator.X_thresholds_),
        "iso_y": np.asarray(calibrator.y_thresholds_),
        "iso_min": np.asarray([calibrator.X_min_]),
        "iso_max": np.asarray([calibrator.X_max_]),
    }
    return CompiledModel(tuple(_step(s) for s in steps[:-1]), kind, arrays)


def compile_estimator(estimator: Any, x: npt.NDArray[np.float32]) -> CompiledModel | None:
    """The estimator compiled, when its probabilities on ``x`` (the training rows, at most
    :data:`CHECK_ROWS` of them, with a row of every feature missing and one of every
    feature 0 added) equal
    scikit-learn's bit for bit, through its bytes as stored; else None."""
    try:
        compiled = _compile(estimator)
        again = CompiledModel.from_bytes(compiled.to_bytes())
    except NotCompiled:
        return None
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # The arrays are read from scikit-learn's private attributes (``_predictors``,
        # ``_baseline_prediction``): a release that renames or reshapes them must leave
        # the model scoring through its estimator, never fail the training.
        log.warning("model not compiled (%s: %s): the estimator scores", type(exc).__name__, exc)
        return None
    if again is None:
        return None
    n = x.shape[1]
    # at most CHECK_ROWS of them, spread over the whole (the walk here is per level)
    rows = x[np.unique(np.linspace(0, len(x) - 1, min(len(x), CHECK_ROWS)).astype(np.intp))]
    check = np.vstack([rows, np.full((1, n), np.nan, x.dtype), np.zeros((1, n), x.dtype)])
    want = np.asarray(estimator.predict_proba(check)[:, 1], dtype=np.float64)
    got = again.proba(check)
    if want.shape != got.shape or not np.array_equal(want, got):
        return None
    return again
