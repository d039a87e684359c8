"""What every page shares: settings, the read-only connection, headers and link columns.

Each page run opens the read copy read-only and closes it at the end, so a copy published
in between is picked up by the next run and nothing holds a file a run needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl
import streamlit as st

from churn.dashboard import format as fmt
from churn.dashboard import queries as q
from churn.errors import ChurnError
from churn.settings import Settings, load_settings
from churn.warehouse import connect_read_copy, read_copy_path

#: The last line of every page (the screenshot waits for it).
FOOTER = "Read from"

__all__ = ["FOOTER", "Session", "blank", "link_columns", "money_column", "session"]


@dataclass(frozen=True)
class Session:
    settings: Settings
    con: duckdb.DuckDBPyConnection
    as_of: datetime
    currency: str  # the reporting currency


@contextmanager
def session(title: str, caption: str | None = None) -> Iterator[Session]:
    """The page's title, then its settings and connection; a page that cannot open the read
    copy (or that finds no scoring yet) says why in one line and stops."""
    st.title(title)
    try:
        settings = load_settings()
        con = connect_read_copy(settings.db)
    except ChurnError as exc:
        st.error(str(exc))
        st.info("Start it with `churn dashboard` after a `churn run` (or `make demo`).")
        st.stop()
        raise AssertionError("unreachable") from exc  # st.stop raises; for type checkers
    try:
        as_of = q.latest_as_of(con)
        if as_of is None:
            st.warning("Nothing scored yet: the first `churn run` fills this page.")
            st.stop()
        currency = q.reporting_currency(con)
        st.caption(
            (caption + " · " if caption else "")
            + f"As of the run scored {as_of:%Y-%m-%d %H:%M} UTC · amounts in {currency}"
        )
        yield Session(settings, con, as_of, currency)
        st.divider()
        st.caption(f"{FOOTER} {read_copy_path(settings.db).name}, the copy of the last run.")
    finally:
        con.close()


def money_column(frame: pl.DataFrame, column: str, currency: str, name: str) -> pl.DataFrame:
    """A display column ``name``: the minor units of ``column`` as money text."""
    values = [fmt.money(v, currency) for v in frame[column].to_list()]
    return frame.with_columns(pl.Series(name, values, dtype=pl.String))


def link_columns(frame: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """``Details`` (the account page), ``Salesforce`` and ``Stripe`` links for each row."""
    ids = frame["account_id"].to_list()
    customers = frame["stripe_customer_ids"].to_list()
    return frame.with_columns(
        pl.Series("Details", [f"account?account={a}" for a in ids], dtype=pl.String),
        pl.Series(
            "Salesforce", [fmt.salesforce_account_url(settings, a) for a in ids], dtype=pl.String
        ),
        pl.Series(
            "Stripe",
            [fmt.stripe_customer_url(settings, c[0]) if c else None for c in customers],
            dtype=pl.String,
        ),
    )


LINK_CONFIG: dict[str, Any] = {
    "Details": st.column_config.LinkColumn("Details", display_text="Open"),
    "Salesforce": st.column_config.LinkColumn("Salesforce", display_text="Account"),
    "Stripe": st.column_config.LinkColumn("Stripe", display_text="Customer"),
}


def date_text(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d}"


def blank(frame: pl.DataFrame) -> pl.DataFrame:
    """Empty text instead of "None" in a table's text columns (the grid prints nulls)."""
    return frame.with_columns(pl.col(pl.String).fill_null(""))
