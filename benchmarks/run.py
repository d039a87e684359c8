"""`make bench`: backfill, 1% incremental, scoring and push over loopback, timed.

Generates (and caches under data/worlds/) a world of --accounts accounts (100,000 by
default), serves it with the sandbox stand-ins, and measures:

- backfill: `churn run` on an empty warehouse (Stripe list streams, Salesforce, usage,
  links, score, push) and Stripe API calls per 100 objects landed;
- incremental: after 1% of subscriptions changed (events emitted), `churn run` end to end;
- scoring: `score()` alone, with the process's peak RSS;
- push: the push step's time in the backfill run;
- dashboard: the worklist query and each page's first render (AppTest) on the read copy
  the run published (``benchmarks/dashboard.py``; targets 300 ms and 2 s).

Prints a table and writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from churn.job.run import run_job
from churn.sandbox.demo import demo_settings, ensure_world, serve_world

# A fixed world date so the cached world is reused across days.
WORLD_NOW = datetime(2026, 11, 1, tzinfo=UTC)
TARGETS = {"score_seconds": 20.0, "score_peak_rss_mb": 4096.0, "incremental_seconds": 30.0,
           "backfill_calls_per_100_objects": 1.05, "dashboard_worklist_query_ms": 300.0,
           "dashboard_page_render_max_s": 2.0}  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    ap.add_argument("--world", type=Path, help="Serve this world folder (no generation).")
    ap.add_argument(
        "--reuse-backfill",
        action="store_true",
        help="Keep a warehouse a previous bench backfilled from the same world; measure the rest.",
    )
    args = ap.parse_args(argv)
    console = Console()
    results: dict[str, float | int | str] = {"accounts": args.accounts}
    t0 = time.perf_counter()
    folder = args.world or ensure_world(
        args.data / "worlds", args.accounts, args.seed, now=WORLD_NOW
    )
    results["world_seconds"] = round(time.perf_counter() - t0, 1)
    results["world"] = folder.name
    manifest = json.loads((folder / "world.json").read_text())
    stripe_objects = sum(v for k, v in manifest["counts"].items() if k != "event")
    db = args.data / f"bench-{args.accounts}.duckdb"
    reuse = args.reuse_backfill and db.exists()
    if not reuse:
        for p in (db, db.with_name(db.name + ".wal"), db.with_name(db.name + ".lock")):
            p.unlink(missing_ok=True)
    with serve_world(folder) as box:
        settings = demo_settings(box, db)
        if reuse:
            # Catch up first (untimed): whatever the code since the backfill does once,
            # such as a first Salesforce deletion reconcile, is not the 1% incremental.
            t0 = time.perf_counter()
            results["catch_up_status"] = run_job(settings).status
            results["catch_up_seconds"] = round(time.perf_counter() - t0, 1)
            _incremental(box, settings, results)
        else:
            _backfill_then_incremental(box, settings, results, stripe_objects)
    _score(db, results)
    _dashboard(db, results)
    results["bench_peak_rss_mb"] = round(peak_rss_mb(), 0)
    table = Table(title=f"make bench: {args.accounts} accounts")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    for k, v in results.items():
        target = TARGETS.get(k)
        table.add_row(k, str(v), "" if target is None else f"<= {target}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _backfill_then_incremental(
    box: Any, settings: Any, results: dict[str, float | int | str], stripe_objects: int
) -> None:
    t0 = time.perf_counter()
    backfill = run_job(settings)
    results["backfill_seconds"] = round(time.perf_counter() - t0, 1)
    results["backfill_status"] = backfill.status
    stripe_step = next(s for s in backfill.steps if s.name == "stripe")
    results["backfill_stripe_calls"] = stripe_step.api_calls
    results["backfill_stripe_objects"] = stripe_objects
    results["backfill_calls_per_100_objects"] = round(
        100 * stripe_step.api_calls / max(1, stripe_objects), 3
    )
    for step in backfill.steps:
        results[f"backfill_{step.name}_seconds"] = round(step.seconds, 1)
    push_step = next(s for s in backfill.steps if s.name == "push")
    results["push_seconds"] = round(push_step.seconds, 1)
    results["push_status"] = push_step.status
    _incremental(box, settings, results)


def _incremental(box: Any, settings: Any, results: dict[str, float | int | str]) -> None:
    """1% of live subscriptions change (events stamped now), then `churn run`, timed."""
    changed = box.stripe.world.advance(0.01, seconds=60, seed=int(time.time()) % 10_000)
    results["incremental_changed_subscriptions"] = changed
    t0 = time.perf_counter()
    incremental = run_job(settings)
    results["incremental_seconds"] = round(time.perf_counter() - t0, 1)
    results["incremental_status"] = incremental.status
    results["incremental_api_calls"] = incremental.api_calls
    for step in incremental.steps:
        results[f"incremental_{step.name}_seconds"] = round(step.seconds, 1)
    stripe_step = next(s for s in incremental.steps if s.name == "stripe")
    results["incremental_stripe_events"] = int(stripe_step.counts.get("seen_events", 0))


def _score(db: Path, results: dict[str, float | int | str]) -> None:
    # Scoring alone, in its own process, so its peak memory is its own (not the stand-ins').
    code = (
        "import json, resource, sys, time\n"
        "from churn import warehouse\n"
        "from churn.job.scoring import score\n"
        "from churn.settings import load_settings\n"
        "s = load_settings(env={'CHURN_DB': sys.argv[1]})\n"
        "con = warehouse.connect(s.db)\n"
        "t = time.perf_counter(); score(s, con, as_of=warehouse.utcnow())\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "peak = int(hwm[0].split()[1]) // 1024 if hwm else"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "print(json.dumps({'score_seconds': round(time.perf_counter() - t, 1),"
        " 'score_peak_rss_mb': peak}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:  # a failing part is reported, not hidden
        results["score_error"] = proc.stderr.strip().splitlines()[-1][:200]


def _dashboard(db: Path, results: dict[str, float | int | str]) -> None:
    # In its own process: Streamlit's AppTest and the pages' imports are not the bench's.
    script = Path(__file__).with_name("dashboard.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--db", str(db)], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:  # a failing part is reported, not hidden
        results["dashboard_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]


if __name__ == "__main__":
    sys.exit(main())
