# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Churn overview
#
# Reads the service's DuckDB warehouse read-only (`CHURN_DB`, default
# `data/churn.duckdb`), so it can stay open while nothing writes; stop it before
# `churn run` (DuckDB lets one process write, or many read), or point it at the read copy
# each run publishes (`data/churn.read.duckdb`). A jupytext pairing: `make notebooks`
# writes and executes `data/notebooks/churn_overview.ipynb` (open it in Jupyter or VS
# Code); with jupytext in Jupyter this file opens as a notebook itself; or run it as a
# script: `.venv/bin/python notebooks/churn_overview.py`. Accounts by name, amounts in
# their currency.

# %%
from __future__ import annotations

import os

import duckdb
import polars as pl

from churn.signals.money import display

con = duckdb.connect(os.environ.get("CHURN_DB", "data/churn.duckdb"), read_only=True)


def q(sql: str, *params: object) -> pl.DataFrame:
    """A query's rows as a polars frame (through Arrow, no copies row by row)."""
    frame = pl.from_arrow(con.sql(sql, params=list(params) or None).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def money(frame: pl.DataFrame, *columns: str, currency: str = "currency") -> pl.DataFrame:
    """Minor-unit columns (``*_minor``) as amounts in their currency (``$1,960``)."""
    out = frame
    for column in columns:
        out = out.with_columns(
            pl.struct(column, currency)
            .map_elements(lambda r, c=column: display(r[c], r[currency]), return_dtype=pl.String)
            .alias(column.removesuffix("_minor"))
        ).drop(column)
    return out


latest = q("SELECT max(as_of) AS as_of FROM account_health")["as_of"][0]
print(f"latest scoring: {latest}")

# %% [markdown]
# ## Payment Health and known churn at the latest scoring

# %%
health = q(
    """
    SELECT payment_health, count(*) AS accounts, count(*) FILTER (known_churn) AS cancelling,
           sum(total_mrr_minor)::BIGINT AS mrr_minor,
           sum(mrr_at_risk_minor)::BIGINT AS at_risk_minor,
           any_value(reporting_currency) AS currency
    FROM account_health WHERE as_of = ? GROUP BY ALL ORDER BY accounts DESC
    """,
    latest,
)
health = money(health, "mrr_minor", "at_risk_minor")
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
# ## MRR movements by month (reporting currency)

# %%
movements = q(
    """
    SELECT m.month, m.movement, sum(m.amount_minor)::BIGINT AS amount_minor,
           any_value(h.reporting_currency) AS currency
    FROM mrr_movements m
    JOIN (SELECT DISTINCT as_of, reporting_currency FROM account_health) h USING (as_of)
    WHERE m.as_of = ? GROUP BY ALL ORDER BY m.month, m.movement
    """,
    latest,
)
if movements.height:
    shown = money(movements, "amount_minor")
    print(shown.pivot(on="movement", index="month", values="amount").fill_null("—"))
else:
    print("no MRR movements")

# %% [markdown]
# ## The accounts with the most MRR at risk
#
# By name (the Salesforce Account's, else the Stripe customer's); the status says a
# scheduled cancellation where there is one, else Payment Health.

# %%
top = q(
    """
    SELECT coalesce(a.name, c.name, h.account_id) AS account,
           CASE WHEN h.known_churn
                THEN 'Cancels ' || coalesce(strftime(h.churn_effective_at, '%Y-%m-%d'), '')
                ELSE h.payment_health END AS status,
           h.risk_score,
           coalesce(h.expected_mrr_at_risk_minor, h.mrr_at_risk_minor) AS at_risk_minor,
           h.reporting_currency AS currency, h.top_reasons->>0 AS top_reason
    FROM account_health h
    LEFT JOIN core_accounts a ON a.account_id = h.account_id
    LEFT JOIN core_customers c ON c.customer_id = h.account_id
    WHERE h.as_of = ?
    ORDER BY at_risk_minor DESC NULLS LAST, h.risk_score DESC, account LIMIT 20
    """,
    latest,
)
top = money(top, "at_risk_minor").select("account", "status", "risk_score", "at_risk", "top_reason")
with pl.Config(fmt_str_lengths=100, tbl_rows=20, tbl_width_chars=160):
    print(top)
con.close()
