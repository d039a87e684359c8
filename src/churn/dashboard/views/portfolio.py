"""Portfolio: MRR movements by month, churn and retention rates, MRR at risk by signal,
Payment Health over time, retention by start-month cohort."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from churn.dashboard import common
from churn.dashboard import format as fmt
from churn.dashboard import queries as q

#: Movements in the order people read them, with their chart colours.
MOVEMENTS = {
    "new": "#2e7d32",
    "expansion": "#66bb6a",
    "reactivation": "#26a69a",
    "contraction": "#ffa726",
    "churn": "#e53935",
}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


with common.session("Portfolio", "MRR in the reporting currency, months in UTC") as s:
    cur = s.currency
    summary = q.portfolio_summary(s.con)
    if summary.is_empty():
        st.info("No MRR movement recorded yet.")
        st.stop()
    complete = summary.filter(pl.col("month") < s.as_of.date().replace(day=1))
    last = (complete if not complete.is_empty() else summary).row(-1, named=True)
    first = summary.row(0, named=True)
    now = summary.row(-1, named=True)

    st.markdown(f"**{last['month']:%B %Y}** (the last complete month)")
    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("MRR now", fmt.money_short(now["end_mrr_minor"], cur))
    c2.metric(
        "Gross MRR churn",
        _pct(last["gross_mrr_churn"]),
        help="(churn + contraction) / MRR at the month's start",
    )
    c3.metric(
        "Net MRR churn",
        _pct(last["net_mrr_churn"]),
        help="(churn + contraction - expansion - reactivation) / MRR at the month's start",
    )
    c4.metric(
        "Net revenue retention",
        _pct(last["nrr"]),
        help="(start + expansion + reactivation - contraction - churn) / start",
    )
    qr = last["quick_ratio"]
    c5.metric(
        "Quick ratio",
        "n/a" if qr is None else f"{qr:.2f}",
        help="(new + expansion + reactivation) / (churn + contraction)",
    )

    st.subheader("MRR movements by month")
    moves = q.movements_by_month(s.con).with_columns(
        pl.col("amount_minor")
        .map_elements(lambda v: fmt.major(v, cur), return_dtype=pl.Float64)
        .alias("amount")
    )
    st.altair_chart(
        alt.Chart(moves.to_pandas())
        .mark_bar()
        .encode(
            x=alt.X("yearmonth(month):O", title=None),
            y=alt.Y("sum(amount):Q", title=f"MRR change ({cur})"),
            color=alt.Color(
                "movement:N",
                scale=alt.Scale(domain=list(MOVEMENTS), range=list(MOVEMENTS.values())),
                title=None,
            ),
            tooltip=["movement", "month", "amount", "accounts"],
        ),
        width="stretch",
    )
    total = int(summary["change_minor"].sum())
    st.markdown(
        f"MRR {fmt.money(first['start_mrr_minor'], cur)} at the start of"
        f" {first['month']:%B %Y}, {fmt.money(now['end_mrr_minor'], cur)} now:"
        f" a change of **{fmt.money(total, cur)}**, the sum of the movements above."
    )
    table = summary.sort("month", descending=True)
    money_cols = {
        "start_mrr_minor": "Start MRR",
        "new_minor": "New",
        "expansion_minor": "Expansion",
        "reactivation_minor": "Reactivation",
        "contraction_minor": "Contraction",
        "churn_minor": "Churn",
        "change_minor": "Change",
        "end_mrr_minor": "End MRR",
    }
    for col, name in money_cols.items():
        table = common.money_column(table, col, cur, name)
    st.dataframe(
        table.with_columns(
            pl.col("month").dt.strftime("%Y-%m").alias("Month"),
            pl.col("gross_mrr_churn")
            .map_elements(_pct, return_dtype=pl.String)
            .alias("Gross churn"),
            pl.col("net_mrr_churn").map_elements(_pct, return_dtype=pl.String).alias("Net churn"),
            pl.col("nrr").map_elements(_pct, return_dtype=pl.String).alias("NRR"),
            pl.col("quick_ratio").round(2).alias("Quick ratio"),
        ).select("Month", *money_cols.values(), "Gross churn", "Net churn", "NRR", "Quick ratio"),
        hide_index=True,
        width="stretch",
        key="months",
    )

    left, right = st.columns(2)
    with left:
        st.subheader("Expected MRR at risk by signal")
        by_signal = q.mrr_at_risk_by_signal(s.con).with_columns(
            pl.col("signal").str.replace_all("_", " "),
            pl.col("expected_mrr_at_risk_minor")
            .map_elements(lambda v: fmt.major(v, cur), return_dtype=pl.Float64)
            .alias("at_risk"),
        )
        st.altair_chart(
            alt.Chart(by_signal.to_pandas())
            .mark_bar(color="#e53935")
            .encode(
                x=alt.X("at_risk:Q", title=f"Expected MRR at risk ({cur})"),
                y=alt.Y("signal:N", sort="-x", title=None),
                tooltip=["signal", "accounts", "at_risk"],
            ),
            width="stretch",
        )
        st.caption("An account with two signals counts under both.")
    with right:
        st.subheader("Payment Health over time")
        health = q.health_over_time(s.con).with_columns(
            pl.col("as_of").dt.strftime("%Y-%m-%d %H:%M:%S")
        )
        st.altair_chart(
            alt.Chart(health.to_pandas())
            .mark_bar()
            .encode(
                x=alt.X("as_of:O", title="Scoring (UTC)"),
                y=alt.Y("accounts:Q", title="Accounts"),
                color=alt.Color(
                    "payment_health:N",
                    scale=alt.Scale(
                        domain=["Healthy", "No Payment Method", "At Risk", "Failed"],
                        range=["#66bb6a", "#90a4ae", "#ffa726", "#e53935"],
                    ),
                    title=None,
                ),
            ),
            width="stretch",
        )

    st.subheader("MRR retention by start-month cohort")
    cohorts = q.cohort_retention(s.con)
    if cohorts.is_empty():
        st.caption("No account started in the window.")
    else:
        st.altair_chart(
            alt.Chart(cohorts.with_columns(pl.col("cohort").dt.strftime("%Y-%m")).to_pandas())
            .mark_rect()
            .encode(
                x=alt.X("month_index:O", title="Months since start"),
                y=alt.Y("cohort:O", title="Cohort"),
                color=alt.Color(
                    "retained:Q",
                    scale=alt.Scale(scheme="greens", domain=[0, 1.5]),
                    title="MRR retained",
                    legend=alt.Legend(format="%"),
                ),
                tooltip=[
                    "cohort",
                    "month_index",
                    "accounts",
                    alt.Tooltip("retained:Q", format=".0%"),
                ],
            )
            .properties(height=320),
            width="stretch",
        )
