"""Read-only access to the warehouse for the pure scoring code."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

_READ = re.compile(r"^\s*(WITH|SELECT|FROM)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Tables:
    """The warehouse's core_* and history_* tables, for reading only.

    Signals run set-based SQL over whole tables; a statement that does not start with
    SELECT/WITH/FROM is refused, so a signal cannot write.
    """

    con: duckdb.DuckDBPyConnection

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        if not _READ.match(sql):
            raise PermissionError("signals may only read the warehouse")
        table = self.con.sql(sql, params=dict(params or {})).to_arrow_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame
