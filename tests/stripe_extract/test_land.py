"""Newer-over-older landing: any order, any batching, duplicates: the greatest version wins."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn import warehouse
from churn.pipelines.stripe.land import Version, all_pending, dumps, land, sequence_events
from churn.pipelines.stripe.streams import flatten

T0 = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


@pytest.fixture(scope="module")
def mem() -> Iterator[duckdb.DuckDBPyConnection]:
    con = warehouse.connect(":memory:")
    yield con
    con.close()


versions = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(versions=versions, data=st.data())
def test_greatest_version_wins_whatever_the_order(
    mem: duckdb.DuckDBPyConnection, versions: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    mem.execute("DELETE FROM raw_stripe_customer")
    items = [
        (
            {"id": "cus_1", "object": "customer", "name": f"v{v}", "livemode": False},
            Version("event", T0 + timedelta(seconds=ts), seq, f"evt_{i}", None),
        )
        for i, (ts, seq, v) in enumerate(versions)
    ]
    order = data.draw(st.permutations(items))
    cut = data.draw(st.integers(0, len(order)))
    for batch in (order[:cut], order[cut:], order[: cut // 2]):  # a replay too
        land(mem, "customer", batch, T0)
    stored = mem.execute("SELECT payload::VARCHAR FROM raw_stripe_customer").fetchall()
    best = max(items, key=lambda it: (it[1].ts, it[1].seq, dumps(it[0])))
    assert stored == [(dumps(best[0]),)]


def test_sequence_reads_the_listing_order_within_a_second() -> None:
    a = {"id": "evt_a", "created": 10}
    b = {"id": "evt_b", "created": 10}
    c = {"id": "evt_c", "created": 11}
    # Stripe: newest first, so b (listed before a) is the newer of the two in second 10.
    newest_first = sequence_events([c, b, a], "auto")
    assert newest_first == [(a, 1), (b, 2), (c, 1)]
    assert sequence_events([a, b, c], "auto") == newest_first  # oldest first, detected
    assert sequence_events([b, a], "auto") == [(a, 1), (b, 2)]  # one second: Stripe's order


def test_flatten_takes_embedded_payment_methods_out() -> None:
    pm = {"id": "pm_1", "object": "payment_method", "card": {"exp_year": 2030}}
    card = {"id": "card_1", "object": "card", "exp_year": 2031}
    customer = {
        "id": "cus_1",
        "object": "customer",
        "invoice_settings": {"default_payment_method": pm, "footer": None},
        "sources": {"object": "list", "data": [card]},
        "subscriptions": {"object": "list", "data": [{"id": "sub_1", "object": "subscription"}]},
        "discount": {"id": "di_1", "object": "discount", "coupon": {"id": "c"}},
    }
    flat, embedded = flatten(customer)
    assert flat == {
        "id": "cus_1",
        "object": "customer",
        "invoice_settings": {"default_payment_method": "pm_1", "footer": None},
        "discount": "di_1",
    }
    # a discount is a stream of its own now (raw_stripe_discount), taken out like a card
    assert sorted(e["id"] for e in embedded) == ["card_1", "di_1", "pm_1"]


def _stdlib_canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # past 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-5, 2.5e-7, 1e16, 1e22, 0.0001, 1234567890123456.0, -0.0, 25.0])
    | st.text(st.characters(codec=None), max_size=12),  # non-ASCII, controls, DEL, surrogates
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec=None), max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(obj=json_values)
def test_canonical_text_is_the_standard_librarys_byte_for_byte(obj: object) -> None:
    """Stored payloads are compared as text and subscription versions keyed by the text's
    hash: the fast writer (orjson) must give exactly what ``json.dumps`` gives."""
    assert dumps(obj) == _stdlib_canonical(obj)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": '\x00\x1f\x7f\b\f\n\r\t"\\/'},
        {"small": 0.00001, "tiny": 2.5e-07, "large": 1e16, "plain": 0.5},
        {"big": 2**70, "neg": -(2**64)},
        {"name": "Zoë Ångström", "line": "\u2028"},
        {"lone": "\ud800"},
        {"b": 1, "a": {"d": [], "c": {}}},
        1e-05,
    ],
)
def test_canonical_text_where_orjson_would_differ(obj: object) -> None:
    assert dumps(obj) == _stdlib_canonical(obj)


def test_nan_is_not_json_and_lands_as_null() -> None:
    """The one documented difference: NaN is not JSON (the warehouse's JSON column refuses
    the standard library's ``NaN``); Stripe never sends it."""
    assert dumps({"x": float("nan")}) == '{"x":null}'


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
        for t in ("raw_stripe_subscription", "stripe_subscription_versions", "stripe_dirty")
    }


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["list", "event"]), st.integers(0, 2)),
        min_size=1,
        max_size=6,
    ),
    stored=st.booleans(),
)
def test_new_only_landing_equals_the_general_way(
    batch: list[tuple[int, str, int]], stored: bool
) -> None:
    """A backfill's batch lands by plain inserts (``new_only``); where that is refused (an
    id stored already, or a version twice in the batch) the caller lands it again the
    general way. Either way the raw rows, the subscription versions and the dirty ids are
    what the general way alone gives."""
    from churn.pipelines.stripe.land import land_prepared, landable
    from churn.warehouse import transaction

    items = [
        landable(
            {"id": f"sub_{k}", "object": "subscription", "status": f"s{v}", "livemode": False},
            Version(source, T0 + timedelta(seconds=v), 0, f"evt_{k}_{v}", None),
        )
        for k, source, v in batch
    ]
    got = []
    for new_only in (True, False):
        con = warehouse.connect(":memory:")
        if stored:  # one id landed before, by an event
            old = {"id": "sub_0", "object": "subscription", "status": "old", "livemode": False}
            land(con, "subscription", [(old, Version("event", T0, 0, "evt_old", None))], T0)
        try:
            with transaction(con):
                land_prepared(con, "subscription", items, T0, new_only=new_only)
            refused = False
        except duckdb.ConstraintException:
            refused = True
            with transaction(con):
                land_prepared(con, "subscription", items, T0)
        got.append(_tables(con))
        con.close()
        if new_only and stored and any(k == 0 for k, _, _ in batch):
            assert refused  # a stored id is never inserted twice
    assert got[0] == got[1]


