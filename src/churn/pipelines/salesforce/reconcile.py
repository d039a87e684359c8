"""Find Salesforce records deleted for good, which the incremental extract cannot see.

``queryAll`` shows a deletion only while the record sits in the recycle bin (15 days, or
until someone empties it). A record purged before the next extract would otherwise stay
live in the warehouse for ever: its Account scored and pushed, its update rejected every
run. So, on a cadence (``reconcile_every_hours``, weekly by default), each stream's live
Ids are listed (``SELECT Id``: 2,000 a call, about 50 calls for 100,000 Accounts) and the
stored records missing from a complete listing are marked deleted, in raw and core, in
one transaction per stream. A listing cut short (budget, error) marks nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import polars as pl
from simple_salesforce import Salesforce

from churn.pipelines.salesforce.client import query_pages, salesforce_errors
from churn.settings import Settings
from churn.warehouse import read_state, transaction, utcnow, write_state

#: The streams whose records can be deleted, with their core table and key column (Tasks
#: have no core table).
CORE_KEYS: dict[str, tuple[str, str] | None] = {
    "account": ("core_accounts", "account_id"),
    "user": ("core_users", "user_id"),
    "opportunity": ("core_opportunities", "opportunity_id"),
    "contact": ("core_contacts", "contact_id"),
    "accountcontactrole": ("core_account_contact_roles", "role_id"),
    "task": None,
    "datedconversionrate": ("core_dated_conversion_rates", "rate_id"),
}
STATE = "salesforce.reconcile"


def reconcile_due(con: duckdb.DuckDBPyConnection, settings: Settings, now: datetime) -> bool:
    hours = settings.salesforce.reconcile_every_hours
    if hours <= 0:
        return False
    state = read_state(con, STATE)
    last = state.cursor_ts if state else None
    return last is None or last < now - timedelta(hours=hours)


def live_ids(sf: Salesforce, sobject: str, where: str, stream: str) -> list[str]:
    """Every live record's Id (``query``, not ``queryAll``: the recycle bin is not live)."""
    soql = f"SELECT Id FROM {sobject}" + (f" WHERE {where}" if where else "")
    with salesforce_errors(f"Salesforce reconcile {stream}"):
        return [str(r["Id"]) for page in query_pages(sf, soql) for r in page.get("records", [])]


def mark_missing_deleted(con: duckdb.DuckDBPyConnection, stream: str, ids: list[str]) -> int:
    """Stored live records of ``stream`` not in ``ids`` become deleted; returns how many."""
    con.register("_sf_live", pl.DataFrame({"id": ids}, schema={"id": pl.Utf8}).to_arrow())
    try:
        with transaction(con):
            gone = con.execute(
                f"UPDATE raw_sf_{stream} SET is_deleted = TRUE"
                " WHERE NOT is_deleted AND id NOT IN (SELECT id FROM _sf_live) RETURNING id"
            ).fetchall()
            core = CORE_KEYS[stream]
            if core is not None and gone:
                table, key = core
                con.execute(
                    f"UPDATE {table} SET is_deleted = TRUE WHERE {key} IN"
                    " (SELECT unnest(?::VARCHAR[]))",
                    [[g[0] for g in gone]],
                )
    finally:
        con.unregister("_sf_live")
    return len(gone)


def reconcile_deletions(
    sf: Salesforce,
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    streams: list[tuple[str, str, str]],
) -> dict[str, int]:
    """List each (stream, sobject, where)'s live Ids and mark the purged ones deleted."""
    started = utcnow()
    counts: dict[str, int] = {}
    for stream, sobject, where in streams:
        if stream not in CORE_KEYS:
            continue
        ids = live_ids(sf, sobject, where, stream)
        counts[f"reconcile_deleted_{stream}"] = mark_missing_deleted(con, stream, ids)
    write_state(con, STATE, cursor_ts=started)
    return counts
