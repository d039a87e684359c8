"""Worklist (the landing page): who needs a call today, why, and how much is at stake."""

from __future__ import annotations

import dataclasses

import polars as pl
import streamlit as st

from churn.dashboard import common
from churn.dashboard import format as fmt
from churn.dashboard import queries as q
from churn.signals.money import exponent


def _risk_text(row: dict[str, object]) -> str:
    p = row["churn_probability"]
    if isinstance(p, float):
        return f"{p:.0%} churn"
    return f"{row['risk_score']}/100"


def _table(frame: pl.DataFrame, s: common.Session) -> pl.DataFrame:
    rows = frame.to_dicts()
    frame = common.link_columns(frame, s.settings)
    frame = common.money_column(frame, "expected_mrr_at_risk_minor", s.currency, "At risk")
    frame = common.money_column(frame, "total_mrr_minor", s.currency, "MRR")
    return frame.with_columns(
        pl.Series("Risk", [_risk_text(r) for r in rows], dtype=pl.String),
        pl.Series("Why", [" ".join(r["top_reasons"] or []) for r in rows], dtype=pl.String),
        pl.Series("Renewal", [common.date_text(r["next_renewal_at"]) for r in rows]),
        pl.Series("Ends", [common.date_text(r["churn_effective_at"]) for r in rows]),
    ).rename(
        {
            "account_name": "Account",
            "payment_health": "Payment Health",
            "owner_name": "Owner",
            "open_tasks": "Open Tasks",
            "task_stage": "Task stage",
        }
    )


SHOWN = 1000  # rows in each table; the figures above count them all
COLUMNS = [
    "Account",
    "Details",
    "At risk",
    "MRR",
    "Payment Health",
    "Risk",
    "Why",
    "Owner",
    "Renewal",
    "Open Tasks",
    "Task stage",
    "Salesforce",
    "Stripe",
]
KNOWN_COLUMNS = [
    "Account",
    "Details",
    "MRR",
    "Ends",
    "Why",
    "Owner",
    "Open Tasks",
    "Salesforce",
    "Stripe",
]


with common.session("Worklist", "Accounts ranked by expected MRR at risk") as s:
    options = q.filter_options(s.con)
    owners = dict(zip(options["owners"]["owner_name"], options["owners"]["owner_id"], strict=True))
    with st.sidebar:
        st.header("Filters")
        picked_owners = st.multiselect("Owner", sorted(owners), key="owners")
        picked_signals = st.multiselect(
            "Signal", options["signals"]["signal"].to_list(), key="signals"
        )
        picked_health = st.multiselect(
            "Payment Health", options["payment_health"]["payment_health"].to_list(), key="health"
        )
        bands = {
            f"{fmt.money_short(lo * 10 ** exponent(s.currency), s.currency)}"
            + (
                f" to {fmt.money_short(hi * 10 ** exponent(s.currency), s.currency)}"
                if hi is not None
                else " and over"
            ): key
            for key, lo, hi in q.MRR_BANDS
        }
        band = st.selectbox("MRR", ["Any", *bands], key="mrr_band")
        picked_currencies = st.multiselect(
            "Billing currency", options["currencies"]["currency"].to_list(), key="currencies"
        )
        window = st.selectbox(
            "Renewal within", ["Any time", "30 days", "60 days", "90 days"], key="renewal"
        )
    filters = q.WorklistFilters(
        owners=tuple(owners[o] for o in picked_owners),
        signals=tuple(picked_signals),
        payment_health=tuple(picked_health),
        mrr_band=None if band == "Any" else bands[band],
        currencies=tuple(picked_currencies),
        renewal_within_days=None if window == "Any time" else int(window.split()[0]),
    )
    known_filters = dataclasses.replace(filters, known_churn=True)
    risk = q.worklist(s.con, filters, limit=SHOWN)
    known = q.worklist(s.con, known_filters, limit=SHOWN)
    totals = q.worklist_totals(s.con, filters)
    known_totals = q.worklist_totals(s.con, known_filters)

    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Accounts to call", f"{totals['accounts']:,}")
    c2.metric(
        "Expected MRR at risk", fmt.money_short(totals["expected_mrr_at_risk_minor"], s.currency)
    )
    c3.metric("Payment failed", f"{totals['failed']:,}")
    c4.metric(
        "Known churn MRR",
        fmt.money_short(known_totals["total_mrr_minor"], s.currency),
        help="Scheduled cancellations, shown apart below.",
    )
    if risk.is_empty():
        st.info("No account matches these filters.")
    else:
        if totals["accounts"] > risk.height:
            st.caption(f"The {risk.height:,} with the most at risk of {totals['accounts']:,}.")
        st.dataframe(
            common.blank(_table(risk, s)),
            column_order=COLUMNS,
            column_config={**common.LINK_CONFIG, "Why": st.column_config.TextColumn(width="large")},
            hide_index=True,
            width="stretch",
            key="worklist",
        )
    st.subheader(f"Known churn: {known_totals['accounts']:,} scheduled cancellations")
    if known.is_empty():
        st.caption("None.")
    else:
        st.dataframe(
            common.blank(_table(known, s)),
            column_order=KNOWN_COLUMNS,
            column_config=common.LINK_CONFIG,
            hide_index=True,
            width="stretch",
            key="known_churn",
        )
