from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from churn.errors import MigrationError
from churn.warehouse import connection as warehouse
from churn.warehouse import memory_limited, memory_unbounded


def test_open_applies_every_migration_once(db_path: Path) -> None:
    con = warehouse.connect(db_path)
    versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()]
    assert versions == [m.version for m in warehouse.migrations()]
    con.close()
    con = warehouse.connect(db_path)  # reopening applies nothing new
    assert warehouse.migrate(con) == []
    con.close()


@pytest.mark.parametrize(
    "table",
    [
        "raw_stripe_customer",
        "raw_stripe_subscription",
        "raw_stripe_invoice",
        "raw_stripe_charge",
        "raw_stripe_refund",
        "raw_stripe_payment_method",
        "raw_stripe_price",
        "raw_stripe_product",
        "raw_stripe_event",
        "raw_sf_account",
        "sync_state",
        "quarantine",
        "run_log",
        "core_customers",
        "core_subscriptions",
        "history_subscriptions",
        "history_subscription_items",
    ],
)
def test_schema_has_the_documented_tables(con: duckdb.DuckDBPyConnection, table: str) -> None:
    assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_transaction_rolls_back_on_error(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RuntimeError), warehouse.transaction(con):
        con.execute("INSERT INTO sync_state VALUES ('s', 'c', NULL, NULL, TIMESTAMP '2024-01-01')")
        raise RuntimeError("crash mid-transaction")
    assert con.execute("SELECT count(*) FROM sync_state").fetchone() == (0,)


def test_failed_migration_leaves_previous_version(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    con = warehouse.connect(db_path)
    good = warehouse.migrations()
    bad = warehouse.Migration(999, "broken", "CREATE TABLE t999 (a INT); SELECT * FROM nowhere;")
    monkeypatch.setattr(warehouse, "migrations", lambda: [*good, bad])
    with pytest.raises(MigrationError, match="999_broken"):
        warehouse.migrate(con)
    assert con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 't999'"
    ).fetchone() == (0,)
    assert con.execute("SELECT max(version) FROM schema_migrations").fetchone() == (
        good[-1].version,
    )


def test_connect_bounds_duckdb_memory_and_threads(tmp_path: Path) -> None:
    con = warehouse.connect(tmp_path / "w.duckdb", memory_limit="512MB", threads=1)
    try:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()
        threads = con.execute("SELECT current_setting('threads')").fetchone()
        temp = con.execute("SELECT current_setting('temp_directory')").fetchone()
    finally:
        con.close()
    assert limit is not None and limit[0] in ("488.2 MiB", "512.0 MB", "488.2MiB")
    assert threads == (1,)
    assert temp is not None and temp[0].endswith("w.duckdb.tmp")


def test_a_memory_limit_that_is_not_a_size_is_a_settings_error() -> None:
    from churn.errors import ConfigError
    from churn.settings import load_settings

    with pytest.raises(ConfigError, match=r"DUCKDB_MEMORY_LIMIT|duckdb_memory_limit"):
        load_settings(env={"CHURN_RUN__DUCKDB_MEMORY_LIMIT": "lots"})


MARTS_UNKEYED = (
    "signal_events",
    "account_health",
    "account_mrr",
    "mrr_movements",
    "score_usage_gaps",
    "score_sf_accounts",
)


def _columns(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Every column of ``tables``: name, place, type, nullability and default."""
    return con.execute(
        "SELECT table_name, column_name, column_index, data_type, is_nullable, "
        "column_default FROM duckdb_columns() WHERE table_name IN ? ORDER BY 1, 3",
        [list(tables)],
    ).fetchall()


def _keyed(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Which of ``tables`` have a primary key."""
    return con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE constraint_type ="
        " 'PRIMARY KEY' AND table_name IN ?",
        [list(tables)],
    ).fetchall()


