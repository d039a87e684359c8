"""The scoring step whole and incremental on a synthetic warehouse of N accounts.

    PYTHONPATH=src python benchmarks/bench_incremental_score.py [N] [SHARE]

Builds ``bench_score``'s warehouse (set-based, no API), scores it whole as of AS_OF (the
first scoring: whole), marks SHARE (default 1%) of the customers changed (a raw Stripe
customer row landed after that scoring began, as an extract would), then times the
incremental scoring an hour later against a whole scoring of the same instant on a copy:
wall and CPU seconds (the process's, all threads: on a shared machine the wall swings).
Prints one JSON line.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench_score import AS_OF, build

from churn.job.scoring import score
from churn.settings import Settings
from churn.warehouse import connect, utcnow


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    every = max(1, round(1 / share))
    out: dict[str, object] = {"accounts": n, "changed_share": share}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        settings = Settings(db=db)
        con = connect(db)
        build(con, n)
        t0 = time.perf_counter()
        first = score(settings, con, as_of=AS_OF, incremental=True)
        out["first_score_seconds"] = round(time.perf_counter() - t0, 2)
        out["first_scoring"] = first.scoring
        con.execute(
            f"""
            INSERT INTO raw_stripe_customer
              (id, payload, api_version, source, version_ts, version_seq, fetched_at,
               is_deleted, livemode)
            SELECT 'c' || i, '{{}}', '2025-09-30.clover', 'event', ?, 1, ?, FALSE, FALSE
            FROM range({n}) r(i) WHERE i % {every} = 0
            """,
            [utcnow(), utcnow()],
        )
        con.close()
        whole_db = Path(tmp) / "whole.duckdb"
        shutil.copy(db, whole_db)
        t2 = AS_OF + timedelta(hours=1)
        con = connect(db)
        t0, c0 = time.perf_counter(), time.process_time()
        inc = score(settings, con, as_of=t2, incremental=True)
        out["incremental_score_seconds"] = round(time.perf_counter() - t0, 2)
        out["incremental_score_cpu_seconds"] = round(time.process_time() - c0, 2)
        out["incremental_scoring"] = inc.scoring
        out["incremental_accounts_computed"] = inc.counts["accounts_computed"]
        out["snapshot_accounts"] = inc.counts["account_health"]
        con.close()
        con = connect(whole_db)
        t0, c0 = time.perf_counter(), time.process_time()
        score(settings, con, as_of=t2, incremental=False)
        out["whole_score_seconds"] = round(time.perf_counter() - t0, 2)
        out["whole_score_cpu_seconds"] = round(time.process_time() - c0, 2)
        con.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
