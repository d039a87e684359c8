"""Core and history rebuilt in chunks of ids, each chunk its own transaction.

:func:`~churn.pipelines.stripe.extract.refresh_core` redoes everything landed since the
last rebuild (``stripe_dirty``) in one transaction: at the end of a backfill that is every
object, and DuckDB holds the whole transaction's work (hundreds of MB at 2,000 accounts,
growing with the account). :func:`rebuild_core` gives the same rows a chunk of ids at a
time, so memory follows the chunk, not the account:

1. each stream's quarantine and core tables, for its dirty ids in spans of ``chunk`` ids
   (:class:`~churn.pipelines.stripe.normalise.Span`; when every one has its raw row,
   spans of ``chunk`` raw rows in the table's order: ``row_spans``);
2. the subscriptions' history, in spans of a tenth of ``chunk`` (each subscription is
   tens of versions and billed periods), from the dirty subscriptions' invoice lines
   read once (:func:`~churn.pipelines.stripe.history.prepare_chunks`) and, for more than
   one span, their versions sorted once (``prepare_version_rows``);
3. the customers' and payment methods' in-place history, span by span;
4. ``stripe_dirty`` emptied (``keep_pending``: kept; :func:`forget_pending`).

Every step only derives rows from the raw tables and the steps before it, so a chunk done
twice gives the same rows. That is also what makes a chunk out of memory safe to do
again in halves (:func:`~churn.pipelines.stripe.normalise.halve`), down to one id,
under the same limit. ``stripe_dirty`` is emptied last: a kill at any point leaves it
whole, and the next rebuild (the rerun's) does every chunk again. A whole rebuild is
:func:`mark_all_dirty` first (every raw object pending, the derived tables emptied, in one
transaction, so a kill after it still leads to a whole rebuild), then this; the extract
marks at the connection's own memory limit, before it sets the rebuild's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from churn.pipelines.stripe.history import (
    IN_PLACE_IDS,
    build_in_place_span,
    build_subscription_span,
    drop_chunks,
    in_place_spans,
    prepare_chunks,
    prepare_version_rows,
    subscription_spans,
)
from churn.pipelines.stripe.normalise import (
    Span,
    dirty_ids,
    halve,
    normalise_span,
    row_spans,
    spans,
)
from churn.pipelines.stripe.streams import STREAMS
from churn.warehouse import transaction

log = logging.getLogger(__name__)

#: What a whole rebuild empties besides the core tables.
_DERIVED = (
    "history_subscriptions",
    "history_subscription_items",
    "history_customer_defaults",
    "history_payment_methods",
)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild leaves: the Stripe quarantine's rows, the subscription history's
    intervals, and how many chunks met the memory limit and were done again in halves."""

    quarantined: int
    intervals: int
    chunks_split: int = 0


