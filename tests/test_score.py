"""`churn score`: marts written in one go, re-scoring replaces, no clock, no network."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

import churn.signals
from churn.cli import app
from churn.errors import ScoringError
from churn.job import scoring as score_module
from churn.job.scoring import score
from churn.settings import Settings, SignalSettings
from churn.signals import SIGNALS
from churn.signals.health import payment_health, risk_score
from churn.signals.schema import SIGNAL_SCHEMA
from golden_world import GOLDEN, load_case, seed

AS_OF = dt.datetime.fromisoformat("2026-02-15")


def _world(con: duckdb.DuckDBPyConnection) -> None:
    """A small world: c1 failing payments, c2 no card, c3 cancelling, c4 healthy."""
    seed(
        con,
        {
            "core_prices": [{"price_id": "p1", "unit_amount": 1000}],
            "history_subscriptions": [
                {
                    "subscription_id": f"s{i}",
                    "customer_id": f"c{i}",
                    "valid_from": "2026-01-01",
                    "current_period_end": "2026-03-01",
                    "cancel_at_period_end": i == 3,
                }
                for i in range(1, 5)
            ],
            "history_subscription_items": [
                {
                    "subscription_id": f"s{i}",
                    "item_id": f"si{i}",
                    "valid_from": "2026-01-01",
                    "price_id": "p1",
                    "quantity": i,
                }
                for i in range(1, 5)
            ],
            "core_customers": [
                {"customer_id": "c1", "default_payment_method": "pm1"},
                {"customer_id": "c2", "default_payment_method": None},
                {"customer_id": "c3", "default_payment_method": "pm3"},
                {"customer_id": "c4", "default_payment_method": "pm4"},
            ],
            "core_payment_methods": [
                {
                    "payment_method_id": f"pm{i}",
                    "customer_id": f"c{i}",
                    "card_exp_month": 1,
                    "card_exp_year": 2030,
                    "created_at": "2025-01-01",
                }
                for i in (1, 3, 4)
            ],
            # what card_expiry reads: the defaults and cards as of a date
            "history_customer_defaults": [
                {
                    "customer_id": f"c{i}",
                    "valid_from": "2025-01-01",
                    "default_payment_method": None if i == 2 else f"pm{i}",
                }
                for i in range(1, 5)
            ],
            "history_payment_methods": [
                {
                    "payment_method_id": f"pm{i}",
                    "customer_id": f"c{i}",
                    "valid_from": "2025-01-01",
                    "card_exp_month": 1,
                    "card_exp_year": 2030,
                }
                for i in (1, 3, 4)
            ],
            "core_invoices": [
                {
                    "invoice_id": "in1",
                    "customer_id": "c1",
                    "subscription_id": "s1",
                    "amount_due": 1000,
                    "amount_remaining": 1000,
                    "attempt_count": 1,
                    "finalized_at": "2026-02-01",
                    "created_at": "2026-02-01",
                }
            ],
            "core_charges": [
                {
                    "charge_id": "ch1",
                    "customer_id": "c1",
                    "invoice_id": "in1",
                    "amount": 1000,
                    "status": "failed",
                    "decline_code": "insufficient_funds",
                    "created_at": "2026-02-01",
                },
                {
                    "charge_id": "ch0",
                    "customer_id": "c4",
                    "amount": 4000,
                    "status": "succeeded",
                    "created_at": "2026-02-05",
                },
            ],
        },
    )


def _settings(tmp_path: Path) -> Settings:
    return Settings(db=tmp_path / "churn.duckdb")


def test_score_writes_the_marts_and_health_rules(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    _world(con)
    result = score(_settings(tmp_path), con, as_of=AS_OF)
    assert result.counts["signal_events"] == 3
    assert result.api_calls == 0
    health = {r[0]: r for r in con.execute(
        "SELECT account_id, payment_health, risk_score, known_churn, total_mrr_minor,"
        " mrr_at_risk_minor, days_since_last_payment, subscription_count, top_reasons,"
        " stripe_customer_ids, next_renewal_at FROM account_health WHERE as_of = ?", [AS_OF]
    ).fetchall()}  # fmt: skip
    assert {k: v[1] for k, v in health.items()} == {
        "c1": "Failed", "c2": "No Payment Method", "c3": "Healthy", "c4": "Healthy"
    }  # fmt: skip
    # known churn is shown apart and does not make a risk score
    assert health["c3"][3] is True and health["c3"][2] == 0
    assert health["c3"][5] == health["c3"][4] == 3000
    assert health["c1"][2] == 45 and health["c1"][5] == 1000  # 100 x 0.9 x 0.5; Failed: all MRR
    assert health["c4"][6] == 10 and health["c4"][7] == 1
    assert json.loads(health["c4"][9]) == ["c4"]
    # the failed payment leads, with its amount; the invoice id is in the evidence
    assert json.loads(health["c1"][8])[0].startswith("The $10 invoice")
    assert health["c4"][10] == dt.datetime.fromisoformat("2026-03-01")


def test_rescoring_the_same_as_of_replaces(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    _world(con)
    settings = _settings(tmp_path)
    first = score(settings, con, as_of=AS_OF)
    score(settings, con, as_of=AS_OF)
    score(settings, con, as_of=AS_OF + dt.timedelta(days=1))
    for mart, n in first.counts.items():
        got = con.execute(f"SELECT count(*) FROM {mart} WHERE as_of = ?", [AS_OF]).fetchone()
        assert got is not None and got[0] == n, mart
    rows = con.execute("SELECT count(DISTINCT as_of) FROM signal_events").fetchone()
    assert rows == (2,)


def test_risk_score_uses_the_weights_in_settings() -> None:
    rows = pl.DataFrame(
        {
            "account_id": ["a", "a", "b", "c"],
            "signal": ["payment_failure", "downgrade", "cancel_at_period_end", "seat_expansion"],
            "score": [1.0, 0.5, 1.0, 1.0],
        }
    )
    default = dict(risk_score(rows, SignalSettings()).iter_rows())
    # 1 - (1 - 0.9)(1 - 0.3) = 0.93; known churn and expansion are not risk
    assert default == {"a": 93}
    heavier = SignalSettings(risk_weights={"payment_failure": 1.0, "downgrade": 0.6})
    assert dict(risk_score(rows, heavier).iter_rows()) == {"a": 100}


def test_payment_health_rules_in_order() -> None:
    ev = lambda kind: json.dumps({"kind": kind})  # noqa: E731
    rows = pl.DataFrame(
        {
            "account_id": ["a", "a", "b", "c", "d"],
            "signal": ["card_expiry", "payment_failure", "card_expiry", "card_expiry", "downgrade"],
            "evidence": [
                ev("no_payment_method"),
                "{}",
                ev("no_payment_method"),
                ev("expires_before_renewal"),
                "{}",
            ],
        }
    )
    got = dict(payment_health(rows).iter_rows())
    assert got == {"a": "Failed", "b": "No Payment Method", "c": "At Risk", "d": "Healthy"}


class _NoClock(dt.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        raise AssertionError("scoring read the clock")

    @classmethod
    def utcnow(cls) -> Any:
        raise AssertionError("scoring read the clock")

    @classmethod
    def today(cls) -> Any:
        raise AssertionError("scoring read the clock")


def _forbidden(*_: object, **__: object) -> Any:
    raise AssertionError("scoring used the clock or the network")


def _forbidden_here(real: Any) -> Any:
    """``real`` refused in this thread, the scoring's; other threads keep it (a notebook
    test's kernel client can leave a channel thread reading the clock, which the bare
    refusal failed in that thread, a warning in whichever test ran next)."""
    scoring = threading.current_thread()

    def guard(*args: object, **kwargs: object) -> Any:
        if threading.current_thread() is scoring:
            raise AssertionError("scoring used the clock or the network")
        return real(*args, **kwargs)

    return guard


def test_scoring_calls_no_clock_and_no_network(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _world(con)
    settings = _settings(tmp_path)
    expected = score(settings, con, as_of=AS_OF).counts
    for fn in ("time", "time_ns", "monotonic", "localtime", "gmtime", "perf_counter"):
        monkeypatch.setattr(time, fn, _forbidden_here(getattr(time, fn)))
    for fn in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, fn, _forbidden_here(getattr(socket, fn)))
    monkeypatch.setattr(dt, "datetime", _NoClock)
    monkeypatch.setattr(score_module, "utcnow", _forbidden, raising=False)
    for mod in [score_module, *_signal_modules()]:
        if hasattr(mod, "datetime"):
            monkeypatch.setattr(mod, "datetime", _NoClock)
    assert score(settings, con, as_of=AS_OF).counts == expected


def _signal_modules() -> list[Any]:
    import churn.signals.health as health
    import churn.signals.mrr as mrr
    import churn.signals.schema as schema

    return [inspect.getmodule(s.score) for s in SIGNALS] + [health, mrr, schema]


def test_signal_sql_reads_no_database_clock() -> None:
    for mod in [churn.signals, *_signal_modules()]:
        source = inspect.getsource(mod).lower()
        for clock in ("now()", "current_timestamp", "current_date", "today()", "get_current_"):
            assert clock not in source, (mod.__name__, clock)


def test_every_signal_returns_the_published_schema_on_an_empty_warehouse(
    con: duckdb.DuckDBPyConnection,
) -> None:
    from churn.signals.tables import Tables

    for s in SIGNALS:
        out = s.score(Tables(con), AS_OF, SignalSettings())
        assert out.height == 0 and out.schema == pl.Schema(SIGNAL_SCHEMA), s.name


def test_tables_refuse_writes(con: duckdb.DuckDBPyConnection) -> None:
    from churn.signals.tables import Tables

    for sql in (
        "DELETE FROM core_customers",
        "WITH x AS (SELECT 1) DELETE FROM core_customers",
        "SELECT 1; DROP TABLE core_customers",
    ):
        with pytest.raises(ScoringError, match="only read"):
            Tables(con).frame(sql)
    assert con.execute("SELECT count(*) FROM core_customers").fetchone() == (0,)


def test_cli_scores_a_past_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from churn.warehouse import connect

    db = tmp_path / "w.duckdb"
    con = connect(db)
    case = load_case(GOLDEN / "payment_failure" / "hard_decline.json")
    seed(con, case["tables"])
    con.close()
    monkeypatch.delenv("CHURN_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["--db", str(db), "score", "--as-of", "2026-02-15"])
    assert result.exit_code == 0, result.output
    assert "c1" in result.output and "Failed" in result.output
    # the failed invoice, and no payment method on file for the next renewal
    assert "signal_events: 2" in result.output
    cancelling = load_case(GOLDEN / "cancel_at_period_end" / "at_period_end.json")
    con = connect(db)
    seed(con, {k: v for k, v in cancelling["tables"].items() if k != "core_prices"} | {
        "history_subscriptions": [{**cancelling["tables"]["history_subscriptions"][0],
                                   "subscription_id": "s9", "customer_id": "c9"}],
        "history_subscription_items": [{**cancelling["tables"]["history_subscription_items"][0],
                                        "subscription_id": "s9", "item_id": "si9"}],
    })  # fmt: skip
    con.close()
    again = CliRunner().invoke(app, ["--db", str(db), "score", "--as-of", "2026-02-15"])
    assert "Known churn (scheduled cancellations): 1 accounts, 3000 USD" in again.output
    bad = CliRunner().invoke(app, ["--db", str(db), "score", "--as-of", "yesterday"])
    assert bad.exit_code != 0


def test_scoring_an_empty_warehouse_writes_nothing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    result = score(_settings(tmp_path), con, as_of=AS_OF)
    assert result.counts == dict.fromkeys(score_module.MARTS, 0)


def test_mrr_without_a_rate_is_unknown_not_zero(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """An EUR subscription with no EUR rate: total MRR NULL (never 0), counted, and the push
    leaves Total_MRR__c alone rather than telling Salesforce the customer pays nothing."""
    seed(
        con,
        {
            "core_prices": [
                {"price_id": "pe", "unit_amount": 1000, "currency": "eur"},
                {"price_id": "pu", "unit_amount": 1000, "currency": "usd"},
            ],
            "history_subscriptions": [
                {
                    "subscription_id": s,
                    "customer_id": c,
                    "valid_from": "2026-01-01",
                    "current_period_end": "2026-03-01",
                }
                for s, c in (("se", "ceur"), ("su", "cusd"))
            ],
            "history_subscription_items": [
                {
                    "subscription_id": s,
                    "item_id": f"i{s}",
                    "valid_from": "2026-01-01",
                    "price_id": p,
                    "quantity": 1,
                }
                for s, p in (("se", "pe"), ("su", "pu"))
            ],
        },
    )
    result = score(_settings(tmp_path), con, as_of=AS_OF)
    assert result.counts["accounts_mrr_missing_rate"] == 1
    mrr = dict(
        con.execute(
            "SELECT account_id, total_mrr_minor FROM account_health WHERE as_of = ?", [AS_OF]
        ).fetchall()
    )
    assert mrr == {"ceur": None, "cusd": 1000}
    from churn.pipelines.push.values import account_values

    row = {"total_mrr_minor": None, "reporting_currency": "USD", "payment_health": "Healthy"}
    assert "total_mrr" not in account_values(row, _settings(tmp_path))


@pytest.mark.slow
def test_the_notebooks_run_read_only_on_a_scored_warehouse(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, db_path: Path
) -> None:
    import os
    import subprocess
    import sys

    _world(con)
    score(_settings(tmp_path), con, as_of=AS_OF)
    con.close()
    before = db_path.stat().st_mtime_ns
    # The model back-test notebook needs months of history to train on: it runs on a
    # generated world in tests/model/test_model_world.py.
    notebooks = sorted(
        nb
        for nb in (Path(__file__).parent.parent / "notebooks").glob("*.py")
        if nb.name != "model_backtest.py"
    )
    assert notebooks
    for nb in notebooks:
        run = subprocess.run(
            [sys.executable, str(nb)], env={**os.environ, "CHURN_DB": str(db_path)},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, nb.name + run.stderr[-2000:]
        assert "Failed" in run.stdout and "payment_failure" in run.stdout
    assert db_path.stat().st_mtime_ns == before, "notebooks never write"


def test_stale_invoices_are_counted_and_noted_not_failed(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """An open invoice of a subscription canceled long ago is not a payment failure; the
    scoring step counts it as uncollected debt and says so in its notes (no account)."""
    seed(
        con,
        {
            "history_subscriptions": [
                {"subscription_id": "s1", "customer_id": "c1", "valid_from": "2024-01-01",
                 "valid_to": "2024-03-01", "current_period_end": "2024-02-01"},
                {"subscription_id": "s1", "customer_id": "c1", "valid_from": "2024-03-01",
                 "status": "canceled", "ended_at": "2024-03-01"},
            ],
            "core_invoices": [
                {"invoice_id": "in_old", "customer_id": "c1", "subscription_id": "s1",
                 "amount_due": 1000, "amount_remaining": 1000, "attempt_count": 4,
                 "finalized_at": "2024-02-01", "created_at": "2024-02-01"},
            ],
            "core_charges": [
                {"charge_id": "ch1", "customer_id": "c1", "invoice_id": "in_old",
                 "amount": 1000, "status": "failed", "created_at": "2024-02-01"},
            ],
        },
    )  # fmt: skip
    result = score(_settings(tmp_path), con, as_of=AS_OF)
    assert result.counts["payment_uncollected_invoices"] == 1
    assert not result.signals.filter(pl.col("signal") == "payment_failure").height
    [note] = [n for n in result.notes if n.startswith("payment failure:")]
    assert "1 open invoice of ended subscriptions" in note and "c1" not in note
