"""Benchmark `churn score` on a synthetic warehouse of N accounts (default 100,000).

    PYTHONPATH=src python benchmarks/bench_score.py [N]

Generates the core_* and history_* rows set-based in DuckDB (no Python loop per
account), then times one full scoring run (five signals, MRR, health, movements, writes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from churn.job.scoring import score
from churn.settings import Settings
from churn.warehouse import connect

AS_OF = datetime.fromisoformat("2026-02-15")


def build(con: object, n: int) -> None:
    sql = f"""
    INSERT INTO core_prices (price_id, currency, type, billing_scheme, unit_amount,
      recurring_interval, recurring_interval_count, usage_type)
    VALUES ('pm', 'usd', 'recurring', 'per_unit', 1000, 'month', 1, 'licensed'),
           ('py', 'eur', 'recurring', 'per_unit', 100000, 'year', 1, 'licensed');
    INSERT INTO core_currency_rates (iso_code, conversion_rate, is_corporate)
    VALUES ('USD', 1, TRUE), ('EUR', 0.9, FALSE);
    INSERT INTO history_subscriptions (subscription_id, valid_from, valid_to, customer_id,
      status, currency, collection_method, cancel_at_period_end, current_period_end)
    SELECT 's' || i, TIMESTAMP '2025-01-01' + INTERVAL (i % 300) DAY, NULL, 'c' || i,
      CASE WHEN i % 50 = 0 THEN 'past_due' ELSE 'active' END,
      CASE WHEN i % 3 = 0 THEN 'eur' ELSE 'usd' END, 'charge_automatically', i % 40 = 0,
      TIMESTAMP '2026-02-16' + INTERVAL (i % 60) DAY
    FROM range({n}) r(i);
    INSERT INTO history_subscription_items
    SELECT 's' || i, 'si' || i, TIMESTAMP '2025-01-01' + INTERVAL (i % 300) DAY,
      CASE WHEN i % 7 = 0 THEN TIMESTAMP '2026-01-20' END,
      CASE WHEN i % 3 = 0 THEN 'py' ELSE 'pm' END, 5 + i % 20
    FROM range({n}) r(i);
    INSERT INTO history_subscription_items
    SELECT 's' || i, 'si' || i, TIMESTAMP '2026-01-20', NULL,
      CASE WHEN i % 3 = 0 THEN 'py' ELSE 'pm' END, 2 + i % 10
    FROM range({n}) r(i) WHERE i % 7 = 0;
    INSERT INTO core_customers (customer_id, default_payment_method)
    SELECT 'c' || i, CASE WHEN i % 30 <> 0 THEN 'pm' || i END FROM range({n}) r(i);
    INSERT INTO core_payment_methods (payment_method_id, customer_id, type, card_exp_month,
      card_exp_year, created_at)
    SELECT 'pm' || i, 'c' || i, 'card', 1 + i % 12, 2026 + i % 3, TIMESTAMP '2024-01-01'
    FROM range({n}) r(i) WHERE i % 30 <> 0;
    INSERT INTO core_invoices (invoice_id, customer_id, subscription_id, status, currency,
      amount_due, amount_paid, amount_remaining, attempt_count, attempted, finalized_at, created_at)
    SELECT 'in' || i, 'c' || i, 's' || i, 'open', 'usd', 5000, 0, 5000, 2, TRUE,
      TIMESTAMP '2026-02-01', TIMESTAMP '2026-02-01'
    FROM range({n}) r(i) WHERE i % 50 = 0;
    INSERT INTO core_charges (charge_id, customer_id, invoice_id, amount, currency, status,
      decline_code, created_at)
    SELECT 'ch' || i, 'c' || i, 'in' || i, 5000, 'usd', 'failed', 'insufficient_funds',
      TIMESTAMP '2026-02-02'
    FROM range({n}) r(i) WHERE i % 50 = 0;
    INSERT INTO core_usage
    SELECT 'c' || i, DATE '2026-02-15' - CAST(d AS INTEGER), (i * 7 + d) % 25, 'bench', TIMESTAMP '2026-02-15'
    FROM range({n}) r(i), range(10) s(d);
    -- links over time: two customers an Account, one in ten relinked before AS_OF and one in
    -- twenty after it (the score as of AS_OF reads the link in force then)
    INSERT INTO history_account_links
    SELECT 'c' || i, TIMESTAMP '2025-01-01',
      CASE WHEN i % 10 = 1 THEN TIMESTAMP '2026-01-10' WHEN i % 20 = 2 THEN TIMESTAMP '2026-03-01' END,
      '001' || (i // 2), 'metadata', NULL
    FROM range({n}) r(i);
    INSERT INTO history_account_links
    SELECT 'c' || i, CASE WHEN i % 10 = 1 THEN TIMESTAMP '2026-01-10' ELSE TIMESTAMP '2026-03-01' END,
      NULL, '002' || i, 'account_field', NULL
    FROM range({n}) r(i) WHERE i % 10 = 1 OR i % 20 = 2;
    INSERT INTO core_account_links (customer_id, account_id, method, detail, linked_at, valid_from)
    SELECT customer_id, account_id, method, detail, valid_from, valid_from
    FROM history_account_links WHERE valid_to IS NULL;
    -- the EUR rate as seen over time (CurrencyType versions)
    INSERT INTO core_currency_rate_versions VALUES ('USD', 1, TIMESTAMP '2025-01-01'),
      ('EUR', 0.92, TIMESTAMP '2025-01-01'), ('EUR', 0.9, TIMESTAMP '2025-09-01');
    """
    con.execute(sql)  # type: ignore[attr-defined]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        con = connect(db)
        t0 = time.perf_counter()
        build(con, n)
        t1 = time.perf_counter()
        result = score(Settings(db=db), con, as_of=AS_OF)
        t2 = time.perf_counter()
        print(f"accounts={n} build={t1 - t0:.1f}s score={t2 - t1:.1f}s counts={result.counts}")
        con.close()


if __name__ == "__main__":
    main()
