# %% [markdown]
# # Churn model back-test
#
# Trains the churn-risk model as of a cutoff on snapshots whose horizon ended by then
# (nothing after the cutoff is read for training), scores the accounts live at the cutoff
# and compares with who churned in the following horizon: the figures beside the
# rule-based score, a calibration plot, a lift chart and the features that matter most.
#
# Reads the warehouse read-only (`CHURN_DB`, default `data/churn.duckdb`); stores nothing
# in it (the model trained here is not saved or promoted: `churn model train` does that).
# Settings come from the environment and `CHURN_CONFIG` as for the CLI. Optional:
# `CHURN_CUTOFF` (ISO date; default the data's end minus the horizon), `CHURN_TRUTH` (a
# generated world's truth.csv: judge against it, and show the hidden health's figures),
# `CHURN_NOTEBOOK_OUT` (folder for the charts as HTML, default `data/notebooks`).
# Run as a script (`.venv/bin/python notebooks/model_backtest.py`) or open in Jupyter.

# %%
from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import altair as alt
import numpy as np
import polars as pl

from churn import warehouse
from churn.job.model import latest_data_at, read_truth
from churn.settings import load_settings
from churn.signals.model.features import DESCRIPTIONS, FEATURE_NAMES, compute_features
from churn.signals.model.metrics import calibration_table
from churn.signals.model.model import evaluate
from churn.signals.model.train import labels, matrix
from churn.signals.tables import Tables

settings = load_settings().signals
con = warehouse.connect(Path(os.environ.get("CHURN_DB", "data/churn.duckdb")), read_only=True)
out = Path(os.environ.get("CHURN_NOTEBOOK_OUT", "data/notebooks"))
out.mkdir(parents=True, exist_ok=True)
horizon = timedelta(days=settings.churn_horizon_days)
truth_path = os.environ.get("CHURN_TRUTH")
truth, world_now = read_truth(Path(truth_path)) if truth_path else (None, None)
if os.environ.get("CHURN_CUTOFF"):
    cutoff = datetime.fromisoformat(os.environ["CHURN_CUTOFF"])
else:
    end = world_now or latest_data_at(con)
    assert end is not None, "the warehouse holds no history"
    cutoff = end - horizon
cutoff = cutoff.replace(tzinfo=None)
tables = Tables(con)
print(f"cutoff {cutoff:%Y-%m-%d}, horizon {settings.churn_horizon_days} days")

# %% [markdown]
# ## Figures beside the rule-based score
#
# ROC AUC, PR AUC, lift in the top decile, Brier score against the base rate's (always
# predicting the churn rate), and the worst calibration gap over the ten deciles.

# %%
ev = evaluate(tables, settings, cutoff, truth=truth)
print(f"model {ev.model.version} ({ev.model.kind}); labels from the {ev.label_source}")
figures = pl.DataFrame(
    [{"scorer": name, **values} for name, values in ev.overall.items()]
).select(
    "scorer", "rows", "churners", "roc_auc", "pr_auc", "top_decile_lift",
    (pl.col("brier") / pl.col("base_rate_brier")).alias("brier_vs_base_rate"),
    "max_calibration_gap",
)  # fmt: skip
with pl.Config(tbl_width_chars=200, fmt_str_lengths=40):
    print(figures)
print(f"known churn (scheduled cancellations, apart): {ev.known_churn} accounts")

# %% [markdown]
# ## Calibration: predicted against observed churn, per decile of predicted probability

# %%
calib = pl.DataFrame(
    [{"scorer": name, **row} for name, rows in ev.calibration.items() for row in rows]
)
print(calib.filter(pl.col("scorer") == "model"))
diagonal = alt.Chart(pl.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
    strokeDash=[4, 4], color="gray"
).encode(x="x", y="y")  # fmt: skip
points = alt.Chart(calib).mark_line(point=True).encode(
    x=alt.X("predicted", title="predicted churn probability (decile mean)"),
    y=alt.Y("observed", title="observed churn rate"),
    color="scorer",
)  # fmt: skip
(diagonal + points).properties(title="Calibration").save(out / "calibration.html")

# %% [markdown]
# ## Lift: churn rate per decile of score over the overall rate (decile 1 = riskiest)

# %%
feats = compute_features(tables, [cutoff], settings, settings.churn_horizon_days)
feats = feats.filter(~pl.col("known_churn"))
if truth is not None:
    t = truth.unique("key", keep="first")
    feats = feats.join(t, left_on="account_id", right_on="key", how="inner").filter(
        pl.col("churned_at").is_null() | (pl.col("churned_at") > cutoff)
    )
    feats = feats.with_columns(
        churned=pl.col("churned_at").is_not_null() & (pl.col("churned_at") <= cutoff + horizon)
    )
y = labels(feats)
if ev.model.is_baseline:
    raise SystemExit("too little history to train a model at this cutoff: the baseline is in force")
p = ev.model.proba(matrix(feats))
order = np.argsort(-p, kind="stable")
base_rate = float(y.mean())
lift = pl.DataFrame(
    [
        {"decile": i + 1, "rows": len(idx), "churn_rate": float(y[idx].mean()),
         "lift": float(y[idx].mean()) / base_rate if base_rate else float("nan"),
         "share_of_churners": float(y[idx].sum()) / max(int(y.sum()), 1)}
        for i, idx in enumerate(np.array_split(order, 10))
    ]
)  # fmt: skip
print(lift)
alt.Chart(lift).mark_bar().encode(
    x=alt.X("decile:O", title="decile of predicted risk"), y=alt.Y("lift", title="lift")
).properties(title="Lift by decile").save(out / "lift.html")  # fmt: skip
assert len(calibration_table(y, p)) == 10 or len(y) < 10

# %% [markdown]
# ## The features that matter most
#
# Permutation importance on the accounts scored at the cutoff: how much the ROC AUC falls
# when one feature's values are shuffled between accounts (the model is not refitted).

# %%
from sklearn.inspection import permutation_importance  # noqa: E402

estimator = ev.model.estimator
importance = permutation_importance(
    estimator, matrix(feats), y, scoring="roc_auc", n_repeats=3, random_state=0
)
top = (
    pl.DataFrame(
        {
            "feature": list(FEATURE_NAMES),
            "auc_drop": importance.importances_mean,
            "meaning": [DESCRIPTIONS[n] for n in FEATURE_NAMES],
        }
    )
    .sort("auc_drop", descending=True)
    .head(10)
)
with pl.Config(fmt_str_lengths=80, tbl_width_chars=160):
    print(top)
alt.Chart(top).mark_bar().encode(
    x=alt.X("auc_drop", title="ROC AUC lost when shuffled"), y=alt.Y("feature", sort="-x")
).properties(title="Top features").save(out / "top_features.html")  # fmt: skip
print(f"charts written to {out}")
con.close()
