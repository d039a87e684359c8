"""A compiled model gives scikit-learn's probabilities bit for bit, without scikit-learn.

Scoring a 1% incremental run's few changed accounts paid for importing scikit-learn and
skops (about 1.5 CPU seconds) before the first prediction. A trained pipeline is compiled
into its arrays (``churn.signals.model.compiled``) only when they reproduce its
probabilities exactly; these tests hold it to that on rows it never saw, hold the
routing of the reasons to the same splits, and check that a compiled model is scored
in a process that never imports scikit-learn.
"""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training import synthetic

from churn.signals.model import compiled as compiled_mod
from churn.signals.model.compiled import CompiledModel, compile_estimator
from churn.signals.model.features import FEATURE_NAMES
from churn.signals.model.model import ChurnModel
from churn.signals.model.routing import may_change, may_change_compiled
from churn.signals.model.serialize import dumps
from churn.signals.model.train import CANDIDATES, fit_calibrated, matrix

N = len(FEATURE_NAMES)
# the module (the package's ``train`` is the training function)
train = importlib.import_module("churn.signals.model.train")


def _older_gradient_boosting() -> Any:
    """The gradient boosting pipeline as stored before (an imputer with indicators only
    for the features that had gaps), calibrated."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [("impute", train._imputer()),
         ("model", HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=7, random_state=0))]
    )  # fmt: skip


Fitted = dict[str, tuple[Any, npt.NDArray[np.float32], CompiledModel | None]]


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    """Each candidate (and the older layout), fitted and calibrated isotonically (the
    synthetic frame has more churners than ``ISOTONIC_MIN_CHURNERS``), and compiled."""
    from sklearn.calibration import CalibratedClassifierCV

    frame = synthetic(60, seed=5)
    x = matrix(frame)
    out: Fitted = {}
    for kind in CANDIDATES:
        estimator = fit_calibrated(kind, frame, seed=0)
        assert estimator.calibrated_classifiers_[0].method == "isotonic"
        out[kind] = (estimator, x, compile_estimator(estimator, x))
    older = CalibratedClassifierCV(_older_gradient_boosting(), method="isotonic", cv=3,
                                   ensemble=False).fit(x, train.labels(frame))  # fmt: skip
    out["older_gradient_boosting"] = (older, x, compile_estimator(older, x))
    return out


KINDS = [*CANDIDATES, "older_gradient_boosting"]
cell = st.one_of(
    st.just(float("nan")),
    st.floats(-4, 4, width=32),
    st.integers(-2, 40).map(float),
    st.sampled_from([0.0, -0.0, 1e30, -1e30]),
)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    cells=st.lists(st.lists(cell, min_size=N, max_size=N), min_size=1, max_size=30),
)
def test_compiled_probabilities_equal_scikit_learns_bit_for_bit(
    fitted: Fitted, kind: str, cells: list[list[float]]
) -> None:
    estimator, _, model = fitted[kind]
    assert model is not None
    x = np.asarray(cells, dtype=np.float32)
    want = np.asarray(estimator.predict_proba(x)[:, 1], dtype=np.float64)
    np.testing.assert_array_equal(model.proba(x), want)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    cells=st.lists(st.lists(cell, min_size=N, max_size=N), max_size=12),
    reference=st.lists(
        st.one_of(st.just(float("nan")), st.floats(-1, 1, width=32)), min_size=N, max_size=N
    ),
)
def test_the_reasons_routing_reads_the_same_splits_from_the_arrays(
    fitted: Fitted,
    kind: str,
    cells: list[list[float]],
    reference: list[float],
) -> None:
    estimator, _, model = fitted[kind]
    assert model is not None
    x = np.asarray(cells, dtype=np.float32).reshape(len(cells), N)
    ref = np.asarray(reference, dtype=np.float32)
    want = may_change(estimator, x, ref)
    layout = model.tree_layout()
    got = None if layout is None else may_change_compiled(layout, x, ref)
    assert (want is None) == (got is None) == (kind == "logistic")
    if want is not None and got is not None:
        np.testing.assert_array_equal(got, want)


def test_a_sigmoid_calibration_is_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """SciPy's ``expit`` and ``1 / (1 + np.exp(-x))`` differ in the last bit of about one
    value in fifty: the sigmoid calibration cannot be repeated exactly, so its estimator
    scores (uncompiled), as does an uncalibrated one."""
    frame = synthetic(20, seed=5)
    monkeypatch.setattr(train, "ISOTONIC_MIN_CHURNERS", 10**9)
    for kind in CANDIDATES:
        sigmoid = fit_calibrated(kind, frame, seed=0)
        assert sigmoid.calibrated_classifiers_[0].method == "sigmoid"
        assert compile_estimator(sigmoid, matrix(frame)) is None
        bare = train.make_estimator(kind).fit(matrix(frame), train.labels(frame))
        assert compile_estimator(bare, matrix(frame)) is None


def test_a_mismatch_on_the_training_rows_keeps_the_estimator(
    fitted: Fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator, x, _ = fitted["gradient_boosting"]
    real = CompiledModel.proba

    def off_by_one_bit(self: CompiledModel, rows: Any) -> npt.NDArray[np.float64]:
        p = real(self, rows)
        p[-1] = np.nextafter(p[-1], 2.0)
        return p

    monkeypatch.setattr(CompiledModel, "proba", off_by_one_bit)
    assert compile_estimator(estimator, x) is None


def test_stored_arrays_can_hold_no_object(fitted: Fitted) -> None:
    """Read with ``allow_pickle=False``: bytes naming an object array are refused, not
    unpickled."""
    model = fitted["logistic"][2]
    assert model is not None
    assert CompiledModel.from_bytes(model.to_bytes()) is not None
    buf = io.BytesIO()
    layout = {"format": compiled_mod.FORMAT, "steps": [], "final": "linear", "arrays": ["coef"]}
    np.savez(buf, __layout__=np.array(json.dumps(layout)),
             **{"final.coef": np.array([object()], dtype=object)})  # fmt: skip
    with pytest.raises(ValueError, match="allow_pickle"):
        CompiledModel.from_bytes(buf.getvalue())
    other = io.BytesIO()
    np.savez(other, __layout__=np.array(json.dumps(layout | {"format": 99})))
    assert CompiledModel.from_bytes(other.getvalue()) is None


_SCORE = """
import json, sys
from pathlib import Path
import numpy as np
from churn.signals.model.model import ChurnModel
folder = Path(sys.argv[1])
model = ChurnModel.from_stored("v", "gradient_boosting", (folder / "blob").read_bytes(), {},
                               (folder / "compiled").read_bytes())
