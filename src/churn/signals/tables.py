"""Read-only access to the warehouse for the pure scoring code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from churn.errors import ScoringError


@dataclass(frozen=True)
class Tables:
    """The warehouse's core_* and history_* tables, for reading only.

    Signals run set-based SQL over whole tables; anything but one SELECT statement (as
    DuckDB's own parser classifies it) is refused, so a signal cannot write.
    """

    con: duckdb.DuckDBPyConnection

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        statements = duckdb.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ScoringError("signals may only read the warehouse (one SELECT statement)")
        table = self.con.sql(sql, params=dict(params or {})).to_arrow_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame
