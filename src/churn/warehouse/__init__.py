"""The DuckDB warehouse: open and migrate the file, write in transactions, keep cursors.

Owns the schema (``migrations/NNN_name.sql``, applied in order on open), the
``sync_state`` table and the read copy that readers open while a run writes
(``read_copy``). Imports nothing of the service but :mod:`churn.errors`; every other
package may import it. Table families are listed in ``docs/architecture.md``.
"""

from __future__ import annotations

from churn.warehouse.connection import (
    Migration,
    connect,
    migrate,
    migrations,
    rows_where,
    transaction,
    utcnow,
)
from churn.warehouse.memory import memory_limited, memory_unbounded
from churn.warehouse.read_copy import (
    connect_read_copy,
    copy_whole,
    publish_read_copy,
    read_copy_path,
)
from churn.warehouse.sync_state import SyncState, read_state, write_state

__all__ = [
    "Migration",
    "SyncState",
    "connect",
    "connect_read_copy",
    "copy_whole",
    "memory_limited",
    "memory_unbounded",
    "migrate",
    "migrations",
    "publish_read_copy",
    "read_copy_path",
    "read_state",
    "rows_where",
    "transaction",
    "utcnow",
    "write_state",
]
