"""The fault suite's yardstick: a warehouse's content, comparable across runs.

Every ``core_*`` table, the Stripe history and the marts, row by row, without the columns
that only say when a row was written (wall-clock bookkeeping). Rows lost and duplicated
are counted as multisets, so a row landed twice is seen even where a table has no key.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from churn import warehouse

#: Columns that record when this process wrote or saw a row, not what the row says (found
#: by comparing two fault-free runs of one world: only these differ).
BOOKKEEPING = frozenset({"fetched_at", "loaded_at", "linked_at", "quarantined_at", "run_id"})
#: Per table, more such columns: a link's and a rate's "seen from" are the wall clock of
#: the run that saw them; the stand-in stamps SystemModstamp when it loads the world; a
#: subscription first seen by a listing starts its history at the fetch.
AS_SEEN = {
    "core_account_links": {"valid_from"},
    "core_currency_rates": {"system_modstamp"},
    "core_accounts": {"system_modstamp"},  # the stand-in stamps the push's writes
    "core_currency_rate_versions": {"seen_from"},
    "history_subscriptions": {"valid_from", "valid_to"},
}
#: Tables compared beside every core_* table.
EXTRA = (
    "history_subscriptions",
    "history_subscription_items",
    "history_customer_defaults",
    "history_payment_methods",
    "account_health",
    "account_mrr",
    "mrr_movements",
    "signal_events",
    "quarantine",
)


def contents(
    db: Path, leave_out: dict[str, set[str]] | None = None
) -> dict[str, Counter[tuple[Any, ...]]]:
    """Per table, its rows (bookkeeping columns, and ``leave_out``'s, apart) as a multiset."""
    con = warehouse.connect(db, read_only=True)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                " AND (table_name LIKE 'core\\_%' ESCAPE '\\' OR table_name IN ?)"
                " ORDER BY 1",
                [list(EXTRA)],
            ).fetchall()
        ]
        out: dict[str, Counter[tuple[Any, ...]]] = {}
        for name in names:
            cols = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
                    " ORDER BY ordinal_position",
                    [name],
                ).fetchall()
                if r[0]
                not in BOOKKEEPING | AS_SEEN.get(name, set()) | (leave_out or {}).get(name, set())
            ]
            select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
            out[name] = Counter(con.execute(f"SELECT {select} FROM {name}").fetchall())
        return out
    finally:
        con.close()


def difference(
    want: dict[str, Counter[tuple[Any, ...]]], got: dict[str, Counter[tuple[Any, ...]]]
) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(rows lost, rows duplicated or extra, per table with any: (lost, extra))."""
    lost = extra = 0
    tables: dict[str, tuple[int, int]] = {}
    for name in sorted(set(want) | set(got)):
        a, b = want.get(name, Counter()), got.get(name, Counter())
        missing = sum((a - b).values())
        more = sum((b - a).values())
        if missing or more:
            tables[name] = (missing, more)
        lost += missing
        extra += more
    return lost, extra, tables
