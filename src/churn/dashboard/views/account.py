"""Account: what happened, MRR and seats over time, signal history, why the score is what it is."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from churn.dashboard import common
from churn.dashboard import format as fmt
from churn.dashboard import queries as q

with common.session("Account") as s:
    wanted = st.query_params.get("account")
    accounts = q.account_ids(s.con, include=wanted)
    ids = accounts["account_id"].to_list()
    names = dict(zip(ids, accounts["account_name"].to_list(), strict=True))
    if not ids:
        st.info("No account scored yet.")
        st.stop()
    account_id = st.selectbox(
        "Account",
        ids,
        index=ids.index(wanted) if wanted in ids else 0,
        format_func=lambda a: f"{names[a]} ({a})" if names[a] != a else a,
        key="account",
    )
    st.query_params["account"] = account_id
    row = q.account_overview(s.con, account_id).to_dicts()[0]
    cur = s.currency

    links = [f"**{row['account_name']}**", f"owner {row['owner_name'] or 'none'}"]
    if url := fmt.salesforce_account_url(s.settings, account_id):
        links.append(f"[Salesforce Account]({url})")
    for customer in q.account_customers(s.con, account_id):
        links.append(f"[Stripe {customer}]({fmt.stripe_customer_url(s.settings, customer)})")
    st.markdown(" · ".join(links))

    c1, c2, c3, c4, c5 = st.columns(5)
    c1.metric("MRR", fmt.money(row["total_mrr_minor"], cur))
    c2.metric("Expected MRR at risk", fmt.money(row["expected_mrr_at_risk_minor"], cur))
    c3.metric("Payment Health", row["payment_health"])
    if row["churn_probability"] is not None:
        c4.metric(
            "Churn probability",
            f"{row['churn_probability']:.0%}",
            help=f"Model {row['model_version']}",
        )
    else:
        c4.metric("Risk score", f"{row['risk_score']}/100")
    if row["known_churn"]:
        c5.metric("Cancels on", common.date_text(row["churn_effective_at"]))
    else:
        c5.metric("Renews", common.date_text(row["next_renewal_at"]) or "n/a")

    st.subheader("Why the score is what it is")
    reasons = row["top_reasons"] or []
    if reasons:
        st.markdown("\n".join(f"- {r}" for r in reasons))
    else:
        st.markdown("No risk signal fires for this account.")
    breakdown = q.score_breakdown(s.con, account_id, dict(s.settings.signals.risk_weights))
    if not breakdown.is_empty():
        st.caption(
            "Risk score = 100 x (1 - product of (1 - weight x score)) over the risk signals;"
            " known churn and expansion are not in it."
        )
        st.dataframe(
            breakdown.select(
                pl.col("signal").alias("Signal"),
                pl.col("score").round(2).alias("Score"),
                pl.col("weight").alias("Weight"),
                pl.col("contribution").round(2).alias("Weight x score"),
                pl.col("severity").alias("Severity"),
                pl.col("reason").alias("Reason"),
            ),
            hide_index=True,
            width="stretch",
            key="breakdown",
        )

    st.subheader("Timeline")
    timeline = q.account_timeline(s.con, account_id)
    if timeline.is_empty():
        st.caption("Nothing recorded.")
    else:
        amounts = [
            "" if a is None else fmt.money(a, c or cur)
            for a, c in zip(timeline["amount_minor"], timeline["currency"], strict=True)
        ]
        st.dataframe(
            timeline.with_columns(pl.Series("Amount", amounts))
            .sort("happened_at", descending=True)
            .select(
                pl.col("happened_at").dt.strftime("%Y-%m-%d %H:%M").alias("When (UTC)"),
                pl.col("kind").alias("What"),
                pl.col("what").alias("Detail"),
                "Amount",
            ),
            hide_index=True,
            width="stretch",
            key="timeline",
        )
    failures = q.failed_payments(s.con, account_id)
    st.subheader(f"Failed payments: {failures.height}")
    if not failures.is_empty():
        st.dataframe(
            failures.with_columns(
                pl.Series(
                    "Amount",
                    [
                        fmt.money(a, c)
                        for a, c in zip(failures["amount_minor"], failures["currency"], strict=True)
                    ],
                )
            ).select(
                pl.col("happened_at").dt.strftime("%Y-%m-%d %H:%M").alias("When (UTC)"),
                pl.col("charge_id").alias("Charge"),
                "Amount",
                pl.col("why").alias("Why"),
            ),
            hide_index=True,
            width="stretch",
            key="failures",
        )

    left, right = st.columns(2)
    with left:
        st.subheader("MRR by month")
        mrr = q.account_mrr_history(s.con, account_id)
        if mrr.is_empty():
            st.caption("No MRR movement in the last twelve months.")
        else:
            # Each month's MRR from its start, carried on to the scoring date.
            points = mrr.select(
                pl.col("month").cast(pl.Datetime("us")).alias("month"), "end_mrr_minor"
            )
            points = pl.concat(
                [
                    points,
                    pl.DataFrame(
                        {"month": [s.as_of], "end_mrr_minor": [points["end_mrr_minor"][-1]]},
                        schema=points.schema,
                    ),
                ]
            )
            chart = points.select(
                pl.col("month"),
                pl.col("end_mrr_minor")
                .map_elements(lambda v: fmt.major(v, cur), return_dtype=pl.Float64)
                .alias("MRR"),
            )
            st.altair_chart(
                alt.Chart(chart.to_pandas())
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("month:T", title=None, axis=alt.Axis(format="%b %Y")),
                    y=alt.Y("MRR:Q", title=f"MRR ({cur})"),
                ),
                width="stretch",
            )
    with right:
        st.subheader("Seat utilization")
        seats = q.account_seats(s.con, account_id)
        if seats.is_empty():
            st.caption("No usage samples in the last 120 days.")
        else:
            long = seats.unpivot(
                index="day", on=["active_seats", "seats_held"], variable_name="series"
            ).with_columns(
                pl.col("series").replace({"active_seats": "Active", "seats_held": "Purchased"})
            )
            st.altair_chart(
                alt.Chart(long.to_pandas())
                .mark_line()
                .encode(
                    x=alt.X("day:T", title=None),
                    y=alt.Y("value:Q", title="Seats"),
                    color=alt.Color("series:N", title=None),
                ),
                width="stretch",
            )

    st.subheader("Signal history")
    history = q.account_signal_history(s.con, account_id)
    if history.is_empty():
        st.caption("No signal has fired.")
    else:
        st.dataframe(
            history.select(
                pl.col("signal").alias("Signal"),
                pl.when(pl.col("open"))
                .then(pl.lit("open"))
                .otherwise(pl.lit("resolved"))
                .alias("State"),
                pl.col("first_seen").dt.strftime("%Y-%m-%d").alias("First seen"),
                pl.col("last_seen").dt.strftime("%Y-%m-%d").alias("Last seen"),
                pl.col("severity").alias("Severity"),
                pl.col("reason").alias("Reason"),
            ),
            hide_index=True,
            width="stretch",
            key="signals",
        )
