"""``sync_state``: each stream's cursor, kept beside the data it covers (dlt's habit).

Written inside the transaction that lands the rows a cursor covers, so a crash leaves
neither the rows nor the cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from churn.warehouse.connection import utcnow


@dataclass(frozen=True)
class SyncState:
    """One ``sync_state`` row: a stream's cursor, its time, and free-form details."""

    cursor: str | None = None
    cursor_ts: datetime | None = None
    details: dict[str, Any] | None = None


def read_state(con: duckdb.DuckDBPyConnection, stream: str) -> SyncState | None:
    """The stream's ``sync_state`` row, None when it has none yet."""
    # fetchall, not fetchone: DuckDB 2 keeps an unfinished result busy on the connection.
    rows = con.execute(
        "SELECT cursor, cursor_ts, details FROM sync_state WHERE stream = ?", [stream]
    ).fetchall()
    if not rows:
        return None
    cursor, cursor_ts, details = rows[0]
    return SyncState(cursor, cursor_ts, json.loads(details) if details else {})


def write_state(
    con: duckdb.DuckDBPyConnection,
    stream: str,
    *,
    cursor: str | None = None,
    cursor_ts: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Replace the stream's ``sync_state`` row; call it inside the transaction that lands
    the rows it covers, so a crash leaves neither."""
    con.execute(
        "INSERT OR REPLACE INTO sync_state VALUES (?, ?, ?, ?::JSON, ?)",
        [stream, cursor, cursor_ts, None if details is None else json.dumps(details), utcnow()],
    )
