"""Each page rendered by Streamlit's AppTest on a generated world's read copy, content checked
against the warehouse: the worklist's order and filters, an account's failures, the
portfolio's movements against its MRR change, the expansion leads, the pipeline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
from dash_world import PAGES_DIR, Dash
from streamlit.testing.v1 import AppTest

from churn.dashboard import format as fmt
from churn.dashboard import queries as q
from churn.signals.money import to_decimal

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dashboard")]
TIMEOUT = 300  # generous: AppTest's timeout is a guard against a hang, not a speed check


def render(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(PAGES_DIR / f"{page}.py"), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The page's table that has ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with {column!r}"
    frame: pd.DataFrame = found[0]
    return frame


def risk_table(at: AppTest) -> pd.DataFrame:
    """The ranked list (empty when no account matches; the known churn table is apart)."""
    found = [d.value for d in at.dataframe if not d.value["known_churn"].any()]
    return found[0] if found else pd.DataFrame({"account_id": []})


def scalar(dash: Dash, sql: str, params: list[Any] | None = None) -> Any:
    con = dash.read()
    try:
        return con.execute(sql, params or []).fetchall()[0][0]
    finally:
        con.close()


def rows(dash: Dash, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = dash.read()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def parse_money(text: str, currency: str) -> Decimal:
    """'$1,234.50' or '-$3.00' back to a Decimal (the page shows amounts as text)."""
    symbol = fmt.SYMBOLS.get(currency, f"{currency} ")
    negative = text.startswith("-")
    value = Decimal(text.lstrip("-").removeprefix(symbol).replace(",", ""))
    return -value if negative else value


LATEST = "(SELECT max(as_of) FROM account_health)"


# --- worklist -------------------------------------------------------------------------


def test_worklist_first_row_has_the_most_expected_mrr_at_risk(page_env: Dash) -> None:
    at = render("worklist")
    risk = table(at, "At risk")
    assert len(risk) > 10
    top = rows(
        page_env,
        f"SELECT account_id, mrr_at_risk_minor, reporting_currency FROM account_health"
        f" WHERE as_of = {LATEST} AND NOT known_churn ORDER BY mrr_at_risk_minor DESC",
    )
    best = top[0][1]
    leaders = {a for a, m, _ in top if m == best}
    first = risk.iloc[0]
    assert first["account_id"] in leaders
    assert first["At risk"] == fmt.money(best, top[0][2])
    # Ranked all the way down, and known churn is apart.
    assert list(risk["expected_mrr_at_risk_minor"]) == sorted(
        risk["expected_mrr_at_risk_minor"], reverse=True
    )
    known = {r[0] for r in rows(page_env, f"SELECT account_id FROM account_health"
                                          f" WHERE as_of = {LATEST} AND known_churn")}  # fmt: skip
    assert known and not known & set(risk["account_id"])
    assert set(at.dataframe[-1].value["account_id"]) == known  # the table below the list


def test_worklist_links_point_at_the_configured_org_and_stripe(page_env: Dash) -> None:
    """Links are built from settings: the sandbox's stand-ins here."""
    risk = table(render("worklist"), "At risk")
    row = risk[risk["account_id"].str.startswith("001")].iloc[0]
    instance = page_env.settings.salesforce.instance_url
    assert row["Salesforce"] == f"{instance}/lightning/r/Account/{row['account_id']}/view"
    customer = row["stripe_customer_ids"][0]
    assert row["Stripe"] == f"{page_env.settings.stripe.api_base}/v1/customers/{customer}"
    assert row["Details"] == f"account?account={row['account_id']}"


FILTERS: list[tuple[str, str, str]] = [
    # (widget key, widget kind, how a row is checked against the value picked)
    ("owners", "multiselect", "owner"),
    ("signals", "multiselect", "signal"),
    ("health", "multiselect", "health"),
    ("currencies", "multiselect", "currency"),
    ("mrr_band", "selectbox", "band"),
    ("renewal", "selectbox", "renewal"),
]


def _holds(row: pd.Series, check: str, value: str, dash: Dash) -> bool:
    if check == "owner":
        return bool(row["Owner"] == value)
    if check == "signal":
        return value in list(row["signals"])
    if check == "health":
        return bool(row["Payment Health"] == value)
    if check == "currency":
        return value in list(row["currencies"])
    if check == "band":
        lo, hi = next((lo, hi) for key, lo, hi in q.MRR_BANDS if key == _band_key(value))
        mrr = to_decimal(int(row["total_mrr_minor"]), row["reporting_currency"])
        return lo <= mrr and (hi is None or mrr < hi)
    if check == "renewal":
        days = int(value.split()[0])
        renewal = row["next_renewal_at"]
        return bool(renewal is not None and renewal - row["as_of"] < pd.Timedelta(days=days))
    raise AssertionError(check)


