"""What a Stripe extract landed, comparable across runs, and the extract run as a process:
shared by the kill tests of the backfill (stripe_extract/test_kill.py, against localstripe)
and of the concurrent backfill (sandbox/test_concurrent_backfill.py, against the stand-in).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from churn.pipelines.stripe.streams import CORE_TABLES, STREAMS

SRC = Path(__file__).resolve().parents[2] / "src"
#: What the extract logs (-v) after each committed batch: a kill can land after the nth.
COMMITTED = b"page committed"

#: Every landed row, minus the columns that say when it was fetched.
COMPARED = {
    **{s.table: "id, payload::VARCHAR, is_deleted, source, livemode" for s in STREAMS},
    "raw_stripe_event": "id, type, created, payload::VARCHAR",
    "stripe_subscription_versions": "subscription_id, source, payload::VARCHAR",
    **{
        t: "*"
        for t in (
            *(core.name for _, core in CORE_TABLES),
            "history_subscriptions",
            "history_subscription_items",
        )
    },
    "quarantine": "source, stream, object_id, reason",
}
#: History intervals a listing opens start at its fetch time (just before its second).
FETCHED_HISTORY = ("history_subscriptions", "history_subscription_items")


def extract_env(db: Path, base: str, key: str, **extra: str) -> dict[str, str]:
    """The environment of an extract of the Stripe at ``base`` into ``db``: the shell's
    service variables dropped, no deletion reconcile, ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "CHURN_"))}
    env.update(
        CHURN_DB=str(db),
        STRIPE_API_KEY=key,
        STRIPE_API_BASE=base,
        STRIPE_RECONCILE_EVERY_HOURS="0",
        PYTHONPATH=str(SRC),
    )
    env.update(extra)
    return env


def extract_cli(env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """`churn -v extract stripe` in a process of its own, its log on a pipe (stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "churn", "-v", "extract", "stripe", "--no-progress"],
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def read_commits(process: subprocess.Popen[bytes], commits: int, marker: bytes = COMMITTED) -> int:
    """Read the process's log until its ``commits``-th line holding ``marker`` (a
    committed batch), or its end; returns how many it read."""
    assert process.stderr is not None
    seen = 0
    while seen < commits:
        line = process.stderr.readline()
        if not line:
            break
        seen += marker in line
    return seen


def landed(db: Path, fetched_after: datetime | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Per compared table, its rows sorted. ``fetched_after``: history bounds from then on
    are fetch times (they differ between two runs) and compared as NULL."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table, cols in COMPARED.items():
            if fetched_after is not None and table in FETCHED_HISTORY:
                names = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
                cols = ", ".join(
                    f"CASE WHEN {n} >= TIMESTAMP '{fetched_after}' THEN NULL ELSE {n} END"
                    if n in ("valid_from", "valid_to")
                    else n
                    for n in names
                )
            rows = con.execute(f"SELECT {cols} FROM {table}").fetchall()
            # list columns (core_invoices.other_subscriptions) as tuples: rows are compared
            # as sets
            out[table] = sorted(
                (tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in rows), key=repr
            )
        return out
    finally:
        con.close()


def lost_and_extra(
    expected: Mapping[str, list[Any]], got: Mapping[str, list[Any]]
) -> tuple[int, int]:
    """Rows of ``expected`` missing from ``got``, and rows ``got`` has beyond it."""
    lost = sum(len(set(rows) - set(got.get(t, []))) for t, rows in expected.items())
    extra = sum(len(rows) - len(expected.get(t, [])) for t, rows in got.items())
    return lost, max(extra, 0)
