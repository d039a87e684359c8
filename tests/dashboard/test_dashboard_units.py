"""Fast checks of the dashboard's parts: money text, record links from settings, the read
copy (published atomically, refused over a live log, made by every run), and the worklist
on warehouses with and without the model's columns."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from churn import warehouse
from churn.cli.dashboard import ensure_read_copy
from churn.dashboard import format as fmt
from churn.dashboard import queries as q
from churn.errors import WarehouseError
from churn.job.run import run_job
from churn.settings import load_settings

AS_OF = datetime(2026, 11, 30, 6, 0)  # noqa: DTZ001 (naive UTC, the warehouse convention)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (123456, "usd", "$1,234.56"),
        (-300, "USD", "-$3.00"),
        (123456, "JPY", "¥123,456"),  # zero-decimal
        (1234567, "KWD", "KWD 1,234.567"),  # three decimals
        (5, "EUR", "€0.05"),
        (None, "USD", "n/a"),
    ],
)
def test_money_uses_the_currency_symbol_and_decimals(
    minor: int | None, currency: str, text: str
) -> None:
    assert fmt.money(minor, currency) == text


def test_money_short_rounds_half_up_to_whole_units() -> None:
    assert fmt.money_short(123450, "USD") == "$1,235"
    assert fmt.money_short(-123449, "USD") == "-$1,234"


def test_links_follow_settings() -> None:
    org = load_settings(env={"SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com"})
    assert (
        fmt.salesforce_account_url(org, "001A")
        == "https://acme.my.salesforce.com/lightning/r/Account/001A/view"
    )
    assert fmt.salesforce_account_url(org, "cus_1") is None  # only a Stripe customer
    assert fmt.salesforce_account_url(load_settings(env={}), "001A") is None  # no org
    test_key = load_settings(env={"STRIPE_API_KEY": "sk_test_x"})
    assert fmt.stripe_customer_url(test_key, "cus_1") == (
        "https://dashboard.stripe.com/test/customers/cus_1"
    )
    live = load_settings(env={"STRIPE_API_KEY": "sk_live_x"})
    assert fmt.stripe_customer_url(live, "cus_1") == "https://dashboard.stripe.com/customers/cus_1"
    standin = load_settings(env={"STRIPE_API_BASE": "http://127.0.0.1:4242"})
    assert fmt.stripe_customer_url(standin, "cus_1") == "http://127.0.0.1:4242/v1/customers/cus_1"
    own = load_settings(env={"STRIPE_DASHBOARD_URL": "https://stripe.example/"})
    assert fmt.stripe_customer_url(own, "cus_1") == "https://stripe.example/customers/cus_1"


# --- the read copy --------------------------------------------------------------------


def _count(con: object, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])  # type: ignore[attr-defined]


def test_read_copy_replaces_atomically_and_open_readers_keep_theirs(tmp_path: Path) -> None:
    """A reader opened before a publish keeps its version; one opened after, in the same
    process (as Streamlit sessions are), sees the new one."""
    db = tmp_path / "churn.duckdb"
    con = warehouse.connect(db)
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    assert warehouse.publish_read_copy(db) == tmp_path / "churn.read.duckdb"
    old_reader = warehouse.connect_read_copy(db)
    con = warehouse.connect(db)
    con.execute("INSERT INTO t VALUES (2)")
    con.close()
    warehouse.publish_read_copy(db)
    new_reader = warehouse.connect_read_copy(db)
    try:
        assert _count(old_reader, "t") == 1  # its file, unlinked, still whole
        assert _count(new_reader, "t") == 2
    finally:
        old_reader.close()
        new_reader.close()
    # nothing left of the publish but the version superseded, kept as the spare the
    # next one is written over (tests/test_read_copy_spare.py)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [
        ".churn.read.spare.duckdb"
    ]
    warehouse.publish_read_copy(db)
    versions = sorted(p.name for p in tmp_path.glob("churn.read.v*.duckdb"))
    # Only the one the link names: a reader holding an older one reads its unlinked file
    # (old_reader above), one that resolved it just before the swap resolves again.
    assert len(versions) == 1
    assert (tmp_path / "churn.read.duckdb").resolve().name == versions[-1]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_a_publish_leaves_no_superseded_version_nor_a_killed_publishers_files(
    tmp_path: Path,
) -> None:
    """Bench runs left an older version beside the read copy (290 MB at 10,000 accounts)
    and a publisher killed part-way leaves its half-written copy, its link, or a version
    it never linked: the next publish removes them once their process is gone; a live
    process's files are left alone."""
    db = tmp_path / "churn.duckdb"
    con = warehouse.connect(db)
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    warehouse.publish_read_copy(db)
    held = warehouse.connect_read_copy(db)  # a reader holding the version a publish supersedes
    dead, live = _dead_pid(), os.getppid()
    killed = [
        tmp_path / f".churn.read.v20260101T000000000000-{dead}.duckdb.tmp",
        tmp_path / f".churn.read.duckdb.{dead}.link",
        tmp_path / f"churn.read.v20260101T000000000001-{dead}.duckdb",  # copied, never linked
    ]
    alive = tmp_path / f".churn.read.v20260101T000000000002-{live}.duckdb.tmp"
    for path in (*killed, alive):
        path.write_bytes(b"partial")
    try:
        warehouse.publish_read_copy(db)
        assert _count(held, "t") == 1  # still reading its unlinked version
    finally:
        held.close()
    assert [p for p in killed if p.exists()] == []
    assert alive.exists()  # its publisher may still be writing it
    versions = sorted(p.name for p in tmp_path.glob("churn.read.v*.duckdb"))
    assert versions == [(tmp_path / "churn.read.duckdb").resolve().name]