def rebuild_core(
    con: duckdb.DuckDBPyConnection,
    run_id: str | None = None,
    *,
    keep_pending: bool = False,
    chunk: int = 10_000,
) -> Rebuilt:
    """Core and history for what landed since the last rebuild (all of it after
    :func:`mark_all_dirty`), in chunks of at most ``chunk`` ids, each committed on its own
    (see the module docstring); not inside a transaction.

    A chunk that runs out of memory is rolled back and done again in two halves, down to
    one id: memory stays under the limit the caller set, where a whole redo without it
    would hold what the limit was there to bound. Only a chunk of one id (or the
    history's preparation) out of memory raises ``duckdb.OutOfMemoryException``.
    """
    done = _Chunks(con)
    try:
        for stream in STREAMS:
            done.each("core", f"core of {stream.name}",
                      row_spans(con, stream.name, chunk)
                      or spans(con, stream.name, dirty_ids(stream.name), chunk), dirty_ids,
                      functools.partial(normalise_span, con, stream, run_id=run_id))  # fmt: skip
        done.at = "the history's preparation (prepare_chunks)"
        prepare_chunks(con)
        try:
            # A subscription's history reads all its versions and billed periods (tens of
            # rows, JSON each): a tenth of the ids per chunk.
            subs = subscription_spans(con, max(1, chunk // 10))
            sorted_rows = len(subs) > 1
            if sorted_rows:
                prepare_version_rows(con)
            done.each("history", "history of subscriptions", subs, dirty_ids,
                      functools.partial(build_subscription_span, con, sorted_rows=sorted_rows))  # fmt: skip
            done.each("history", "in-place history of {stream}", in_place_spans(con, chunk),
                      IN_PLACE_IDS.__getitem__, functools.partial(build_in_place_span, con))  # fmt: skip
        finally:
            drop_chunks(con)
    except duckdb.OutOfMemoryException:
        # Where, and what DuckDB held then: what whoever bounds that step next needs.
        log.warning("Stripe core rebuild: out of memory in %s (%s)", done.at, _held(con))
        raise
    with transaction(con):
        if not keep_pending:
            forget_pending(con)
    ((quarantined, intervals),) = con.execute(
        "SELECT (SELECT count(*) FROM quarantine WHERE source = 'stripe'), "
        "(SELECT count(*) FROM history_subscriptions)"
    ).fetchall()
    return Rebuilt(int(quarantined), int(intervals), done.split)


@dataclass
class _Chunks:
    """The rebuild's chunks as they commit: where it is (for the warning an "Out of
    Memory" gets), how many committed and how many were split."""

    con: duckdb.DuckDBPyConnection
    committed: int = 0
    split: int = 0
    at: str = "core"

    def each(
        self,
        what: str,
        where: str,
        todo: list[Span],
        ids: Callable[[str], str],
        work: Callable[[Span], None],
    ) -> None:
        """``work`` for each span, each in its own transaction. A span out of memory is
        rolled back and its halves done in its place (``ids``: the SQL a stream's spans
        were cut from). ``what`` is the committed-chunk log's kind (core, history);
        ``where`` names the step in messages (``{stream}``: the span's)."""
        stack = list(reversed(todo))
        while stack:
            span = stack.pop()
            self.at = f"{where.format(stream=span.stream)}, chunk {self.committed + 1}"
            try:
                with transaction(self.con):
                    work(span)
            except duckdb.OutOfMemoryException:
                halves = halve(self.con, span, ids(span.stream))
                if halves is None:
                    raise
                self.split += 1
                log.info("Stripe core rebuild: out of memory in %s, done in halves", self.at)
                stack.extend(reversed(halves))
                continue
            self.committed += 1
            _committed(what, span.stream, self.committed)


def _held(con: duckdb.DuckDBPyConnection) -> str:
    """What DuckDB holds, by kind ("ART_INDEX 150MB, ..."): no data, only sizes."""
    try:
        rows = con.execute(
            "SELECT tag, memory_usage_bytes // 1000000 FROM duckdb_memory()"
            " WHERE memory_usage_bytes >= 1000000 ORDER BY 2 DESC"
        ).fetchall()
    except duckdb.Error:
        return "memory by kind unknown"
    return ", ".join(f"{tag} {mb}MB" for tag, mb in rows) or "under 1MB"


def _committed(what: str, stream: str, n: int) -> None:
    # "rebuild chunk committed" is what the kill tests wait for between transactions.
    log.debug("stripe %s rebuild chunk committed (%s, chunk %d)", what, stream, n)


def forget_pending(con: duckdb.DuckDBPyConnection) -> None:
    """Empty ``stripe_dirty`` (the caller's transaction): the table dropped and created
    again from its own definition, key included.

    Not ``DELETE``: DuckDB takes each deleted row out of the table's key index when the
    transaction commits, one row at a time. After a backfill every object is pending:
    the commit took 6.4 s of a 67 s Stripe step at 10,000 accounts (316,000 rows), and
    60 s for the 3.19 million of a 100,000-account warehouse; the drop commits at once,
    and a kill before the commit leaves every row, as a kill before the delete's did.
    """
    ((ddl,),) = con.execute(
        "SELECT sql FROM duckdb_tables() WHERE table_name = 'stripe_dirty'"
        " AND database_name = current_database() AND schema_name = current_schema()"
    ).fetchall()
    con.execute("DROP TABLE stripe_dirty")
    con.execute(ddl)


def mark_all_dirty(con: duckdb.DuckDBPyConnection) -> None:
    """Every raw object pending, and what is derived from them emptied: a whole rebuild
    is then the rebuild of everything pending (the caller's transaction)."""
    for stream in STREAMS:
        con.execute(
            f"INSERT INTO stripe_dirty SELECT '{stream.name}', id FROM {stream.table} "
            "ON CONFLICT DO NOTHING"
        )
        for core in stream.core:
            con.execute(f"DELETE FROM {core.name}")
    con.execute(
        "INSERT INTO stripe_dirty SELECT DISTINCT 'subscription', subscription_id "
        "FROM stripe_subscription_versions ON CONFLICT DO NOTHING"
    )
    for table in _DERIVED:
        con.execute(f"DELETE FROM {table}")
    con.execute("DELETE FROM quarantine WHERE source = 'stripe'")
