"""Core and history rebuilt in chunks of ids, each chunk its own transaction.

:func:`~churn.pipelines.stripe.extract.refresh_core` redoes everything landed since the
last rebuild (``stripe_dirty``) in one transaction: at the end of a backfill that is every
object, and DuckDB holds the whole transaction's work (hundreds of MB at 2,000 accounts,
growing with the account). :func:`rebuild_core` gives the same rows a chunk of ids at a
time, so memory follows the chunk, not the account:

1. each stream's quarantine and core tables, for its dirty ids in spans of ``chunk`` ids
   (:class:`~churn.pipelines.stripe.normalise.Span`);
2. the subscriptions' history, in spans of a tenth of ``chunk`` (each subscription is
   tens of versions and billed periods), from the dirty subscriptions' invoice lines
   read once (:func:`~churn.pipelines.stripe.history.prepare_chunks`);
3. the customers' and payment methods' in-place history, span by span;
4. ``stripe_dirty`` emptied (``keep_pending``: kept).

Every step only derives rows from the raw tables and the steps before it, so a chunk done
twice gives the same rows. ``stripe_dirty`` is emptied last: a kill at any point leaves it
whole, and the next rebuild (the rerun's) does every chunk again. ``full`` first marks
every raw object dirty and empties the derived tables, in one transaction, so a kill
after it still leads to a whole rebuild.
"""

from __future__ import annotations

import logging

import duckdb

from churn.pipelines.stripe.history import (
    build_in_place_span,
    build_subscription_span,
    drop_chunks,
    in_place_spans,
    prepare_chunks,
    subscription_spans,
)
from churn.pipelines.stripe.normalise import normalise_span, spans
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


def rebuild_core(
    con: duckdb.DuckDBPyConnection,
    run_id: str | None = None,
    *,
    full: bool = False,
    keep_pending: bool = False,
    chunk: int = 10_000,
) -> tuple[int, int]:
    """Core and history for what landed since the last rebuild (``full``: for all), in
    chunks of at most ``chunk`` ids, each committed on its own (see the module
    docstring); not inside a transaction. Returns (quarantined, intervals), as
    :func:`~churn.pipelines.stripe.extract.refresh_core` does."""
    # What landing left in memory (the primary keys' indexes, the new row groups) written
    # to the file, where DuckDB can evict it under its memory limit.
    con.execute("CHECKPOINT")
    if full:
        with transaction(con):
            _mark_all_dirty(con)
    chunks = 0
    # Where the rebuild is, for the warning an "Out of Memory" gets (the caller redoes
    # the rebuild; which step met the limit is what a fix needs to know).
    at = "core"
    try:
        for stream in STREAMS:
            ids = f"SELECT id FROM stripe_dirty WHERE stream = '{stream.name}'"
            for span in spans(con, stream.name, ids, chunk):
                at = f"core of {stream.name}, chunk {chunks + 1}"
                with transaction(con):
                    normalise_span(con, stream, span, run_id)
                chunks += 1
                _committed("core", span.stream, chunks)
        at = "the history's preparation (prepare_chunks)"
        prepare_chunks(con)
        try:
            # A subscription's history reads all its versions and billed periods (tens of
            # rows, JSON each): a tenth of the ids per chunk.
            for span in subscription_spans(con, max(1, chunk // 10)):
                at = f"history of subscriptions, chunk {chunks + 1}"
                with transaction(con):
                    build_subscription_span(con, span)
                chunks += 1
                _committed("history", span.stream, chunks)
            for span in in_place_spans(con, chunk):
                at = f"in-place history of {span.stream}, chunk {chunks + 1}"
                with transaction(con):
                    build_in_place_span(con, span)
                chunks += 1
                _committed("history", span.stream, chunks)
        finally:
            drop_chunks(con)
    except duckdb.OutOfMemoryException:
        log.warning("Stripe core rebuild: out of memory in %s", at)
        raise
    with transaction(con):
        if not keep_pending:
            con.execute("DELETE FROM stripe_dirty")
    ((quarantined, intervals),) = con.execute(
        "SELECT (SELECT count(*) FROM quarantine WHERE source = 'stripe'), "
        "(SELECT count(*) FROM history_subscriptions)"
    ).fetchall()
    return int(quarantined), int(intervals)


def _committed(what: str, stream: str, n: int) -> None:
    # "rebuild chunk committed" is what the kill tests wait for between transactions.
    log.debug("stripe %s rebuild chunk committed (%s, chunk %d)", what, stream, n)


def _mark_all_dirty(con: duckdb.DuckDBPyConnection) -> None:
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
