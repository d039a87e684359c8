# %% [markdown]
# # Churn overview
#
# Reads the service's DuckDB warehouse read-only (`CHURN_DB`, default
# `data/churn.duckdb`), so it can stay open while nothing writes; stop it before
# `churn run` (DuckDB lets one process write, or many read). Cells in the percent format:
# open in Jupyter/VS Code, or run as a script: `.venv/bin/python notebooks/churn_overview.py`.

# %%
from __future__ import annotations

import os

import duckdb
import polars as pl

con = duckdb.connect(os.environ.get("CHURN_DB", "data/churn.duckdb"), read_only=True)


def q(sql: str, *params: object) -> pl.DataFrame:
    """A query's rows as a polars frame (through Arrow, no copies row by row)."""
    frame = pl.from_arrow(con.sql(sql, params=list(params) or None).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


latest = q("SELECT max(as_of) AS as_of FROM account_health")["as_of"][0]
print(f"latest scoring: {latest}")

# %% [markdown]
# ## Payment Health and known churn at the latest scoring

# %%
health = q(
    """
    SELECT payment_health, count(*) AS accounts, count(*) FILTER (known_churn) AS cancelling,
           sum(total_mrr_minor) AS mrr_minor, sum(mrr_at_risk_minor) AS at_risk_minor,
           any_value(reporting_currency) AS currency
    FROM account_health WHERE as_of = ? GROUP BY ALL ORDER BY accounts DESC
    """,
    latest,
)
print(health)

# %% [markdown]
# ## Open signal episodes by signal and severity

# %%
signals = q(
    "SELECT signal, severity, count(*) AS episodes FROM signal_events WHERE as_of = ?"
    " GROUP BY ALL ORDER BY signal, severity",
    latest,
)
print(signals)

# %% [markdown]
# ## MRR movements by month (reporting currency, minor units)

# %%
movements = q(
    """
    SELECT month, movement, sum(amount_minor) AS amount_minor
    FROM mrr_movements WHERE as_of = ? GROUP BY ALL ORDER BY month, movement
    """,
    latest,
)
if movements.height:
    print(movements.pivot(on="movement", index="month", values="amount_minor").fill_null(0))
else:
    print("no MRR movements")

# %% [markdown]
# ## The accounts with the most MRR at risk

# %%
top = q(
    """
    SELECT account_id, payment_health, risk_score, known_churn, mrr_at_risk_minor,
           top_reasons->>0 AS top_reason
    FROM account_health WHERE as_of = ?
    ORDER BY mrr_at_risk_minor DESC NULLS LAST, risk_score DESC LIMIT 20
    """,
    latest,
)
with pl.Config(fmt_str_lengths=80, tbl_rows=20):
    print(top)
con.close()
