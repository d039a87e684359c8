from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from churn.errors import MigrationError
from churn.warehouse import connection as warehouse


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


def test_core_loses_its_keys_and_keeps_its_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 112 on a warehouse made before it: every Stripe core row, column and
    NOT NULL kept; no primary key left (a repeated id is the rebuild's to prevent)."""
    every = warehouse.migrations()
    monkeypatch.setattr(warehouse, "migrations", lambda: [m for m in every if m.version < 112])
    con = warehouse.connect(db_path)
    con.execute(
        "INSERT INTO core_invoices (invoice_id, customer_id, total, is_deleted, "
        "other_subscriptions) VALUES ('in_1', 'cus_1', 1200, FALSE, ['sub_2'])"
    )
    con.execute(
        "INSERT INTO core_subscription_discounts (subscription_id, discount_id, percent_off) "
        "VALUES ('sub_1', 'di_1', 12.5)"
    )

    def columns() -> list[tuple[object, ...]]:
        return con.execute(
            "SELECT table_name, column_name, column_index, data_type, is_nullable, "
            "column_default FROM duckdb_columns() WHERE table_name LIKE 'core_%' ORDER BY 1, 3"
        ).fetchall()

    before = columns()
    monkeypatch.setattr(warehouse, "migrations", lambda: every)
    assert warehouse.migrate(con) == [m.version for m in every if m.version >= 112]
    assert columns() == before
    assert con.execute(
        "SELECT invoice_id, customer_id, total, other_subscriptions FROM core_invoices"
    ).fetchall() == [("in_1", "cus_1", 1200, ["sub_2"])]
    assert con.execute(
        "SELECT subscription_id, discount_id, percent_off FROM core_subscription_discounts"
    ).fetchall() == [("sub_1", "di_1", 12.5)]
    keyed = con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE constraint_type = "
        "'PRIMARY KEY' AND table_name IN ('core_customers', 'core_subscriptions', "
        "'core_subscription_items', 'core_subscription_discounts', 'core_invoices', "
        "'core_charges', 'core_refunds', 'core_payment_methods', 'core_payment_intents', "
        "'core_invoice_payments')"
    ).fetchall()
    assert keyed == []
    with pytest.raises(duckdb.ConstraintException):  # the key columns stay NOT NULL
        con.execute("INSERT INTO core_invoices (invoice_id) VALUES (NULL)")
    con.close()
