"""The reasons' attribution, vectorised: the moved rows of every feature are predicted
together in blocks (``contributions``), the rows whose move no split of the gradient
boosting model can see are not predicted at all (``routing.may_change``: their difference
is exactly 0), and the sentences read the feature matrix (``reasons_frame``). All must
give what the one-call-per-feature loop and the per-row dictionaries gave (kept here as
the reference), for the fitted candidates and any blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training import synthetic

from churn.signals.model.features import FEATURE_NAMES
from churn.signals.model.reasons import MIN_CONTRIBUTION, contributions, reasons_frame, sentence
from churn.signals.model.routing import may_change
from churn.signals.model.train import CANDIDATES, fit_calibrated, threads

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def loop_contributions(
    predict: Predict, x: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The attribution as it was: one call of the model per feature."""
    base = predict(x)
    out = np.zeros(x.shape, dtype=np.float64)
    for j in range(x.shape[1]):
        ref = reference[j]
        col = x[:, j]
        differs = ~((col == ref) | (np.isnan(col) & np.isnan(ref)))
        if not differs.any():
            continue
        rows = np.flatnonzero(differs)
        moved = x[rows].copy()
        moved[:, j] = ref
        out[rows, j] = base[rows] - predict(moved)
    return base, out


def loop_reasons(frame: pl.DataFrame, contrib: npt.NDArray[np.float64]) -> list[list[str]]:
    """The sentences as they were: a dictionary per row."""
    out: list[list[str]] = []
    for i, row in enumerate(frame.select(FEATURE_NAMES).to_dicts()):
        values: dict[str, Any] = {
            k: float("nan") if v is None else float(v) for k, v in row.items()
        }
        said: list[str] = []
        for j in np.argsort(-contrib[i], kind="stable")[:6]:
            if contrib[i, j] < MIN_CONTRIBUTION or len(said) >= 3:
                break
            text = sentence(FEATURE_NAMES[j], values)
            if text not in said:
                said.append(text)
        out.append(said)
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Predict, Any]]:
    frame = synthetic(60, seed=5)
    out: dict[str, tuple[Predict, Any]] = {}
    for kind in CANDIDATES:
        estimator = fit_calibrated(kind, frame, seed=0)

        def predict(x: npt.NDArray[np.float32], est: Any = estimator) -> npt.NDArray[np.float64]:
            if x.shape[0] == 0:  # as ChurnModel.proba
                return np.zeros(0)
            with threads():
                return np.asarray(est.predict_proba(x)[:, 1], dtype=np.float64)

        out[kind] = (predict, estimator)
    return out


n_features = len(FEATURE_NAMES)
cell = st.one_of(
    st.just("ref"), st.just("nan"), st.floats(-3, 3, width=32), st.integers(0, 5).map(float)
)


@settings(max_examples=30)
@given(
    kind=st.sampled_from(CANDIDATES),
    cells=st.lists(st.lists(cell, min_size=n_features, max_size=n_features), max_size=12),
    reference=st.lists(
        st.one_of(st.just(float("nan")), st.floats(-1, 1, width=32)),
        min_size=n_features,
        max_size=n_features,
    ),
    block_rows=st.integers(1, 400),
)
def test_vectorised_attribution_and_sentences_equal_the_loop(
    models: dict[str, tuple[Predict, Any]],
    kind: str,
    cells: list[list[object]],
    reference: list[float],
    block_rows: int,
) -> None:
    ref = np.asarray(reference, dtype=np.float32)
    x = np.array(
        [
            [ref[j] if c == "ref" else np.nan if c == "nan" else c for j, c in enumerate(row)]
            for row in cells
        ],
        dtype=np.float32,
    ).reshape(len(cells), n_features)
    predict, estimator = models[kind]
    mask = may_change(estimator, x, ref)
    # the trees' splits are read for gradient boosting (else every moved row is predicted)
    assert (mask is not None) == (kind == "gradient_boosting")
    want_p, want_c = loop_contributions(predict, x, ref)
    got_p, got_c = contributions(predict, x, ref, block_rows=block_rows, may_change=mask)
    np.testing.assert_array_equal(got_p, want_p)
    if mask is not None:  # a move no split sees leaves the very same probability
        assert not want_c[~mask].any()
    np.testing.assert_array_equal(got_c, want_c)
    frame = pl.DataFrame({n: x[:, j] for j, n in enumerate(FEATURE_NAMES)})
    assert reasons_frame(frame, got_c) == loop_reasons(frame, want_c)
