"""Dashboard figures: the worklist query's time and each page's first render (AppTest).

`make bench` calls :func:`dashboard_figures` on the warehouse it backfilled. Alone, it
measures any warehouse with a read copy; ``--scale N`` first builds a copy whose marts
(and the rows the pages join) hold N times the accounts, each copy's ids suffixed, to see
how the pages grow without a full backfill:

    python benchmarks/dashboard.py --db data/demo.duckdb --scale 70
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import duckdb

from churn import warehouse
from churn.dashboard import queries as q
from churn.dashboard.pages import PAGES, VIEWS

SHOWN = 1000  # the worklist page's rows (views/worklist.py)
TARGETS = {"dashboard_worklist_query_ms": 300.0, "dashboard_page_render_max_s": 2.0}

# Tables the pages read, with the columns that make a row another account's.
_SCALED: dict[str, list[str]] = {
    "account_health": ["account_id"],
    "account_mrr": ["account_id"],
    "mrr_movements": ["account_id"],
    "signal_events": ["account_id", "episode_key"],
    "core_accounts": ["account_id"],
    "core_account_links": ["customer_id", "account_id"],
    "core_charges": ["charge_id", "customer_id"],
    "core_usage": ["account_id"],
}


def scale_warehouse(src: Path, factor: int, out: Path) -> Path:
    """A copy of ``src``'s read copy with the pages' tables ``factor`` times over; returns
    the new warehouse (its read copy published)."""
    out.unlink(missing_ok=True)
    shutil.copyfile(warehouse.read_copy_path(src).resolve(), out)
    con = duckdb.connect(str(out))
    try:
        for table, keys in _SCALED.items():
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            select = ", ".join(
                f"CASE WHEN {c} IS NULL THEN NULL ELSE {c} || '-' || k END" if c in keys else c
                for c in cols
            )
            con.execute(
                f"INSERT INTO {table} SELECT {select} FROM {table}, range(1, {factor}) r(k)"
            )
        con.execute(
            "INSERT INTO push_state SELECT sobject, record_key || '-' || k, sf_id,"
            " json_merge_patch(fields, json_object('WhatId', (fields->>'WhatId') || '-' || k)),"
            " status, first_seen_at, pushed_at, idempotency_key"
            f" FROM push_state, range(1, {factor}) r(k) WHERE sobject = 'Task'"
        )
    finally:
        con.close()
    warehouse.publish_read_copy(out)
    return out


def dashboard_figures(db: Path) -> dict[str, float | int]:
    """Worklist query (median of 5 warm, and the first, cold) and each page's first render."""
    from streamlit.testing.v1 import AppTest

    results: dict[str, float | int] = {}
    con = warehouse.connect_read_copy(db)
    try:
        results["dashboard_accounts_scored"] = int(
            con.execute(
                "SELECT count(*) FROM account_health"
                " WHERE as_of = (SELECT max(as_of) FROM account_health)"
            ).fetchall()[0][0]
        )
        times = []
        for _ in range(6):  # what the landing page asks: its table and its figures
            t0 = time.perf_counter()
            rows = q.worklist(con, limit=SHOWN).height
            total = q.worklist_totals(con)["accounts"]
            times.append(time.perf_counter() - t0)
        results["dashboard_worklist_rows"] = rows
        results["dashboard_worklist_accounts"] = total
        results["dashboard_worklist_first_query_ms"] = round(1000 * times[0], 1)
        results["dashboard_worklist_query_ms"] = round(1000 * statistics.median(times[1:]), 1)
    finally:
        con.close()
    os.environ["CHURN_DB"] = str(db.resolve())
    renders = []
    for file, _title, path, _icon in PAGES:
        at = AppTest.from_file(str(VIEWS / file), default_timeout=600)
        t0 = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - t0
        if at.exception:
            results[f"dashboard_{path}_error"] = 1
        results[f"dashboard_{path}_render_s"] = round(seconds, 2)
        renders.append(seconds)
    results["dashboard_page_render_max_s"] = round(max(renders), 2)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, default=Path("data/demo.duckdb"))
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args(argv)
    db = args.db
    if args.scale > 1:
        db = scale_warehouse(db, args.scale, db.with_name(f"{db.stem}-x{args.scale}.duckdb"))
    figures = dashboard_figures(db)
    for key, value in figures.items():
        target = TARGETS.get(key)
        print(f"{key:40} {value:>10}" + (f"   target <= {target}" if target else ""))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