def test_the_marts_lose_their_keys_and_keep_their_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 113 on a warehouse made before it: every mart row, column, type, NOT NULL
    and default kept; no primary key left (a snapshot deletes its as_of's rows before it
    writes them, so a key cannot repeat; the fault suite counts duplicates)."""
    every = warehouse.migrations()
    monkeypatch.setattr(warehouse, "migrations", lambda: [m for m in every if m.version < 113])
    con = warehouse.connect(db_path)
    con.execute(
        "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, known_churn,"
        " reporting_currency, subscription_count, top_reasons, churn_probability) VALUES"
        " ('001A', TIMESTAMP '2026-01-01', 'Failed', 80, FALSE, 'USD', 2, '[\"a\"]', 0.25)"
    )
    con.execute(
        "INSERT INTO mrr_movements VALUES ('001A', DATE '2025-12-01', TIMESTAMP '2026-01-01',"
        " 'USD', 'expansion', 100, 250, 150)"
    )

    before = _columns(con, MARTS_UNKEYED)
    monkeypatch.setattr(warehouse, "migrations", lambda: every)
    assert warehouse.migrate(con) == [m.version for m in every if m.version >= 113]
    assert _columns(con, MARTS_UNKEYED) == before
    assert con.execute(
        "SELECT account_id, payment_health, risk_score, top_reasons::VARCHAR, churn_probability"
        " FROM account_health"
    ).fetchall() == [("001A", "Failed", 80, '["a"]', 0.25)]
    assert con.execute("SELECT amount_minor, movement FROM mrr_movements").fetchall() == [
        (150, "expansion")
    ]
    assert _keyed(con, MARTS_UNKEYED) == []
    with pytest.raises(duckdb.ConstraintException):  # the key columns stay NOT NULL
        con.execute(
            "INSERT INTO account_mrr (account_id, as_of, currency, reporting_currency)"
            " VALUES ('001A', NULL, 'usd', 'USD')"
        )
    con.close()


def test_memory_unbounded_lifts_the_limit_and_sets_it_again(tmp_path: Path) -> None:
    """The heal of an "Out of Memory" checkpoints above the limit (a checkpoint that
    cannot pin a block invalidates the database in DuckDB 2), then the limit holds again."""
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        default = con.execute("SELECT current_setting('memory_limit')").fetchall()
        with memory_limited(con, "100MB"):
            bounded = con.execute("SELECT current_setting('memory_limit')").fetchall()
            with memory_unbounded(con, "100MB"):
                inside = con.execute("SELECT current_setting('memory_limit')").fetchall()
                con.execute("CHECKPOINT")
            after = con.execute("SELECT current_setting('memory_limit')").fetchall()
        with memory_unbounded(con, None):
            pass
        unset = con.execute("SELECT current_setting('memory_limit')").fetchall()
        assert bounded == after == [("95.3 MiB",)]  # 100MB (10^6 bytes) as DuckDB shows it
        assert inside == unset == default != bounded
    finally:
        con.close()


def test_the_events_keep_their_key_and_lose_the_object_index(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 114: no index on ``raw_stripe_event.object_id`` (upkeep on every insert
    and checkpoint), the rows and the event id's key kept. The reads by object join on it,
    which DuckDB plans without the index even while it is there."""
    every = warehouse.migrations()
    monkeypatch.setattr(warehouse, "migrations", lambda: [m for m in every if m.version < 114])
    con = warehouse.connect(db_path)
    event = (
        "INSERT INTO raw_stripe_event (id, type, created, object_type, object_id, payload,"
        " fetched_at) VALUES ('evt_1', 'invoice.payment_failed', TIMESTAMP '2026-01-01',"
        " 'invoice', 'in_1', '{}', TIMESTAMP '2026-01-01')"
    )
    con.execute(event)
    by_object = (
        "SELECT e.id FROM raw_stripe_event e"
        " SEMI JOIN (SELECT 'in_1' AS invoice_id) inv ON inv.invoice_id = e.object_id"
    )
    plan = " ".join(str(r[1]) for r in con.execute("EXPLAIN " + by_object).fetchall()).lower()
    assert "index scan" not in plan and "hash join" in plan
    monkeypatch.setattr(warehouse, "migrations", lambda: every)
    assert warehouse.migrate(con) == [m.version for m in every if m.version >= 114]
    assert (
        con.execute(
            "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'raw_stripe_event'"
        ).fetchall()
        == []
    )
    assert con.execute(by_object).fetchall() == [("evt_1",)]
    with pytest.raises(duckdb.ConstraintException):  # an event lands once
        con.execute(event)


#: What migration 115 takes the primary keys from: Stripe's core and history, derived.
STRIPE_UNKEYED = (
    "core_products", "core_prices", "core_coupons", "core_customers", "core_subscriptions",
    "core_subscription_items", "core_subscription_discounts", "core_invoices", "core_charges",
    "core_invoice_payments", "core_payment_intents", "core_refunds", "core_payment_methods",
    "history_subscriptions", "history_subscription_items", "history_payment_methods",
    "history_customer_defaults",
)  # fmt: skip


def test_stripe_core_and_history_lose_their_keys_and_keep_their_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 115 on a warehouse made before it: every Stripe core and history row,
    column, type, NOT NULL and default kept; no primary key left (each rebuild chunk
    deletes its ids' rows before it inserts them; the rebuild tests count repeats)."""
    every = warehouse.migrations()
    monkeypatch.setattr(warehouse, "migrations", lambda: [m for m in every if m.version < 115])
    con = warehouse.connect(db_path)
    con.execute(
        "INSERT INTO core_invoices (invoice_id, customer_id, total, is_deleted, "
        "other_subscriptions) VALUES ('in_1', 'cus_1', 1200, FALSE, ['sub_2'])"
    )
    con.execute(
        "INSERT INTO core_subscription_discounts (subscription_id, discount_id, percent_off) "
        "VALUES ('sub_1', 'di_1', 12.5)"
    )
    con.execute(
        "INSERT INTO history_subscriptions (subscription_id, valid_from, customer_id, status,"
        " cancel_at_period_end) VALUES ('sub_1', TIMESTAMP '2026-01-01', 'cus_1', 'active',"
        " FALSE)"
    )

    before = _columns(con, STRIPE_UNKEYED)
    assert len({c[0] for c in before}) == len(STRIPE_UNKEYED)
    monkeypatch.setattr(warehouse, "migrations", lambda: every)
    assert warehouse.migrate(con) == [m.version for m in every if m.version >= 115]
    assert _columns(con, STRIPE_UNKEYED) == before
    assert con.execute(
        "SELECT invoice_id, customer_id, total, other_subscriptions FROM core_invoices"
    ).fetchall() == [("in_1", "cus_1", 1200, ["sub_2"])]
    assert con.execute(
        "SELECT subscription_id, discount_id, percent_off FROM core_subscription_discounts"
    ).fetchall() == [("sub_1", "di_1", 12.5)]
    assert con.execute(
        "SELECT subscription_id, valid_from::VARCHAR, valid_to, status FROM history_subscriptions"
    ).fetchall() == [("sub_1", "2026-01-01 00:00:00", None, "active")]
    assert _keyed(con, STRIPE_UNKEYED) == []
    with pytest.raises(duckdb.ConstraintException):  # the key columns stay NOT NULL
        con.execute("INSERT INTO core_invoices (invoice_id) VALUES (NULL)")
    with pytest.raises(duckdb.ConstraintException):
        con.execute(
            "INSERT INTO history_subscriptions (subscription_id, valid_from, customer_id,"
            " status, cancel_at_period_end) VALUES ('sub_2', NULL, 'cus_1', 'active', FALSE)"
        )
    con.close()
