"""Benchmark `churn score` on a synthetic warehouse of N accounts (default 100,000).

    PYTHONPATH=src python benchmarks/bench_score.py [N ...] [--json]

Generates the core_* and history_* rows set-based in DuckDB (no Python loop per
account, not through the APIs: 1,000,000 accounts build in a minute or two), then times
one full scoring run (the signals, MRR, health, movements, writes) in a fresh process of
its own, so its peak memory (VmHWM) is the score's alone. ``make bench
BENCH_ARGS=--scoring-scale`` runs it at 100,000 and 1,000,000 accounts.

**Bare scan.** The same process then reads, once each, the tables the score's statements
scan, with the columns they read (taken from DuckDB's plans of those statements: every
table scan's projections and filter columns), into Arrow as the statements' results are:
what any scoring of these tables must at least do. ``score_to_bare_scan_ratio`` is the
score's time over that read's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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


#: Run in a fresh process: score() timed, its peak RSS, then the bare scan (see the module).
_MEASURE = r"""
import json, re, sys, time
import duckdb
from churn import warehouse
from churn.job.scoring import score
from churn.settings import Settings
from churn.signals.tables import Tables

db, as_of = sys.argv[1], __import__("datetime").datetime.fromisoformat(sys.argv[2])
con = warehouse.connect(db)
statements = []
frame = Tables.frame
def capture(self, sql, params=None):
    statements.append((sql, dict(params or {})))
    return frame(self, sql, params)
Tables.frame = capture
t0 = time.perf_counter(); c0 = time.process_time()
result = score(Settings(db=db), con, as_of=as_of)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
Tables.frame = frame
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
peak = int(hwm[0].split()[1]) // 1024
columns = {}
def walk(node):
    info = node.get("extra_info") or {}
    if "SCAN" in node.get("name", "") and "Table" in info:
        table = info["Table"].split(".")[-1]
        names = {c for c, in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]).fetchall()}
        proj = info.get("Projections", [])
        proj = [proj] if isinstance(proj, str) else proj
        text = " ".join(proj) + " " + json.dumps(info.get("Filters", ""))
        used = {n for n in names if re.search(r"\b" + re.escape(n) + r"\b", text)}
        columns.setdefault(table, set()).update(used or names)
    for child in node.get("children", []):
        walk(child)
for sql, params in statements:
    (_, plan), = con.execute("EXPLAIN (FORMAT json) " + sql, params).fetchall()
    for node in json.loads(plan):
        walk(node)
t0 = time.perf_counter()
rows = 0
for table, cols in sorted(columns.items()):
    listed = ", ".join('"' + c + '"' for c in sorted(cols))
    rows += con.sql(f"SELECT {listed} FROM {table}").to_arrow_table().num_rows
bare = time.perf_counter() - t0
t0 = time.perf_counter()
for table in sorted(columns):
    con.sql(f"SELECT * FROM {table}").to_arrow_table()
whole = time.perf_counter() - t0
con.close()
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                  "peak_rss_mb": peak, "bare_scan_seconds": round(bare, 3),
                  "bare_scan_tables": len(columns), "whole_tables_scan_seconds": round(whole, 3), "bare_scan_rows": rows,
                  "ratio": round(seconds / bare, 2) if bare else None,
                  "counts": result.counts}))
"""


def measure(n: int, folder: Path) -> dict[str, Any]:
    """Build an ``n``-account warehouse in ``folder`` and score it in a fresh process."""
    db = folder / f"score-{n}.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    con = connect(db)
    t0 = time.perf_counter()
    build(con, n)
    con.execute("CHECKPOINT")
    con.close()
    built = time.perf_counter() - t0
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(db), AS_OF.isoformat()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    db.unlink(missing_ok=True)
    if proc.returncode != 0:
        return {"accounts": n, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"accounts": n, "build_seconds": round(built, 1), **out}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sizes = [int(a) for a in args] or [100_000]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            result = measure(n, Path(tmp))
            if "--json" in sys.argv:
                print(json.dumps(result))
            else:
                print(
                    f"accounts={n} build={result.get('build_seconds')}s"
                    f" score={result.get('seconds')}s (CPU {result.get('cpu_seconds')}s)"
                    f" peak_rss={result.get('peak_rss_mb')}MB"
                    f" bare_scan={result.get('bare_scan_seconds')}s"
                    f" ratio={result.get('ratio')} {result.get('error', '')}"
                )


if __name__ == "__main__":
    main()