def test_landing_over_rows_all_pending_lands_the_same_and_marks_nothing_new(
    tmp_path: Path,
) -> None:
    """``all_pending`` names the raw tables whose every row is pending (a backfill's, until
    its rebuild); landing over them with ``stored_pending`` skips comparing stored payloads
    to mark them, and gives the rows and marks the full comparison gives."""
    con = warehouse.connect(tmp_path / "w.duckdb")

    def customer(name: str) -> dict[str, object]:
        return {"id": "cus_1", "object": "customer", "name": name, "livemode": False}

    land(con, "customer", [(customer("a"), Version("list", T0, 0, "", None))], T0)
    land(
        con,
        "invoice",
        [({"id": "in_1", "object": "invoice"}, Version("list", T0, 0, "", None))],
        T0,
    )
    assert all_pending(con, ["customer", "invoice", "charge"]) == {"customer", "invoice", "charge"}
    con.execute("DELETE FROM stripe_dirty WHERE stream = 'invoice'")
    assert all_pending(con, ["customer", "invoice"]) == {"customer"}
    newer = [(customer("b"), Version("event", T0 + timedelta(seconds=1), 1, "evt_1", None))]
    got = []
    for pending in (False, True):
        land(con, "customer", newer, T0, stored_pending=pending)
        got.append(con.execute(
            "SELECT r.payload->>'$.name', (SELECT list(id ORDER BY id) FROM stripe_dirty)"
            " FROM raw_stripe_customer r"
        ).fetchall())  # fmt: skip
    assert got[0] == got[1] == [("b", ["cus_1"])]
    # and where a stored row was not pending, the full comparison marks it
    land(con, "invoice", [({"id": "in_1", "object": "invoice", "paid": True},
                           Version("event", T0 + timedelta(seconds=1), 1, "evt_2", None))], T0)  # fmt: skip
    assert con.execute("SELECT id FROM stripe_dirty WHERE stream = 'invoice'").fetchall() == [
        ("in_1",)
    ]
    con.close()
