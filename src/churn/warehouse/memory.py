"""DuckDB held to a memory limit for one part of a run, spilling beside the warehouse.

DuckDB keeps the blocks a query read in its buffer pool up to its ``memory_limit`` (80%
of the machine's memory by default): after a scan of a 2.4 GB warehouse (100,000
accounts) the process holds most of it, on top of what the step itself needs (a model's
training, the extract's pages). A step that reads much and then computes much runs under
:func:`memory_limited`: the pool is bounded (DuckDB evicts cached blocks and spills
operators past it to ``<warehouse>.tmp/``), and the allocator hands freed memory back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

__all__ = ["memory_limited", "memory_unbounded"]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextlib.contextmanager
def memory_limited(con: duckdb.DuckDBPyConnection, limit: str | None) -> Iterator[None]:
    """``con`` held to ``limit`` inside (DuckDB's defaults restored after); ``None``: as it
    is. Spills go to ``<warehouse>.tmp/`` beside the file."""
    if limit is None:
        yield
        return
    # fetchall, not fetchone: DuckDB 2 keeps an unfinished result busy on the connection.
    rows = con.execute(
        "SELECT current_setting('temp_directory'), "
        "(SELECT path FROM duckdb_databases() WHERE database_name = current_database())"
    ).fetchall()
    temp, path = rows[0] if rows else (None, None)
    con.execute(f"SET memory_limit = {_literal(limit)}")
    # The allocator hands freed memory back to the system after any task that peaked past
    # this (DuckDB's default: 128 MiB), so the process's RSS follows what is in use.
    con.execute("SET allocator_flush_threshold = '16MB'")
    spill = str(Path(path).with_name(Path(path).name + ".tmp")) if path else None
    if spill is not None and temp != spill:
        # Kept after (DuckDB cannot switch a temporary directory once it has been used),
        # and left as it is when it has been: spilling then goes where it went.
        with contextlib.suppress(duckdb.NotImplementedException):
            con.execute(f"SET temp_directory = {_literal(spill)}")
    try:
        yield
    finally:
        # RESET gives DuckDB's defaults back exactly (a SET of the value current_setting
        # shows rounds it down by 0.1 GiB each time: 18.8 GiB came back as 18.7).
        con.execute("RESET memory_limit")
        con.execute("RESET allocator_flush_threshold")


@contextlib.contextmanager
def memory_unbounded(con: duckdb.DuckDBPyConnection, then: str | None) -> Iterator[None]:
    """``con`` at DuckDB's default memory limit inside, held to ``then`` after (``None``:
    DuckDB's default).

    For a CHECKPOINT that heals an "Out of Memory" under a limit: the checkpoint pins
    blocks to write them, and a checkpoint that cannot is fatal in DuckDB 2 ("database has
    been invalidated because of a previous fatal error"): every later statement of the
    process fails. Measured at 100,000 accounts, with the limit 256MB held full by
    landing's un-checkpointed keyed rows. (``then`` is the caller's: DuckDB shows a limit
    rounded, and a SET of what it shows comes back lower.)"""
    con.execute("RESET memory_limit")
    try:
        yield
    finally:
        if then is not None:
            con.execute(f"SET memory_limit = {_literal(then)}")