def _band_key(label: str) -> str:
    for key, lo, hi in q.MRR_BANDS:
        if label.replace("$", "").startswith(f"{lo:,}") and (hi is None) == label.endswith("over"):
            return key
    raise AssertionError(label)


@pytest.mark.parametrize(("key", "kind", "check"), FILTERS, ids=[f[0] for f in FILTERS])
def test_each_worklist_filter_narrows_it(page_env: Dash, key: str, kind: str, check: str) -> None:
    """Every option leaves only rows that match it, a subset of the unfiltered list; at
    least one option leaves fewer rows."""
    base = render("worklist")
    everyone = set(risk_table(base)["account_id"])
    widget = base.sidebar.multiselect(key) if kind == "multiselect" else base.sidebar.selectbox(key)
    options = [o for o in widget.options if o not in ("Any", "Any time")][:4]
    assert options, f"filter {key} offers nothing to pick"
    narrowed = False
    for option in options:
        at = render("worklist")
        w = at.sidebar.multiselect(key) if kind == "multiselect" else at.sidebar.selectbox(key)
        (w.select(option) if kind == "multiselect" else w.set_value(option)).run()
        assert not at.exception, [e.value for e in at.exception]
        picked = risk_table(at)
        assert set(picked["account_id"]) <= everyone
        for _, row in picked.iterrows():
            assert _holds(row, check, option, page_env), (key, option, row["account_id"])
        narrowed = narrowed or len(picked) < len(everyone)
    assert narrowed, f"no option of {key} narrowed the worklist: {options} of {len(everyone)}"


# --- account --------------------------------------------------------------------------


def test_account_page_shows_its_failures_in_order(page_env: Dash) -> None:
    account, failed = rows(
        page_env,
        """SELECT COALESCE(l.account_id, c.customer_id) AS account, count(*) AS n
           FROM core_charges c LEFT JOIN core_account_links l USING (customer_id)
           WHERE c.status = 'failed' AND COALESCE(l.account_id, c.customer_id) IN
             (SELECT account_id FROM account_health WHERE as_of = (SELECT max(as_of)
              FROM account_health))
           GROUP BY 1 ORDER BY n DESC, account LIMIT 1""",
    )[0]
    assert failed >= 2, "the world should have an account with retries"
    at = render("account", account=account)
    assert at.selectbox("account").value == account
    want = [
        f"{t:%Y-%m-%d %H:%M}"
        for (t,) in rows(
            page_env,
            """SELECT c.created_at FROM core_charges c LEFT JOIN core_account_links l
               USING (customer_id) WHERE c.status = 'failed'
                 AND COALESCE(l.account_id, c.customer_id) = ? ORDER BY c.created_at""",
            [account],
        )
    ]
    assert list(table(at, "Charge")["When (UTC)"]) == want
    timeline = table(at, "Detail")  # newest first
    failures = timeline[timeline["What"].isin(["Payment failed", "Retry failed"])]
    assert list(reversed(list(failures["When (UTC)"]))) == want
    # Attempts are numbered within one invoice's retries; each run starts at 1.
    assert failures.iloc[-1]["Detail"].startswith("Attempt 1 declined")


def test_account_page_explains_the_score(page_env: Dash) -> None:
    account, reasons = rows(
        page_env,
        f"SELECT account_id, CAST(top_reasons AS VARCHAR[]) FROM account_health"
        f" WHERE as_of = {LATEST} AND risk_score > 0 ORDER BY risk_score DESC, account_id LIMIT 1",
    )[0]
    at = render("account", account=account)
    text = " ".join(m.value for m in at.markdown)
    assert all(reason in text for reason in reasons)
    breakdown = table(at, "Weight x score")
    assert set(breakdown["Signal"]) <= set(page_env.settings.signals.risk_weights) | {
        "cancel_at_period_end",
        "seat_expansion",
    }


