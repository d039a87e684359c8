"""Safe (de)serialisation of a fitted estimator: skops.io, never pickle.

``skops.io`` stores an object as a zip of JSON schema plus numpy arrays and, on load,
refuses every type not named in ``trusted``: a blob read from the warehouse cannot run
code by naming a callable, as a pickle can. :data:`TRUSTED` is the explicit list of the
types our pipelines are made of; :func:`dumps` refuses to store an estimator holding
any other type, so what is stored can always be loaded with that list and nothing more.
"""

from __future__ import annotations

from typing import Any

from churn.errors import ScoringError

#: The types a stored model holds beyond those skops trusts by default (its default list
#: covers scikit-learn's estimators and numpy arrays; these four are what our calibrated
#: pipelines add: measured with ``skops.io.get_untrusted_types`` on each candidate with
#: isotonic and sigmoid calibration). Anything else is refused on save and on load.
TRUSTED: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


def dumps(estimator: Any) -> bytes:
    """The estimator as skops bytes; refused when it holds a type not in :data:`TRUSTED`."""
    import skops.io as sio

    data: bytes = sio.dumps(estimator, compression=8)
    untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED)
    if untrusted:
        raise ScoringError(f"model holds types outside the trusted list: {sorted(untrusted)}")
    return data


def loads(data: bytes) -> Any:
    """An estimator from skops bytes, trusting only :data:`TRUSTED` (anything else raises)."""
    import skops.io as sio

    untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED)
    if untrusted:
        raise ScoringError(f"stored model holds untrusted types: {sorted(untrusted)}")
    return sio.loads(data, trusted=list(TRUSTED))