x = np.load(folder / "x.npy")
few = model.proba(x[:50]).tolist()
imported_for_few = "sklearn" in sys.modules
many = model.proba(x).tolist()
print(json.dumps({"few": few, "many": many, "sklearn_for_few": imported_for_few,
                  "sklearn_for_many": "sklearn" in sys.modules}))
"""


def test_a_compiled_model_scores_a_few_accounts_without_importing_scikit_learn(
    fitted: Fitted, tmp_path: Path
) -> None:
    """Few rows: the arrays, in a process that never imports scikit-learn; more than
    ``MAX_ROWS``: the estimator, rebuilt from its bytes. The same numbers either way."""
    estimator, x, model = fitted["gradient_boosting"]
    assert model is not None
    (tmp_path / "blob").write_bytes(dumps(estimator))
    (tmp_path / "compiled").write_bytes(model.to_bytes())
    rows = np.vstack([x] * (compiled_mod.MAX_ROWS // len(x) + 1))
    np.save(tmp_path / "x.npy", rows)
    done = subprocess.run([sys.executable, "-c", _SCORE, str(tmp_path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    got = json.loads(done.stdout)
    assert got["sklearn_for_few"] is False
    assert got["sklearn_for_many"] is True  # more than MAX_ROWS: the estimator scored
    want = estimator.predict_proba(rows)[:, 1]
    assert got["few"] == want[:50].tolist()
    assert got["many"] == want.tolist()
    stored = ChurnModel.from_stored("v", "gradient_boosting", dumps(estimator), {},
                                    model.to_bytes())  # fmt: skip
    assert stored.estimator is None and stored.compiled is not None  # not loaded yet
    assert not stored.is_baseline


@pytest.mark.parametrize("kind", KINDS)
def test_scores_and_reasons_are_the_same_with_the_arrays_as_with_the_estimator(
    fitted: Fitted, kind: str
) -> None:
    """What the run stores per account (probability, reasons in words) does not depend
    on which of the two scored it."""
    from churn.signals.model.model import _reference, _score_frame

    estimator, _, model = fitted[kind]
    assert model is not None
    # few enough rows that the moved ones stay under MAX_ROWS (the linear one moves all)
    frame = synthetic(40, seed=9).head(300)
    reference = _reference(synthetic(60, seed=5))
    blob = dumps(estimator)
    arrays = ChurnModel("v", kind, None, reference, {}, model, blob)
    sklearn = ChurnModel("v", kind, estimator, reference, {})
    p_arrays, reasons_arrays = _score_frame(arrays, frame)
    p_sklearn, reasons_sklearn = _score_frame(sklearn, frame)
    np.testing.assert_array_equal(p_arrays, p_sklearn)
    assert reasons_arrays == reasons_sklearn
    assert any(reasons_arrays)
    assert arrays.estimator is None  # scored without rebuilding the estimator


def test_a_scoring_past_max_rows_in_all_is_predicted_by_the_estimator(
    fitted: Fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The choice is made once for a scoring, on every row it predicts (its accounts and
    the reasons' moved rows, however they are cut into calls): the arrays' walk costs
    more per row than scikit-learn's, whose import is paid once."""
    from churn.signals.model import model as model_mod
    from churn.signals.model.model import _reference, _score_frame

    estimator, _, compiled = fitted["gradient_boosting"]
    frame = synthetic(40, seed=9)
    reference = _reference(synthetic(60, seed=5))
    small = ChurnModel("v", "gradient_boosting", None, reference, {}, compiled, dumps(estimator))
    want = _score_frame(small, frame)
    assert small.estimator is None
    monkeypatch.setattr(model_mod, "MAX_COMPILED_ROWS", frame.height)  # accounts alone fit
    large = ChurnModel("v", "gradient_boosting", None, reference, {}, compiled, dumps(estimator))
    got = _score_frame(large, frame)
    assert large.estimator is not None  # the moved rows took it past: the estimator scored
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]


def test_a_renamed_private_attribute_keeps_the_estimator(
    fitted: Fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arrays come from scikit-learn's private attributes: a release without them (here
    ``_baseline_prediction`` gone) leaves the model uncompiled, scoring through its
    estimator, instead of failing the training."""
    estimator, x, _ = fitted["gradient_boosting"]
    booster = estimator.calibrated_classifiers_[0].estimator.steps[-1][1]
    monkeypatch.delattr(booster, "_baseline_prediction")
    assert compile_estimator(estimator, x) is None
