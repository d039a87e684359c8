"""Evaluation figures: ROC AUC, PR AUC, top-decile lift, Brier beside the base rate's,
and a 10-bin calibration table (equal-count bins of predicted probability)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def top_decile_lift(y: npt.NDArray[Any], p: npt.NDArray[Any]) -> float:
    """Churn rate among the 10% highest-scored over the overall churn rate."""
    n = len(y)
    base = float(np.mean(y)) if n else 0.0
    if n == 0 or base == 0:
        return float("nan")
    k = max(1, int(np.ceil(n * 0.1)))
    order = np.argsort(-p, kind="stable")
    return float(np.mean(y[order[:k]])) / base


def calibration_table(
    y: npt.NDArray[Any], p: npt.NDArray[Any], bins: int = 10
) -> list[dict[str, float]]:
    """Per decile of predicted probability: rows, mean predicted, observed churn rate."""
    if len(y) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out: list[dict[str, float]] = []
    for i, idx in enumerate(np.array_split(order, bins)):
        if len(idx) == 0:
            continue
        out.append(
            {
                "bin": float(i + 1),
                "rows": float(len(idx)),
                "predicted": float(np.mean(p[idx])),
                "observed": float(np.mean(y[idx])),
            }
        )
    return out


def summary(y: npt.NDArray[Any], p: npt.NDArray[Any]) -> dict[str, float]:
    """ROC AUC, PR AUC, top-decile lift, Brier, the base rate's Brier, worst calibration gap."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=np.int8)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    base = float(np.mean(y)) if len(y) else float("nan")
    two = len(set(y.tolist())) == 2
    table = calibration_table(y, p)
    return {
        "rows": float(len(y)),
        "churners": float(y.sum()),
        "base_rate": base,
        "roc_auc": float(roc_auc_score(y, p)) if two else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if two else float("nan"),
        "top_decile_lift": top_decile_lift(y, p),
        "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"),
        "base_rate_brier": base * (1 - base),
        "max_calibration_gap": max(
            (abs(b["predicted"] - b["observed"]) for b in table), default=0.0
        ),
    }