def test_a_reader_whose_version_is_removed_before_it_opens_it_resolves_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader resolves the link, a publish swaps it and removes that version, then the
    reader opens it: it resolves the link again and opens the new version."""
    import duckdb

    db = tmp_path / "churn.duckdb"
    con = warehouse.connect(db)
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    warehouse.publish_read_copy(db)
    con = warehouse.connect(db)
    con.execute("INSERT INTO t VALUES (2)")
    con.close()
    real = duckdb.connect
    opened: list[str] = []

    def publish_first(path: str, **kwargs: object) -> duckdb.DuckDBPyConnection:
        if not opened:
            warehouse.publish_read_copy(db)  # swaps the link, removes the resolved version
        opened.append(path)
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(duckdb, "connect", publish_first)
    reader = warehouse.connect_read_copy(db)
    try:
        assert _count(reader, "t") == 2
        assert len(opened) == 2 and opened[0] != opened[1]
    finally:
        reader.close()


def test_read_copy_is_refused_while_the_writer_has_a_log(tmp_path: Path) -> None:
    db = tmp_path / "churn.duckdb"
    con = warehouse.connect(db)
    try:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
        if not db.with_name(db.name + ".wal").exists():
            pytest.skip("DuckDB checkpointed at once; no log to refuse")
        with pytest.raises(WarehouseError, match="write-ahead log"):
            warehouse.publish_read_copy(db)
    finally:
        con.close()


def test_no_read_copy_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match="no read copy"):
        warehouse.connect_read_copy(tmp_path / "churn.duckdb")


def test_every_run_publishes_the_read_copy(tmp_path: Path) -> None:
    settings = load_settings(env={"CHURN_DB": str(tmp_path / "churn.duckdb")})
    result = run_job(settings, steps=())
    con = warehouse.connect_read_copy(settings.db)
    try:
        ids = [r[0] for r in con.execute("SELECT run_id FROM run_log").fetchall()]
    finally:
        con.close()
    assert ids == [result.run_id]  # the copy holds the run's own finished row


def test_churn_dashboard_publishes_a_first_copy_of_an_older_warehouse(tmp_path: Path) -> None:
    settings = load_settings(env={"CHURN_DB": str(tmp_path / "churn.duckdb")})
    with pytest.raises(WarehouseError, match="no warehouse"):
        ensure_read_copy(settings)
    warehouse.connect(settings.db).close()
    assert ensure_read_copy(settings).startswith("published")
    assert ensure_read_copy(settings).startswith("reading")


# --- the worklist, with and without the model's columns --------------------------------


def _health(con: object, rows: list[tuple[str, str, int, bool, int, int]]) -> None:
    for account, health, risk, known, mrr, at_risk in rows:
        con.execute(  # type: ignore[attr-defined]
            "INSERT INTO account_health (account_id, as_of, payment_health, risk_score,"
            " known_churn, reporting_currency, total_mrr_minor, mrr_at_risk_minor,"
            " subscription_count, top_reasons, stripe_customer_ids)"
            " VALUES (?, ?, ?, ?, ?, 'USD', ?, ?, 1, '[\"Why.\"]', '[]')",
            [account, AS_OF, health, risk, known, mrr, at_risk],
        )


def test_worklist_reads_an_older_warehouse_and_prefers_expected_mrr_at_risk(
    tmp_path: Path,
) -> None:
    """Without migration 085's columns the rule-based MRR at risk ranks; with them the
    expected MRR at risk (p x MRR) does, falling back per row where it is NULL."""
    con = warehouse.connect(tmp_path / "churn.duckdb")
    try:
        # A warehouse from before migration 085: the model's columns are not there yet.
        for column in ("churn_probability", "expected_mrr_at_risk_minor", "model_version"):
            con.execute(f"ALTER TABLE account_health DROP COLUMN {column}")
        _health(
            con,
            [
                ("001A", "Healthy", 60, False, 10_000, 6_000),
                ("001B", "Failed", 80, False, 5_000, 5_000),
                ("001C", "Healthy", 10, False, 90_000, 9_000),
                ("001D", "Healthy", 0, True, 7_000, 7_000),  # known churn: apart
                ("001E", "Healthy", 0, False, 50_000, 0),  # nothing at risk: not listed
            ],
        )
        older = q.worklist(con)
        assert list(older["account_id"]) == ["001C", "001A", "001B"]
        assert list(q.worklist(con, limit=2)["account_id"]) == ["001C", "001A"]
        assert q.worklist_totals(con) == {"accounts": 3, "expected_mrr_at_risk_minor": 20_000,
                                          "total_mrr_minor": 105_000, "failed": 1}  # fmt: skip
        assert older["churn_probability"].null_count() == 3
        assert list(q.worklist(con, q.WorklistFilters(known_churn=True))["account_id"]) == ["001D"]

        con.execute("ALTER TABLE account_health ADD COLUMN churn_probability DOUBLE")
        con.execute("ALTER TABLE account_health ADD COLUMN expected_mrr_at_risk_minor BIGINT")
        con.execute("ALTER TABLE account_health ADD COLUMN model_version VARCHAR")
        con.execute(
            "UPDATE account_health SET churn_probability = 0.9,"
            " expected_mrr_at_risk_minor = 9_000, model_version = 'm1' WHERE account_id = '001A'"
        )
        con.execute(
            "UPDATE account_health SET churn_probability = 0.05,"
            " expected_mrr_at_risk_minor = 4_500 WHERE account_id = '001C'"
        )
        newer = q.worklist(con)
        # 001A 9,000 expected; 001B falls back to its 5,000; 001C 4,500 expected.
        assert list(newer["account_id"]) == ["001A", "001B", "001C"]
        assert list(newer["expected_mrr_at_risk_minor"]) == [9_000, 5_000, 4_500]
        assert newer["model_version"][0] == "m1"
        # Bands are in whole dollars: 90,000 cents is $900, under 1,000.
        under = q.worklist(con, q.WorklistFilters(mrr_band="under 1,000"))
        assert list(under["account_id"]) == ["001A", "001B", "001C"]
        assert q.worklist(con, q.WorklistFilters(mrr_band="1,000 to 5,000")).is_empty()
    finally:
        con.close()
