"""The read copy: a consistent snapshot of the warehouse that readers open while a run writes.

DuckDB lets one process write a file, or many processes read it, never both: a dashboard
holding the file open would stop ``churn run`` (and a run would stop the dashboard with a
lock error). So the job publishes a copy after each run, and readers open only the copy.

Publishing happens with the job's lock held and its connection closed (DuckDB checkpoints
on close, so the file holds every committed change and no write-ahead log): the file is
copied to a temporary name beside the copy, flushed to disk, then ``os.replace``-d over
the copy. ``os.replace`` is atomic on POSIX: a reader opening the copy sees the previous
run or this one, never half of one; a reader that has the old copy open keeps reading
its (now unlinked) file until it closes it.

A file copy was chosen over exporting tables (Parquet, ``COPY FROM DATABASE``): it costs a
sequential read and write of the file (about 1 s per GB), keeps every table and index the
readers may want (notebooks too), and needs no schema of its own to keep in step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from churn.errors import WarehouseError

__all__ = ["connect_read_copy", "publish_read_copy", "read_copy_path"]


def read_copy_path(db: Path | str) -> Path:
    """Where the read copy of ``db`` lives: ``data/churn.duckdb`` -> ``data/churn.read.duckdb``."""
    db = Path(db)
    return db.with_name(f"{db.stem}.read{db.suffix or '.duckdb'}")


def publish_read_copy(db: Path | str) -> Path:
    """Copy the closed warehouse ``db`` atomically over its read copy; returns the copy's path.

    The caller must hold the job's lock and have closed its connection, so nothing writes
    ``db`` while it is copied.
    """
    db = Path(db)
    wal = db.with_name(db.name + ".wal")
    if wal.exists() and wal.stat().st_size > 0:
        # Closed cleanly, DuckDB leaves no log; one here means a connection is still open.
        raise WarehouseError(f"{db} has a write-ahead log: close it before publishing")
    target = read_copy_path(db)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with db.open("rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, length=16 * 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WarehouseError(f"cannot publish the read copy {target}: {exc.strerror}") from exc
    return target


def connect_read_copy(db: Path | str) -> duckdb.DuckDBPyConnection:
    """Open the read copy of ``db`` read-only (never the file a run writes)."""
    path = read_copy_path(db)
    if not path.exists():
        raise WarehouseError(
            f"no read copy {path} yet: it is published at the end of each `churn run`"
        )
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot open the read copy {path}: {exc}") from exc
    con.execute("SET TimeZone = 'UTC'")
    return con
