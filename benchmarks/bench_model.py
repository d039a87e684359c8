"""Benchmark the churn-risk model: features, training and scoring on N synthetic accounts.

    PYTHONPATH=src python benchmarks/bench_model.py [N]

The warehouse is bench_score's (set-based rows), with one account in twelve churning
(the subscriptions of both its customers canceled on a day from March to October 2025:
bench_score links two customers to each Account). Churn carries evidence a model can
learn, as a real book's does, and noise: half the churning Accounts had failed charges
60 and 20 days before the end, and one staying customer in ten a failed charge some day
of 2025 (the candidates back-test at ROC AUC 0.84 and 0.88 at 5,000 accounts). Without
it both back-tested at 0.5, so which one was chosen, and the time and memory that follow
the choice, was a coin. Prints the time of training (the back-test included) and of
scoring, the kind chosen and its back-test ROC AUC, and the peak resident memory of the
process.
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
        SELECT 's' || i AS sid, TIMESTAMP '2025-03-01' + INTERVAL (i % 240) DAY AS ended
        FROM range({n}) r(i) WHERE (i // 2) % 12 = 0 AND i % 300 < 200;
        INSERT INTO history_subscriptions (subscription_id, valid_from, valid_to, customer_id,
          status, currency, collection_method, cancel_at_period_end, current_period_end)
        SELECT h.subscription_id, e.ended, NULL, h.customer_id, 'canceled', h.currency,
          h.collection_method, FALSE, e.ended
        FROM history_subscriptions h JOIN ends e ON e.sid = h.subscription_id;
        UPDATE history_subscriptions SET valid_to = e.ended FROM ends e
        WHERE e.sid = history_subscriptions.subscription_id AND status <> 'canceled';
        -- the evidence: failed charges before half the churning Accounts' ends; noise on stayers
        INSERT INTO core_charges (charge_id, customer_id, amount, currency, status,
          decline_code, created_at)
        SELECT 'chf' || d || '_' || substr(e.sid, 2), 'c' || substr(e.sid, 2), 5000, 'usd',
          'failed', 'insufficient_funds', e.ended - INTERVAL (d) DAY
        FROM ends e, (VALUES (60), (20)) v(d)
        -- churning Accounts are those of customers i with i % 24 in (0, 1): one in two of
        -- them, through its first customer
        WHERE CAST(substr(e.sid, 2) AS INTEGER) % 48 = 0;
        INSERT INTO core_charges (charge_id, customer_id, amount, currency, status,
          decline_code, created_at)
        SELECT 'chn' || i, 'c' || i, 5000, 'usd', 'failed', 'card_declined',
          TIMESTAMP '2025-01-15' + INTERVAL (i % 330) DAY
        FROM range({n}) r(i) WHERE (i // 2) % 12 <> 0 AND i % 10 = 7;
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
        metrics = card.get("backtest", {}).get("metrics", {})
        auc = {k: round(float(v["roc_auc"]), 3) for k, v in metrics.items() if "roc_auc" in v}
        print(
            f"accounts={n} kind={model.kind} rows={card['rows']} churners={card['churners']}"
            f" backtest_auc={auc}"
            f" train={t1 - t0:.1f}s predict={t2 - t1:.1f}s scored={scored.height}"
            f" peak_rss_mb={peak}"
        )
        con.close()


if __name__ == "__main__":
    main()
