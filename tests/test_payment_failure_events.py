"""payment_failure reads the invoice events it needs through ``INVOICE_EVENTS`` (the events
narrowed to the open invoices before their payloads are parsed) instead of migration 060's
``history_invoice_events`` view (which parses every invoice event's payload first). The
faster path must give the view's rows, exactly, for the same invoices and ``as_of``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn import warehouse
from churn.signals.payment_failure import INVOICE_EVENTS

T0 = datetime.fromisoformat("2026-01-01")  # naive UTC, as the warehouse stores it
INVOICES = ["in_a", "in_b", "in_c", "in_d"]


@pytest.fixture(scope="module")
def mod_con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(Path(tmp_path_factory.mktemp("events")) / "w.duckdb")
    yield connection
    connection.close()


# what an invoice event's data.object may carry: attempt_count as Stripe sends it (an
# integer, null) or as a broken payload might (a string, absent); next_payment_attempt a Unix
# time or null ("Unix timestamp" or null, Stripe's Invoice object) or absent
attempt = st.one_of(st.none(), st.integers(0, 9), st.just("3"), st.just("x"))
next_try = st.one_of(st.none(), st.integers(1_767_225_600, 1_780_000_000))
status = st.one_of(st.none(), st.sampled_from(["open", "paid", "void", "uncollectible"]))
event = st.fixed_dictionaries(
    {
        "object_type": st.sampled_from(["invoice", "invoice", "charge"]),
        "object_id": st.one_of(st.sampled_from(INVOICES), st.none()),
        "type": st.sampled_from(
            ["invoice.payment_failed", "invoice.updated", "invoice.paid", "charge.failed"]
        ),
        "minutes": st.integers(0, 60 * 24 * 60),
        "obj": st.fixed_dictionaries(
            {},
            optional={
                "attempt_count": attempt,
                "next_payment_attempt": next_try,
                "status": status,
            },
        ),
    }
)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[Any]:
    return sorted(con.execute(sql, params).fetchall(), key=repr)


@settings(max_examples=80)
@given(
    events=st.lists(event, max_size=25),
    open_invoices=st.sets(st.sampled_from(INVOICES)),
    as_of_minutes=st.integers(0, 60 * 24 * 60),
)
def test_invoice_events_for_the_open_invoices_equal_the_view(
    mod_con: duckdb.DuckDBPyConnection,
    events: list[dict[str, Any]],
    open_invoices: set[str],
    as_of_minutes: int,
) -> None:
    con = mod_con
    con.execute("DELETE FROM raw_stripe_event")
    rows = [
        [f"evt_{i}", e["type"], T0 + timedelta(minutes=e["minutes"]), e["object_type"],
         e["object_id"], json.dumps({"type": e["type"], "data": {"object": e["obj"]}}), T0]
        for i, e in enumerate(events)
    ]  # fmt: skip
    if rows:
        con.executemany(
            "INSERT INTO raw_stripe_event (id, type, created, object_type, object_id, payload,"
            " fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    params = {"as_of": T0 + timedelta(minutes=as_of_minutes), "ids": sorted(open_invoices)}
    inv = "inv AS (SELECT unnest(CAST($ids AS VARCHAR[])) AS invoice_id)"
    through_view = _rows(
        con,
        f"WITH {inv} SELECT * FROM history_invoice_events"
        " WHERE created_at <= $as_of AND invoice_id IN (SELECT invoice_id FROM inv)",
        params,
    )
    narrowed = _rows(con, f"WITH {inv} {INVOICE_EVENTS}", params)
    assert narrowed == through_view
