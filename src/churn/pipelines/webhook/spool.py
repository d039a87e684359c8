"""The webhook spool: a SQLite file in WAL mode that the receiver writes and the worker drains.

DuckDB has one writer, and ``churn run`` holds it for minutes; a delivery must be durable
before it is acknowledged whatever the warehouse is doing. SQLite in WAL mode takes
writers from many threads and processes (each waits its turn on ``busy_timeout``) while
readers go on, and ``synchronous=FULL`` makes a commit survive a killed process and a
power cut. One row per event id (``INSERT OR IGNORE``): Stripe's redeliveries and
duplicates land once. Counters (refusals by reason, duplicates, ignored types) live in
the same file and are bumped in the same transaction as the row they count.

Statuses: ``pending`` (acknowledged, not yet landed), ``done`` (landed, rescored and
pushed), ``ignored`` (an event type the service does not use: kept and counted only),
``failed`` (an event that failed to land on its own ``max_attempts`` times: set aside,
counted, and left to the scheduled run's events read and reconciliation). Rows done or
ignored are pruned after ``keep_days``; a redelivery after that lands nothing twice
(``raw_stripe_event`` is keyed by event id).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    created INTEGER,
    livemode INTEGER,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done_at TEXT
);
CREATE INDEX IF NOT EXISTS spool_status ON spool (status, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

PENDING, DONE, IGNORED, FAILED = "pending", "done", "ignored", "failed"


def spool_path_for(db: Path, configured: Path | None = None) -> Path:
    """The spool file: the configured one, else ``<db>.webhook-spool.sqlite``."""
    return configured if configured is not None else db.with_name(db.name + ".webhook-spool.sqlite")


@dataclass(frozen=True)
class SpooledEvent:
    seq: int
    event_id: str
    type: str
    payload: str
    attempts: int

    def event(self) -> dict[str, Any]:
        obj = json.loads(self.payload)
        assert isinstance(obj, dict)
        return obj


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


class Spool:
    """One spool file. Each call opens its own connection: safe from any thread."""

    def __init__(self, path: Path, *, timeout_seconds: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (the write lock taken up front, so no upgrade deadlock)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _bump(con: sqlite3.Connection, name: str, n: int = 1) -> None:
        con.execute(
            "INSERT INTO counters (name, n) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
            [name, n],
        )

    def put(self, event: dict[str, Any], payload: str, *, used: bool) -> bool:
        """Store one verified event; False when its id was already there (a duplicate).

        Durable on return (WAL, ``synchronous=FULL``): only then may the receiver answer 2xx.
        """
        live = event.get("livemode")
        created = event.get("created")
        if not (isinstance(created, int) and -(2**63) <= created < 2**63):
            created = None  # kept in the payload as sent; landing judges it
        with self._write() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO spool (event_id, type, created, livemode, payload,"
                " received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    str(event["id"]),
                    str(event.get("type") or ""),
                    created,
                    int(live) if isinstance(live, bool) else None,
                    payload,
                    _now(),
                    PENDING if used else IGNORED,
                ],
            )
            new = cur.rowcount == 1
            self._bump(con, "accepted" if new else "duplicate")
            if new and not used:
                self._bump(con, "ignored_type")
        return new

    def count(self, name: str, n: int = 1) -> None:
        """Bump one counter (a refusal by reason, a worker outcome)."""
        with self._write() as con:
            self._bump(con, name, n)

    def claim(self, limit: int) -> list[SpooledEvent]:
        """The oldest pending events (at most ``limit``), their attempt counted.

        Nothing is locked: only one worker drains at a time (it holds the run lock), and
        an event is pending until :meth:`mark_done`, so a killed worker's batch is taken
        again by the next one.
        """
        with self._write() as con:
            rows = con.execute(
                "SELECT seq, event_id, type, payload, attempts FROM spool"
                " WHERE status = ? ORDER BY seq LIMIT ?",
                [PENDING, limit],
            ).fetchall()
            if rows:
                con.execute(
                    "UPDATE spool SET attempts = attempts + 1 WHERE seq BETWEEN ? AND ?"
                    " AND status = ?",
                    [rows[0][0], rows[-1][0], PENDING],
                )
        return [SpooledEvent(r[0], r[1], r[2], r[3], r[4] + 1) for r in rows]

    def mark_done(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._write() as con:
            con.executemany(
                "UPDATE spool SET status = ?, done_at = ? WHERE seq = ? AND status = ?",
                [(DONE, _now(), s, PENDING) for s in seqs],
            )
            self._bump(con, "processed", len(seqs))

    def set_aside(self, seqs: Sequence[int]) -> None:
        """Mark events that keep failing to land as ``failed`` (counted ``failed_events``)."""
        if not seqs:
            return
        with self._write() as con:
            con.executemany(
                "UPDATE spool SET status = ?, done_at = ? WHERE seq = ? AND status = ?",
                [(FAILED, _now(), s, PENDING) for s in seqs],
            )
            self._bump(con, "failed_events", len(seqs))

    def prune(self, keep_days: float) -> int:
        """Delete rows done or ignored more than ``keep_days`` ago; returns how many."""
        cutoff = (datetime.now(UTC).replace(tzinfo=None) - timedelta(days=keep_days)).isoformat()
        with self._write() as con:
            cur = con.execute(
                "DELETE FROM spool WHERE status IN (?, ?) AND coalesce(done_at, received_at) < ?",
                [DONE, IGNORED, cutoff],
            )
            return int(cur.rowcount)

    def pending(self) -> int:
        with self._connect() as con, closing(con.cursor()) as cur:
            row = cur.execute("SELECT count(*) FROM spool WHERE status = ?", [PENDING]).fetchone()
        return int(row[0]) if row else 0

    def counters(self) -> dict[str, int]:
        with self._connect() as con:
            rows = con.execute("SELECT name, n FROM counters ORDER BY name").fetchall()
            by_status = con.execute("SELECT status, count(*) FROM spool GROUP BY status").fetchall()
        out = {str(k): int(v) for k, v in rows}
        out.update({f"spool_{s}": int(n) for s, n in by_status})
        return out

    def event_ids(self, status: str | None = None) -> list[str]:
        with self._connect() as con:
            if status is None:
                rows = con.execute("SELECT event_id FROM spool ORDER BY seq").fetchall()
            else:
                rows = con.execute(
                    "SELECT event_id FROM spool WHERE status = ? ORDER BY seq", [status]
                ).fetchall()
        return [str(r[0]) for r in rows]
