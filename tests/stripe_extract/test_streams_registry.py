"""Driven by the stream registry: every declared Stripe stream has its raw table, its
core tables column for column, its place in the stand-in, and lands by backfill and by
event. Parametrized over ``STREAMS``, so a new stream is checked without editing this
file, and a forgotten entry fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import apply_events, extract_stripe
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.normalise import normalise
from churn.pipelines.stripe.streams import CORE_TABLES, OBJECT_TABLES, STREAMS, Stream
from churn.sandbox.stripe.server import ID_PREFIXES, RESOURCES, StripeWorld, stripe_server
from churn.sandbox.world import generate_world, write_world
from churn.settings import load_settings

BY_STREAM = pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
#: Core tables no Stripe stream fills (Salesforce, links, usage).
NOT_STRIPE = {
    "core_accounts",
    "core_users",
    "core_opportunities",
    "core_contacts",
    "core_account_contact_roles",
    "core_currency_rates",
    "core_account_links",
    "core_usage",
    "core_usage_history",
    "core_dated_conversion_rates",
    "core_currency_rate_versions",
}


@pytest.fixture(scope="module")
def fresh() -> Iterator[duckdb.DuckDBPyConnection]:
    con = warehouse.connect(":memory:")
    yield con
    con.close()


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


@BY_STREAM
def test_every_stream_has_its_raw_table(fresh: duckdb.DuckDBPyConnection, stream: Stream) -> None:
    assert _columns(fresh, stream.table) == _columns(fresh, "raw_stripe_customer")
    # Landing upserts by id (ON CONFLICT (id)): the table needs a unique key on it.
    keyed = fresh.execute(
        "SELECT count(*) FROM duckdb_indexes() WHERE table_name = ? AND is_unique"
        " AND expressions = '[id]'",
        [stream.table],
    ).fetchone()
    primary = fresh.execute(
        "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ?"
        " AND constraint_type = 'PRIMARY KEY' AND constraint_column_names = ['id']",
        [stream.table],
    ).fetchone()
    assert (keyed and keyed[0]) or (primary and primary[0]), f"{stream.table} has no unique id"


@pytest.mark.parametrize("pair", CORE_TABLES, ids=lambda p: p[1].name)
def test_a_core_table_is_declared_column_for_column(
    fresh: duckdb.DuckDBPyConnection, pair: Any
) -> None:
    _, core = pair
    declared = [name for name, _ in core.columns]
    assert len(declared) == len(set(declared))
    assert set(declared) == set(_columns(fresh, core.name)), "no column left NULL, none unknown"
    assert core.key in declared


def test_every_stripe_core_table_has_a_declaration(fresh: duckdb.DuckDBPyConnection) -> None:
    tables = {
        r[0]
        for r in fresh.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'core_%'"
        ).fetchall()
    }
    assert tables - NOT_STRIPE == {core.name for _, core in CORE_TABLES}


def test_every_raw_stripe_table_is_a_declared_stream(fresh: duckdb.DuckDBPyConnection) -> None:
    tables = {
        r[0]
        for r in fresh.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_name LIKE 'raw_stripe_%' AND table_name <> 'raw_stripe_event'"
        ).fetchall()
    }
    assert tables == {s.table for s in STREAMS}


def test_id_prefixes_do_not_overlap() -> None:
    prefixes = [s.id_prefix for s in STREAMS if s.id_prefix]
    assert not [a for a in prefixes for b in prefixes if a != b and b.startswith(a)]


@BY_STREAM
def test_every_object_name_of_a_stream_maps_to_its_table(stream: Stream) -> None:
    for name in (stream.name, *stream.aliases):
        assert OBJECT_TABLES[name] == stream.name


@BY_STREAM
def test_the_stand_in_serves_every_stream(stream: Stream) -> None:
    assert RESOURCES[stream.served_as] == stream.name
    if stream.id_prefix:
        assert ID_PREFIXES[stream.id_prefix] == stream.name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    built = generate_world(40, seed=3)
    folder = tmp_path_factory.mktemp("registry-world")
    write_world(built, folder, seed=3)
    return built, folder


@pytest.fixture(scope="module")
def backfilled(
    world: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[duckdb.DuckDBPyConnection]:
    _, folder = world
    db = tmp_path_factory.mktemp("registry-db") / "w.duckdb"
    with stripe_server(folder) as srv:
        settings = load_settings(env={**srv.settings_env(), "CHURN_DB": str(db)})
        con = warehouse.connect(db)
        extract_stripe(settings, con, progress=False)
    yield con
    con.close()


#: Core tables a current-shape world cannot fill yet, each a known, tracked gap (none now:
#: current-shape discounts are ids, expanded in the subscription listing).
GAPS: dict[str, str] = {}
CORE_CASES = [
    pytest.param(s, c, id=c.name,
                 marks=[pytest.mark.xfail(strict=True, reason=GAPS[c.name])] if c.name in GAPS else [])
    for s, c in CORE_TABLES
]  # fmt: skip


@pytest.mark.slow
@BY_STREAM
def test_every_stream_lands_by_backfill(
    world: tuple[Any, Path], backfilled: duckdb.DuckDBPyConnection, stream: Stream
) -> None:
    built, _ = world
    assert built.stripe.get(stream.name), f"the world generates no {stream.name}"
    raw = backfilled.execute(f"SELECT count(*) FROM {stream.table}").fetchone()
    assert raw is not None and raw[0] > 0


@pytest.mark.slow
@pytest.mark.parametrize(("stream", "core"), CORE_CASES)
def test_every_core_table_is_filled_by_a_backfill(
    backfilled: duckdb.DuckDBPyConnection, stream: Stream, core: Any
) -> None:
    rows = backfilled.execute(f"SELECT count(*) FROM {core.name}").fetchone()
    assert rows is not None and rows[0] > 0, core.name


@pytest.mark.slow
@BY_STREAM
def test_every_stream_lands_by_event_and_reaches_its_core_tables(
    world: tuple[Any, Path], tmp_path: Path, stream: Stream
) -> None:
    _, folder = world
    served = StripeWorld(folder)
    objects = [json.loads(o) for o in served.tables[stream.name].raw.values()]
    # One that names discounts where any does: since basil they are ids, and each arrives
    # in its own event (customer.discount.created) before its subscription's core row.
    payload = next((o for o in objects if o.get("discounts")), objects[0])
    discounts = [
        {
            "id": f"evt_registry_discount_{n}",
            "object": "event",
            "type": "customer.discount.created",
            "created": int(payload.get("created") or 1_700_000_000),
            "api_version": "2025-09-30.clover",
            "livemode": False,
            "data": {"object": served.tables["discount"].get(d)},
        }
        for n, d in enumerate(payload.get("discounts") or [])
        if isinstance(d, str) and stream.name != "discount"
    ]
    event = {
        "id": f"evt_registry_{stream.name}",
        "object": "event",
        "type": f"{stream.name}.updated",
        "created": int(payload.get("created") or 1_700_000_000) + 1,
        "api_version": "2025-09-30.clover",
        "livemode": False,
        "data": {"object": payload},
    }
    con = warehouse.connect(tmp_path / "e.duckdb")
    try:
        with warehouse.transaction(con):
            apply_events(con, [*((d, 1) for d in discounts), (event, 1)], "test")
        with warehouse.transaction(con):
            normalise(con)
            build_history(con)
        raw = con.execute(f"SELECT id FROM {stream.table}").fetchall()
        assert raw == [(payload["id"],)]
        for core in stream.core:
            if core.name in GAPS:
                continue
            keys = con.execute(f"SELECT DISTINCT {core.key} FROM {core.name}").fetchall()
            assert keys == [(payload["id"],)], core.name
    finally:
        con.close()
