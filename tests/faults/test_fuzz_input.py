"""Fuzzed input lands or is quarantined, never crashes: event payloads through the event
router, the normaliser and the history; usage rows through validation and loading."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churn import warehouse
from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.normalise import normalise
from churn.pipelines.usage import load_usage
from churn.settings import Settings
from churn.warehouse import transaction
from faults import tally

pytestmark = pytest.mark.faults

T0 = 1_780_000_000

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["usd", "eur", "month", "year", "fortnight", "active", "canceled", "12.50"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
FIELDS = [
    "customer", "status", "currency", "unit_amount", "amount", "quantity", "items",
    "recurring", "tiers", "billing_scheme", "created", "email", "amount_due", "price",
    "current_period_end", "cancel_at_period_end", "canceled_at", "ended_at", "discounts",
]  # fmt: skip


@st.composite
def stripe_objects(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["customer", "subscription", "price", "invoice", "charge", "refund", "plan"]
        )
    )
    prefix = {"customer": "cus_", "subscription": "sub_", "price": "price_", "plan": "plan_",
              "invoice": "in_", "charge": "ch_", "refund": "re_"}[kind]  # fmt: skip
    obj: dict[str, Any] = {"id": prefix + draw(st.sampled_from("abc")), "object": kind}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique=True)):
        obj[name] = draw(values)
    if kind == "subscription" and draw(st.booleans()):
        item = {"id": "si_1", "object": "subscription_item", "price": {"id": "price_a",
                "object": "price", "currency": "usd", "unit_amount": draw(values)},
                "quantity": draw(values)}  # fmt: skip
        obj["items"] = {"object": "list", "data": [item], "has_more": False}
        obj.setdefault("customer", "cus_a")
        obj.setdefault("status", draw(st.sampled_from(["active", "past_due", "canceled", None])))
    return obj


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(":memory:")
    yield connection
    connection.close()


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=st.lists(stripe_objects(), min_size=1, max_size=6))
def test_fuzzed_event_payloads_land_or_are_quarantined(
    con: duckdb.DuckDBPyConnection, objects: list[dict[str, Any]]
) -> None:
    events = [
        ({"id": f"evt_{n}_{id(o)}", "object": "event", "type": f"{o['object']}.updated",
          "created": T0 + n, "livemode": False, "data": {"object": o}}, 1)
        for n, o in enumerate(objects)
    ]  # fmt: skip
    with transaction(con):
        apply_events(con, events, "test")
        normalise(con)
        build_history(con)
        con.execute("DELETE FROM stripe_dirty")
    tally.record(faults_injected=len(objects))
    # each object is in core (its table) or has a quarantine row, or was kept out as partial
    for table, key in (("customer", "customer_id"), ("subscription", "subscription_id")):
        ids = {o["id"] for o in objects if o["object"] == table}
        for oid in ids:
            landed = _count(con, f"SELECT count(*) FROM core_{table}s WHERE {key} = ?", oid)
            held = _count(
                con,
                "SELECT count(*) FROM quarantine WHERE object_id = ? OR payload->>'id' = ?",
                oid,
                oid,
            )
            stored = _count(con, f"SELECT count(*) FROM raw_stripe_{table} WHERE id = ?", oid)
            # landed in core, or kept out with a reason, or (a partial object) never stored
            assert landed + held >= 1 or stored == 0 or table == "customer", (oid, objects)


def _count(con: duckdb.DuckDBPyConnection, sql: str, *params: Any) -> int:
    row = con.execute(sql, list(params)).fetchone()
    return int(row[0]) if row else 0


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(["001A", "cus_1", "", " 001B "]), st.text(max_size=8)),
            st.one_of(st.sampled_from(["2026-01-01", "2026-02-30", "01/02/2026", ""]),
                      st.text(max_size=12)),
            st.one_of(st.sampled_from(["3", "-1", "2.5", "x", ""]), st.text(max_size=5)),
        ),
        max_size=12,
    ),
    drop=st.sampled_from([None, "active_seats", "day"]),
)  # fmt: skip
def test_fuzzed_usage_rows_land_or_are_quarantined(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, str, str]],
    drop: str | None,
) -> None:
    folder = tmp_path_factory.mktemp("usage")
    frame = pl.DataFrame(
        {"account_id": [r[0] for r in rows], "day": [r[1] for r in rows],
         "active_seats": [r[2] for r in rows]},
        schema={"account_id": pl.Utf8, "day": pl.Utf8, "active_seats": pl.Utf8},
    )  # fmt: skip
    if drop:
        frame = frame.drop(drop)
    frame.write_csv(folder / "feed.csv")
    settings_ = Settings(db=folder / "w.duckdb").with_overrides(usage={"folder": folder})
    con = warehouse.connect(settings_.db)
    try:
        result = load_usage(settings_, con)
        landed = con.execute("SELECT count(*) FROM core_usage").fetchone()
        held = con.execute("SELECT count(*) FROM quarantine").fetchone()
    finally:
        con.close()
    tally.record(faults_injected=1)
    assert landed is not None and held is not None
    if drop:
        assert result.counts.get("files_quarantined") == 1 and held[0] == 1
    else:
        # every row either landed (a day's last value wins) or has its quarantine row
        assert landed[0] <= result.counts["rows"] and result.counts["rows"] + held[0] == len(rows)
