"""DuckDB's write-ahead log allowed to grow for one bulk load, folded into the file after.

DuckDB folds its write-ahead log into the file (a checkpoint) whenever the log passes
``checkpoint_threshold`` (16 MiB by default), and each checkpoint writes every changed
table's primary-key index whole, not the part that changed. A load of millions of keyed
rows in small transactions then writes its indexes again at every 16 MiB of log: 3,000,000
keyed rows inserted 2,000 at a time wrote 7.7 GB for a 0.4 GB table (1.7 GB with a 1 GB
log; 1.1 GB for the same rows without a key), and a 100,000-account Stripe backfill wrote
33 GB in its first 8 minutes, half its time waiting on the disk.

:func:`wal_allowed` lets the log grow to a set size inside, restores DuckDB's threshold
after, and checkpoints then, so the file holds what the load wrote. Durability is the
log's either way: a crash replays it on the next open (a bigger log, a longer replay).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb

__all__ = ["wal_allowed"]


@contextlib.contextmanager
def wal_allowed(con: duckdb.DuckDBPyConnection, size: str | None) -> Iterator[None]:
    """``con``'s write-ahead log may grow to ``size`` inside (``None``: as it is);
    DuckDB's threshold is restored and the log folded into the file after."""
    if size is None:
        yield
        return
    con.execute("SET checkpoint_threshold = '" + size.replace("'", "''") + "'")
    try:
        yield
    finally:
        con.execute("RESET checkpoint_threshold")
        # A failed transaction left open would refuse this; the caller's error is the one
        # to see, and the next checkpoint (DuckDB's own, or the next run's) folds the log.
        with contextlib.suppress(duckdb.Error):
            con.execute("CHECKPOINT")
