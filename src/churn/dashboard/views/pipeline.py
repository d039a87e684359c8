"""Pipeline health: runs, stream freshness, API calls, push rejections, quarantine, links."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import altair as alt
import polars as pl
import streamlit as st

from churn.dashboard import common
from churn.dashboard import queries as q

with common.session("Pipeline health") as s:
    # Freshness is about now, not the scoring instant (the dashboard is no signal).
    now = datetime.now(UTC).replace(tzinfo=None)
    recent = q.runs(s.con)
    if not recent.is_empty():
        jobs = recent.filter(pl.col("command").str.starts_with("run"))
        last = (jobs if not jobs.is_empty() else recent).row(0, named=True)
        st.markdown(f"**Last `churn {last['command']}`**")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Outcome", last["status"])
        c2.metric(
            "Finished (UTC)",
            "running" if last["finished_at"] is None else f"{last['finished_at']:%b %d, %H:%M}",
        )
        c3.metric("Took", "n/a" if last["seconds"] is None else f"{last['seconds']:.0f} s")
        c4.metric("API calls", f"{last['api_calls'] or 0:,}")
        if last["error"]:
            st.error(last["error"])
    st.subheader("Last runs")
    notes = [
        " ".join(n for ns in json.loads(text).values() for n in ns) if text else ""
        for text in recent["notes"].to_list()
    ]
    st.dataframe(
        common.blank(recent.with_columns(pl.Series("notes", notes, dtype=pl.String))).select(
            pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M").alias("Started (UTC)"),
            pl.col("command").alias("Command"),
            pl.col("status").alias("Outcome"),
            pl.col("seconds").round(1).alias("Seconds"),
            pl.col("api_calls").alias("API calls"),
            pl.col("error").alias("Error"),
            pl.col("notes").alias("Needs attention"),
        ),
        hide_index=True,
        width="stretch",
        key="runs",
    )

    left, right = st.columns(2)
    with left:
        st.subheader("Freshness of every stream")
        fresh = q.freshness(s.con, now)
        st.dataframe(
            fresh.select(
                pl.col("stream").alias("Stream"),
                pl.col("updated_at").dt.strftime("%Y-%m-%d %H:%M").alias("Last moved (UTC)"),
                pl.col("cursor_ts").dt.strftime("%Y-%m-%d %H:%M").alias("Data up to (UTC)"),
                pl.col("age_hours").round(1).alias("Hours ago"),
            ),
            hide_index=True,
            width="stretch",
            key="freshness",
        )
    with right:
        st.subheader("API calls per run and step")
        calls = q.api_calls(s.con)
        if calls.is_empty():
            st.caption("No run recorded API calls.")
        else:
            st.altair_chart(
                alt.Chart(
                    calls.with_columns(pl.col("started_at").dt.strftime("%m-%d %H:%M")).to_pandas()
                )
                .mark_bar()
                .encode(
                    x=alt.X("started_at:O", title="Run started (UTC)"),
                    y=alt.Y("calls:Q", title="API calls"),
                    color=alt.Color("step:N", title=None),
                ),
                width="stretch",
            )

    st.subheader("Push rejections")
    rejected = q.push_rejections(s.con)
    if rejected.is_empty():
        st.success("Salesforce accepted every record pushed.")
    else:
        st.dataframe(
            common.blank(rejected).select(
                pl.col("logged_at").dt.strftime("%Y-%m-%d %H:%M").alias("When (UTC)"),
                pl.col("sobject").alias("Object"),
                pl.col("record_key").alias("Record"),
                pl.col("action").alias("Action"),
                pl.col("error_code").alias("Code"),
                pl.col("error_message").alias("Salesforce's message"),
            ),
            hide_index=True,
            width="stretch",
            key="rejections",
        )

    left, right = st.columns(2)
    with left:
        st.subheader("Quarantine")
        quarantined = q.quarantine_summary(s.con)
        if quarantined.is_empty():
            st.success("Nothing quarantined.")
        else:
            st.dataframe(
                quarantined.select(
                    pl.col("source").alias("Source"),
                    pl.col("stream").alias("Stream"),
                    pl.col("reason").alias("Reason"),
                    pl.col("objects").alias("Objects"),
                ),
                hide_index=True,
                width="stretch",
                key="quarantine",
            )
    with right:
        st.subheader("Customer links")
        links = q.link_summary(s.con)
        st.dataframe(
            links.rename({"method": "Linked by", "customers": "Customers"}),
            hide_index=True,
            width="stretch",
            key="links",
        )
    problems = q.link_problems(s.con)
    st.subheader(f"Unmatched and conflicting links: {problems.height}")
    if not problems.is_empty():
        st.dataframe(
            common.blank(problems).select(
                pl.col("customer_id").alias("Stripe customer"),
                pl.col("method").alias("Problem"),
                pl.col("detail").alias("Detail"),
            ),
            hide_index=True,
            width="stretch",
            key="link_problems",
        )
