"""Read-only access to the warehouse for the pure scoring code."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb
import polars as pl

from churn.errors import ScoringError

T = TypeVar("T")


@dataclass(frozen=True)
class Tables:
    """The warehouse's core_* and history_* tables, for reading only.

    Signals run set-based SQL over whole tables; anything but one SELECT statement (as
    DuckDB's own parser classifies it) is refused, so a signal cannot write.
    """

    con: duckdb.DuckDBPyConnection
    #: What :meth:`once` read, by key; lives and dies with this instance (one score).
    _memo: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def once(self, key: Hashable, read: Callable[[], T]) -> T:
        """``read()``, called once per instance and ``key``: what several signals of one
        score share (the plans the worded reasons name, the seat rows of two signals and
        the gaps). Each score makes its own instance (the job's scoring step and the
        webhook worker's batches alike), so nothing is shared across scores, where data
        may have landed in between, and the rows go with the instance."""
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        statements = duckdb.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ScoringError("signals may only read the warehouse (one SELECT statement)")
        table = self.con.sql(sql, params=dict(params or {})).to_arrow_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame

    def release_cache(self) -> None:
        """Hand back what DuckDB keeps of the blocks it has read (its buffer pool, up to
        its ``memory_limit``) before work outside DuckDB that needs the memory: a model's
        fit after its features' SQL (about 1 GB at 100,000 accounts). The pool evicts
        them under a momentary limit of a few MB; the limit is then set back. Where
        DuckDB cannot evict (pinned blocks), nothing changes."""
        rows = self.con.execute("SELECT current_setting('memory_limit')").fetchall()
        shown = re.fullmatch(r"(\d+(?:\.\d)?) ([KMGT]i?B)", str(rows[0][0]))
        if shown is None:
            return
        # DuckDB shows the limit cut to a tenth of its unit: set back half a tenth above,
        # it shows (and stays, call after call) the same; within 0.05 of the unit.
        limit = f"{float(shown[1]) + 0.05:.2f} {shown[2]}"
        try:
            self.con.execute("SET memory_limit = '16MB'")
        except duckdb.Error:
            return
        self.con.execute(f"SET memory_limit = '{limit}'")