def test_the_seat_panel_reads_usage_keyed_by_the_linked_stripe_customer(page_env: Dash) -> None:
    """The usage feed may key its rows by Stripe customer id (the sandbox's does); the seat
    signal maps them to the Account through the links, and the Account page's seat panel
    must show the same samples, not "No usage samples" beside a seat reason."""
    (account,) = rows(
        page_env,
        f"SELECT account_id FROM signal_events WHERE as_of = {LATEST}"
        " AND signal = 'seat_utilization' ORDER BY account_id LIMIT 1",
    )[0]
    con = page_env.read()
    try:
        keyed = con.execute(
            "SELECT count(*) FROM core_usage WHERE account_id = ?", [account]
        ).fetchall()[0]
        seats = q.account_seats(con, account)
    finally:
        con.close()
    assert keyed == (0,)  # this world keys its usage by customer, not by Account Id
    assert seats.height > 0
    assert (seats["active_seats"] > 0).any() and (seats["seats_held"] > 0).all()


# --- portfolio ------------------------------------------------------------------------


def test_portfolio_movements_sum_to_the_mrr_change(page_env: Dash) -> None:
    at = render("portfolio")
    cur = scalar(page_env, f"SELECT any_value(reporting_currency) FROM account_health"
                           f" WHERE as_of = {LATEST}")  # fmt: skip
    months = table(at, "Start MRR").iloc[::-1]  # shown newest first
    # Independently of the page: MRR now from account_health; at the window's start, each
    # account's first start in mrr_movements, or its MRR now when it never moved.
    now = scalar(
        page_env, f"SELECT sum(total_mrr_minor) FROM account_health WHERE as_of = {LATEST}"
    )
    start = scalar(
        page_env,
        f"""WITH mv AS (SELECT * FROM mrr_movements WHERE as_of = {LATEST}),
            firsts AS (SELECT account_id, arg_min(start_mrr_minor, month) AS s FROM mv
                       GROUP BY account_id)
            SELECT (SELECT COALESCE(sum(s), 0) FROM firsts)
                 + (SELECT COALESCE(sum(total_mrr_minor), 0) FROM account_health
                    WHERE as_of = {LATEST}
                      AND account_id NOT IN (SELECT account_id FROM firsts))""",
    )
    assert parse_money(months.iloc[-1]["End MRR"], cur) == to_decimal(int(now), cur)
    assert parse_money(months.iloc[0]["Start MRR"], cur) == to_decimal(int(start), cur)
    moved = Decimal(0)
    for _, m in months.iterrows():
        month = (
            parse_money(m["New"], cur) + parse_money(m["Expansion"], cur)
            + parse_money(m["Reactivation"], cur) - parse_money(m["Contraction"], cur)
            - parse_money(m["Churn"], cur)
        )  # fmt: skip
        assert month == parse_money(m["Change"], cur)
        assert parse_money(m["Start MRR"], cur) + month == parse_money(m["End MRR"], cur)
        moved += month
    assert moved == to_decimal(int(now) - int(start), cur)
    sentence = " ".join(m.value for m in at.markdown)
    assert f"a change of **{fmt.money(int(now) - int(start), cur)}**" in sentence


# --- expansion, pipeline --------------------------------------------------------------


def test_expansion_leads_are_ranked_apart_from_risk(page_env: Dash) -> None:
    leads = table(render("expansion"), "Could add")
    assert len(leads) > 0
    assert list(leads["potential_mrr_minor"]) == sorted(leads["potential_mrr_minor"], reverse=True)
    known = {r[0] for r in rows(page_env, f"SELECT account_id FROM account_health"
                                          f" WHERE as_of = {LATEST} AND known_churn")}  # fmt: skip
    assert not known & set(leads["account_id"])
    seat_leads = set(leads[leads["Lead"] == "All seats in use"]["account_id"])
    expanding = {r[0] for r in rows(page_env, f"SELECT account_id FROM signal_events"
                                              f" WHERE as_of = {LATEST} AND signal = 'seat_expansion'")}  # fmt: skip
    assert seat_leads == expanding


def test_pipeline_health_shows_runs_streams_and_links(page_env: Dash) -> None:
    at = render("pipeline")
    runs = table(at, "Outcome")
    assert "run" in set(runs["Command"]) and set(runs["Outcome"]) == {"success"}
    streams = rows(page_env, "SELECT stream FROM sync_state ORDER BY stream")
    assert sorted(table(at, "Stream")["Stream"]) == [s for (s,) in streams]
    links = table(at, "Linked by")
    total = scalar(page_env, "SELECT count(*) FROM core_account_links")
    assert int(links["Customers"].sum()) == total
