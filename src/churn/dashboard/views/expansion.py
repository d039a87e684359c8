"""Expansion leads: accounts to grow, by the MRR they could add, apart from the risk list."""

from __future__ import annotations

import polars as pl
import streamlit as st

from churn.dashboard import common
from churn.dashboard import format as fmt
from churn.dashboard import queries as q

with common.session("Expansion leads", "Ranked by the MRR they could add") as s:
    leads = q.expansion_leads(s.con)
    shown = 500
    c1, c2, c3 = st.columns(3)
    c1.metric("Leads", f"{leads.height:,}")
    c2.metric(
        "MRR they could add",
        fmt.money_short(int(leads["potential_mrr_minor"].sum() or 0), s.currency),
    )
    c3.metric("All seats in use", f"{leads.filter(pl.col('lead') == 'All seats in use').height:,}")
    st.caption(
        f"Could add: {q.EXPANSION_UPLIFT:.0%} more seats (at least one) at today's price per"
        f" seat, or {q.EXPANSION_UPLIFT:.0%} of MRR for a steady payer without seats."
    )
    if leads.is_empty():
        st.info("No lead today: no account uses all its seats or grew while paying on time.")
    else:
        why = [
            w or f"Paid on time for 180 days; MRR grew {fmt.money(g, s.currency)} in three months."
            for w, g in zip(leads["why"], leads["grew_minor"], strict=True)
        ]
        table = common.link_columns(
            leads.with_columns(pl.Series("why", why)).head(shown), s.settings
        )
        if leads.height > shown:
            st.caption(f"The {shown} with the most to add of {leads.height:,}.")
        table = common.money_column(table, "potential_mrr_minor", s.currency, "Could add")
        table = common.money_column(table, "total_mrr_minor", s.currency, "MRR")
        st.dataframe(
            common.blank(
                table.with_columns(
                    pl.col("next_renewal_at").dt.strftime("%Y-%m-%d").alias("Renewal"),
                    pl.col("seats").cast(pl.String),
                )
            ).rename(
                {
                    "account_name": "Account",
                    "lead": "Lead",
                    "why": "Why",
                    "owner_name": "Owner",
                    "seats": "Seats",
                }
            ),
            column_order=[
                "Account",
                "Could add",
                "MRR",
                "Lead",
                "Seats",
                "Why",
                "Owner",
                "Renewal",
                "Details",
                "Salesforce",
                "Stripe",
            ],
            column_config={**common.LINK_CONFIG, "Why": st.column_config.TextColumn(width="large")},
            hide_index=True,
            width="stretch",
            key="leads",
        )
