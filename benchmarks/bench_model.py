"""Benchmark the churn-risk model: features, training and scoring on N synthetic accounts.

    PYTHONPATH=src python benchmarks/bench_model.py [N]

The warehouse is bench_score's (set-based rows), with one account in twelve churning
(the subscriptions of both its customers canceled on a day of autumn 2025: bench_score
links two customers to each Account). Prints the time of training (the
back-test included) and of scoring, and the peak resident memory of the process.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from bench_score import AS_OF, build

from churn.settings import SignalSettings
from churn.signals.model import predict, train
from churn.signals.tables import Tables
from churn.warehouse import connect


def add_churn(con: object, n: int) -> None:
    con.execute(  # type: ignore[attr-defined]
        f"""
        CREATE TEMP TABLE ends AS
        -- both customers of an Account ('001' || i // 2 in bench_score), or it never churns
        SELECT 's' || i AS sid, TIMESTAMP '2025-08-01' + INTERVAL (i % 120) DAY AS ended
        FROM range({n}) r(i) WHERE (i // 2) % 12 = 0 AND i % 300 < 200;
        INSERT INTO history_subscriptions (subscription_id, valid_from, valid_to, customer_id,
          status, currency, collection_method, cancel_at_period_end, current_period_end)
        SELECT h.subscription_id, e.ended, NULL, h.customer_id, 'canceled', h.currency,
          h.collection_method, FALSE, e.ended
        FROM history_subscriptions h JOIN ends e ON e.sid = h.subscription_id;
        UPDATE history_subscriptions SET valid_to = e.ended FROM ends e
        WHERE e.sid = history_subscriptions.subscription_id AND status <> 'canceled';
        """
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    settings = SignalSettings(model_min_churners=10)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        con = connect(db)
        build(con, n)
        add_churn(con, n)
        t0 = time.perf_counter()
        model, card = train(Tables(con), settings, AS_OF, trained_at=AS_OF)
        t1 = time.perf_counter()
        scored = predict(Tables(con), AS_OF, model, settings)
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(
            f"accounts={n} kind={model.kind} rows={card['rows']} churners={card['churners']}"
            f" train={t1 - t0:.1f}s predict={t2 - t1:.1f}s scored={scored.height}"
            f" peak_rss_mb={peak}"
        )
        con.close()


if __name__ == "__main__":
    main()
