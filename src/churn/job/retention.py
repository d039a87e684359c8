"""How long the marts keep every snapshot: all of the recent days, then one per day.

Each ``churn run`` writes a whole snapshot of every mart (all accounts' health, their MRR,
24 months of movements). On a 15-minute cadence at 100,000 accounts that is 9.6 million
``account_health`` rows a day, for ever, while the dashboard's trends and a back-test need
one snapshot a day. So snapshots older than ``keep_every_snapshot_days`` (counted back from
the newest snapshot, not the clock, so a back-fill of old dates is never thinned by the
date it runs on) are thinned to the last one of each UTC day. The history tables are not
touched: any past date can still be re-scored exactly as it stood.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb

__all__ = ["MARTS", "thin_snapshots"]

MARTS: tuple[str, ...] = ("signal_events", "account_health", "account_mrr", "mrr_movements")


def thin_snapshots(con: duckdb.DuckDBPyConnection, keep_every_snapshot_days: int) -> int:
    """Delete every snapshot older than the window that is not its day's last; returns how
    many snapshots went. Runs in the caller's transaction."""
    newest = con.execute("SELECT max(as_of) FROM account_health").fetchone()
    if newest is None or newest[0] is None:
        return 0
    cutoff = newest[0] - timedelta(days=keep_every_snapshot_days)
    # The snapshots to drop come from account_health (every run writes it, even with no
    # signal), and are the same as_of values in each mart.
    doomed = [
        r[0]
        for r in con.execute(
            """
            SELECT as_of FROM (
                SELECT DISTINCT as_of FROM account_health WHERE as_of < ?
            )
            QUALIFY as_of < max(as_of) OVER (PARTITION BY CAST(as_of AS DATE))
            """,
            [cutoff],
        ).fetchall()
    ]
    if not doomed:
        return 0
    con.execute("CREATE OR REPLACE TEMP TABLE _doomed_snapshots (as_of TIMESTAMP)")
    con.executemany("INSERT INTO _doomed_snapshots VALUES (?)", [[d] for d in doomed])
    for mart in MARTS:
        con.execute(f"DELETE FROM {mart} WHERE as_of IN (SELECT as_of FROM _doomed_snapshots)")
    con.execute("DROP TABLE _doomed_snapshots")
    return len(doomed)
