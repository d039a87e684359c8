"""``churn export``: the marts as Parquet, partitioned by ``as_of``, for a warehouse engine.

A company that keeps its analytics in BigQuery, Snowflake, Spark or Trino loads the
scores from files rather than from DuckDB. Each mart is written as a Hive-partitioned
Parquet dataset, one file per snapshot under a partition per day
(``<out>/<mart>/as_of_date=YYYY-MM-DD/as_of=<stamp>.parquet``), the layout those engines
read natively (external tables, ``LOAD DATA``, ``COPY INTO``). The partition key
(``as_of_date``) is only in the path, never in the file, since some engines refuse a
column in both; the file keeps ``as_of`` itself, the snapshot's exact time.

The read copy is exported when there is one, so an export never waits for or blocks a
``churn run``; a partition already written is replaced, so exporting twice, or after a
re-score of the same ``as_of``, leaves one copy of each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from churn.errors import WarehouseError
from churn.warehouse.read_copy import connect_read_copy, read_copy_path

__all__ = ["MARTS", "ExportResult", "export_marts"]

#: The marts exported, each keyed by the snapshot time it was scored as of.
MARTS: tuple[str, ...] = ("account_health", "signal_events", "account_mrr", "mrr_movements")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: rows and snapshots per mart, and where."""

    out: Path
    rows: dict[str, int]
    snapshots: dict[str, int]
    source: Path


def _open(db: Path) -> tuple[duckdb.DuckDBPyConnection, Path]:
    if read_copy_path(db).exists():
        return connect_read_copy(db), read_copy_path(db)
    if not db.exists():
        raise WarehouseError(f"no warehouse at {db}: run `churn run` first")
    try:
        return duckdb.connect(str(db), read_only=True), db
    except duckdb.Error as exc:
        raise WarehouseError(f"cannot open the warehouse {db} read-only: {exc}") from exc


def _stamp(value: datetime) -> str:
    # No colons: several object stores and engines treat them as reserved in paths.
    return value.strftime("%Y-%m-%dT%H%M%S")


def export_marts(db: Path | str, out: Path | str, *, since: datetime | None = None) -> ExportResult:
    """Write every mart's snapshots (those at or after ``since``) under ``out``."""
    db, out = Path(db), Path(out)
    con, source = _open(db)
    rows: dict[str, int] = {}
    snapshots: dict[str, int] = {}
    try:
        con.execute("SET TimeZone = 'UTC'")
        for mart in MARTS:
            where = "" if since is None else "WHERE as_of >= ?"
            params = [] if since is None else [since]
            as_ofs = [
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT as_of FROM {mart} {where} ORDER BY as_of", params
                ).fetchall()
            ]
            rows[mart], snapshots[mart] = 0, len(as_ofs)
            for as_of in as_ofs:
                part = (
                    out / mart / f"as_of_date={as_of:%Y-%m-%d}" / f"as_of={_stamp(as_of)}.parquet"
                )
                staging = part.with_name(part.name + ".partial")
                part.parent.mkdir(parents=True, exist_ok=True)
                count = con.execute(f"SELECT count(*) FROM {mart} WHERE as_of = ?", [as_of])
                n = int(count.fetchone()[0])  # type: ignore[index]
                con.execute(
                    f"COPY (SELECT * FROM {mart} WHERE as_of = ? ORDER BY ALL) "
                    f"TO '{staging}' (FORMAT PARQUET, COMPRESSION ZSTD)",
                    [as_of],
                )
                # Written aside, then renamed over (atomic on one file system): a kill
                # mid-write leaves the old file (or none), never half a file in the dataset.
                staging.replace(part)
                rows[mart] += n
    finally:
        con.close()
    return ExportResult(out=out, rows=rows, snapshots=snapshots, source=source)
