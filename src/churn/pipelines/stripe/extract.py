"""The Stripe extract: backfill, events, reconciliation, then core and history.

- First run (or ``full``): list every stream, a page per transaction together with the
  stream's progress in ``sync_state`` (``backfill:<stream>``), so a killed backfill
  resumes after its last committed page without duplicates; then every event Stripe
  still keeps (30 days), so the recent past's changes carry their own times.
- Later runs: ``/v1/events`` from the stored cursor minus an overlap, de-duplicated by
  event id against ``raw_stripe_event``, sorted by ``created`` here (servers differ in
  order), applied newer-over-older in chunks, each chunk in one transaction with the
  cursor it advances to.
- Reconciliation (``reconcile``, or by itself when the events cursor is older than
  Stripe's event retention or the last one is older than ``reconcile_every_hours``):
  re-list the mutable streams, diff against the raw tables, land what events missed and
  count each difference (new, changed, gone -> kept as deleted).
- Then ``core_*`` and the history are redone for the objects landed since the last
  rebuild (``stripe_dirty``; ``full``: for all), in chunks of ids, each chunk its own
  transaction (:mod:`churn.pipelines.stripe.rebuild`); all of it under
  ``stripe.extract_memory_limit``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import stripe
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn.errors import (
    ChurnError,
    ModeMismatchError,
    PartialRunError,
    StripeExtractError,
    StripeRequestError,
    WarehouseError,
)
from churn.pipelines.stripe import land as stripe_land
from churn.pipelines.stripe.client import StripeApi, make_stripe_client
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.land import (
    Landable,
    Version,
    all_pending,
    check_mode,
    land,
    land_prepared,
    landable,
    mark_deleted,
)
from churn.pipelines.stripe.normalise import normalise
from churn.pipelines.stripe.partial import QUARANTINE_SOURCE, is_partial, missing_fields
from churn.pipelines.stripe.rebuild import forget_pending, mark_all_dirty, rebuild_core
from churn.pipelines.stripe.streams import (
    LISTED,
    OBJECT_TABLES,
    STREAMS,
    STREAMS_BY_NAME,
    Stream,
    embedded_table,
    flatten,
)
from churn.settings import Settings
from churn.warehouse import (
    memory_limited,
    memory_unbounded,
    read_state,
    transaction,
    utcnow,
    write_state,
)

log = logging.getLogger(__name__)

EVENTS = "stripe:events"
RECONCILE = "stripe:reconcile"
BACKFILL_PREFIX = "stripe:backfill:"
#: A read's events as staged in ``_events_read``.
_STAGED = pa.schema(
    [
        ("id", pa.string()),
        ("listed", pa.int64()),
        ("created", pa.int64()),
        ("object_id", pa.string()),
        ("payload", pa.string()),
    ]
)


@dataclass
class _Page:
    """One listed page made ready to land (:func:`~.land.landable`): by table, the
    stream's objects (flattened) and what they embed, each as canonical text; made by
    whoever read the page, so the writer only lands it."""

    by_table: dict[str, list[Landable]]
    last_id: str | None  # the page's last object: the stream's cursor after it
    fetched: datetime


@dataclass
class _Fetched:
    """What a backfill's reader hands the writer: a page of one stream, the end of a
    stream (``finished``), the end of a reader (no ``stream``), or a reader's failure."""

    stream: Stream | None
    page: _Page | None
    has_more: bool
    path: str | None
    fetched: datetime
    finished: bool = False
    error: BaseException | None = None
    #: From the events reader: a page of events to stage, or (``events_end``) its end,
    #: with ``error`` when the read failed.
    events: pa.Table | None = None
    events_end: bool = False


@dataclass
class StripeExtractResult:
    """What one extract did: ``counts`` by kind, ``api_calls`` made (retries included)."""

    mode: str  # backfill | incremental
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    seconds: float = 0.0
    reconciled: bool = False
    run_id: str = ""

    def add(self, key: str, n: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def extract_stripe(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    reconcile: bool = False,
    full: bool = False,
    progress: bool = True,
    summary: bool | None = None,
    http_client: stripe.HTTPClient | None = None,
) -> StripeExtractResult:
    """Land Stripe in the warehouse; see the module docstring.

    Raises :class:`PartialRunError` (saying what landed) when a failure came after some
    work was committed, the :class:`StripeExtractError` itself when nothing landed.
    """
    started = time.monotonic()
    api = StripeApi(make_stripe_client(settings.stripe, http_client), settings.stripe)
    run = _Run(settings, con, api, progress)
    backfilling = full or not run.backfill_complete()
    result = StripeExtractResult(mode="backfill" if backfilling else "incremental")
    result.run_id = run.run_id
    run.result = result
    _log_start(con, run.run_id)
    failure: ChurnError | None = None
    try:
        with run.progress_bar(), _memory_limit(con, settings):
            if backfilling:
                run.backfill(full=full)
                # The events Stripe still keeps (30 days) are history a first run has too.
                run.events()
            else:
                # Decided before reading events, which move the cursor forward.
                due = run.reconcile_due()
                stale = run.cursor_stale()
                run.events()
                if reconcile or due:
                    # Only a scheduled one may skip old invoices: an explicit one is asked
                    # for, and a stale cursor may hide changes of any age.
                    run.reconcile(windowed=not (reconcile or stale))
    except StripeExtractError as exc:
        failure = exc
    except duckdb.Error as exc:
        failure = WarehouseError(f"Stripe extract could not write the warehouse: {exc}")
    finally:
        result.api_calls = api.calls
    # A backfill stopped part-way by a failure still builds core from what landed (a
    # stream that fails every run, such as one a restricted key may not read, must not
    # keep the rest from being scored), but keeps it pending: streams read concurrently
    # stop at different points (a subscription's invoices half landed), so the run that
    # completes the backfill builds those objects and their history again, whole.
    partial_backfill = backfilling and failure is not None and not run.backfill_complete()
    # In chunks of ids, each committed on its own (churn.pipelines.stripe.rebuild): the
    # rows a single transaction gives, in memory that follows the chunk, not the account.
    rebuild = functools.partial(
        rebuild_core,
        con,
        run.run_id,
        keep_pending=partial_backfill,
        chunk=settings.stripe.rebuild_chunk_ids,
    )
    if full:
        # Every raw object pending and the derived tables emptied, in one transaction (a
        # kill after it still leads to a whole rebuild), at the connection's own memory
        # limit: 3.2 M keyed rows at 100,000 accounts ran out of the extract's 256MB
        # within 32 s, and the whole rebuild was then redone without it.
        with transaction(con):
            mark_all_dirty(con)
    try:
        if backfilling:
            # What a backfill's landing left in memory (the keys' indexes, new row groups)
            # written to the file, where the rebuild's memory limit can evict it; at the
            # connection's own limit: under the extract's, a checkpoint that cannot pin a
            # block is fatal. Not after a few events: each checkpoint writes the changed
            # tables' key indexes whole (1.0-1.3 s at 100,000 accounts), and DuckDB's own
            # next one (the scoring's, or on close) writes them anyway.
            con.execute("CHECKPOINT")
        with _memory_limit(con, settings):
            rebuilt = rebuild()
    except duckdb.OutOfMemoryException:
        # Chunks out of memory are done again in halves under the limit; this is a chunk
        # of one id, or the history's preparation (every dirty subscription's invoice
        # lines at once). Rather than fail the run, the rebuild is done again (it is
        # idempotent, and what is pending is kept until it ends) under the connection's
        # own limit, and the run says so.
        log.warning(
            "Stripe core rebuild: out of memory under STRIPE_EXTRACT_MEMORY_LIMIT=%s;"
            " redone under the warehouse connection's limit (raise the setting)",
            settings.stripe.extract_memory_limit,
        )
        result.add("rebuild_out_of_memory", 1)
        rebuilt = rebuild()
    quarantined, intervals = rebuilt.quarantined, rebuilt.intervals
    if rebuilt.chunks_split:
        result.add("rebuild_chunks_split", rebuilt.chunks_split)
    result.add("quarantined", quarantined)
    result.add("history_intervals", intervals)
    result.seconds = round(time.monotonic() - started, 3)
    landed = {k: v for k, v in result.counts.items() if v and k.startswith(("objects", "events"))}
    _log_end(con, result, failure, partial=bool(landed))
    if progress if summary is None else summary:
        _summary(result)
    if failure is not None:
        if landed and not isinstance(failure, ModeMismatchError):
            raise PartialRunError(
                f"Stripe extract stopped part-way: {failure}. Landed before that: "
                + ", ".join(f"{k}={v}" for k, v in sorted(landed.items()))
                + f"; {result.api_calls} API calls. Rerun to resume."
            ) from failure
        raise failure
    return result


def backfilled(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the account's backfill is complete: the next extract reads events."""
    state = read_state(con, BACKFILL_PREFIX + "all")
    return bool(state is not None and (state.details or {}).get("done"))


def _memory_limit(
    con: duckdb.DuckDBPyConnection, settings: Settings
) -> AbstractContextManager[None]:
    """DuckDB held to ``stripe.extract_memory_limit`` inside (restored after), unless
    ``run.duckdb_memory_limit`` bounds the whole run."""
    return memory_limited(con, settings.run.step_memory_limit(settings.stripe.extract_memory_limit))


def _limit_in_force(settings: Settings) -> str | None:
    """The memory limit the extract runs under (None: DuckDB's default)."""
    return (
        settings.run.step_memory_limit(settings.stripe.extract_memory_limit)
        or settings.run.duckdb_memory_limit
    )


def refresh_core(
    con: duckdb.DuckDBPyConnection,
    run_id: str | None = None,
    *,
    full: bool = False,
    keep_pending: bool = False,
) -> tuple[int, int]:
    """Core and history for what landed since the last refresh (``full``: for everything),
    then forget what was pending (``keep_pending``: keep it, for the next refresh to build
    again); the caller's transaction. Returns (quarantined, intervals).
    """
    quarantined = normalise(con, run_id, full=full)
    intervals = build_history(con, full=full)
    if not keep_pending:
        forget_pending(con)
    return quarantined, intervals


class _Run:
    def __init__(
        self, settings: Settings, con: duckdb.DuckDBPyConnection, api: StripeApi, progress: bool
    ) -> None:
        self.settings = settings
        self.con = con
        self.api = api
        self.show = progress
        self.run_id = f"stripe-{uuid.uuid4().hex[:12]}"
        self.result = StripeExtractResult(mode="")
        self._progress: Progress | None = None
        #: Streams whose ``expand`` the API refused in this run.
        self._no_expand: set[str] = set()
        #: Optional streams whose listing answered 404 (an API or stand-in without them).
        self._unserved: set[str] = set()
        #: A concurrent backfill's streams' committed state, read before the readers start.
        self._state_of: dict[str, tuple[str | None, datetime | None, dict[str, Any]]] = {}
        #: The events read staged during a concurrent backfill: when it began, and how
        #: it failed (raised by :meth:`events`, after the listing, as a read made then).
        self._events_staged: datetime | None = None
        self._events_failure: BaseException | None = None

    # -- state -------------------------------------------------------------------------

    def _state(self, stream: str) -> tuple[str | None, datetime | None, dict[str, Any]]:
        state = read_state(self.con, stream)
        if state is None:
            return None, None, {}
        return state.cursor, state.cursor_ts, state.details or {}

    def _set_state(
        self,
        stream: str,
        cursor: str | None,
        cursor_ts: datetime | None,
        details: dict[str, Any],
    ) -> None:
        write_state(self.con, stream, cursor=cursor, cursor_ts=cursor_ts, details=details)

    def backfill_complete(self) -> bool:
        return backfilled(self.con)

    def cursor_stale(self) -> bool:
        """Events were last read longer ago than Stripe keeps them: a gap is possible."""
        _, _, ev = self._state(EVENTS)
        polled = ev.get("polled_at")
        retention = timedelta(days=self.settings.stripe.event_retention_days)
        return polled is None or datetime.fromisoformat(polled) < utcnow() - retention

    def reconcile_due(self) -> bool:
        now = utcnow()
        if self.cursor_stale():
            return True
        hours = self.settings.stripe.reconcile_every_hours
        if hours <= 0:
            return False
        _, last, _ = self._state(RECONCILE)
        return last is None or last < now - timedelta(hours=hours)

    # -- progress ----------------------------------------------------------------------

    def progress_bar(self) -> Progress:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            TextColumn("{task.completed} objects"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not self.show,
            transient=False,
        )
        return self._progress

    def _task(self, description: str) -> Any:
        assert self._progress is not None
        return self._progress.add_task(description, total=None)

    def _advance(self, task: Any, n: int) -> None:
        assert self._progress is not None
        self._progress.advance(task, n)

    def _finish(self, task: Any) -> None:
        assert self._progress is not None
        done = next((t.completed for t in self._progress.tasks if t.id == task), 0)
        self._progress.update(task, total=done, completed=done)

    # -- listing -----------------------------------------------------------------------

    def _pages(
        self, stream: Stream, starting_after: str | None, path: str | None
    ) -> Iterator[tuple[list[dict[str, Any]], bool, str]]:
        """Pages of one list endpoint: (objects, has_more, path asked)."""
        if path is None:
            raise StripeExtractError(f"stream {stream.name} is not listed")
        resuming = starting_after is not None
        while True:
            params: dict[str, Any] = {"limit": self.settings.stripe.page_size, **stream.params}
            if stream.name in self._no_expand:
                params.pop("expand", None)
            if starting_after:
                params["starting_after"] = starting_after
            try:
                page = self.api.get(stream.name, path, params)
            except StripeRequestError as exc:
                if exc.http_status == 400 and "expand" in params and "expand" in str(exc).lower():
                    # An older API version (or stand-in) that cannot expand a field: list
                    # without expanding; the embedded payment methods then come by events.
                    log.warning(
                        "stream %s: cannot expand %s (%s); listing without it",
                        stream.name,
                        params["expand"],
                        exc,
                    )
                    self._no_expand.add(stream.name)
                    continue
                if exc.http_status in (400, 404) and starting_after and resuming:
                    # The object a resumed backfill continues after is gone: list the
                    # stream from its start again (landing is idempotent).
                    log.warning(
                        "stream %s: cannot resume after %s; listing from the start",
                        stream.name,
                        starting_after,
                    )
                    starting_after, resuming = None, False
                    continue
                if exc.http_status == 404 and stream.fallback_path and path != stream.fallback_path:
                    log.info(
                        "stream %s: %s not found, listing %s",
                        stream.name,
                        path,
                        stream.fallback_path,
                    )
                    path = stream.fallback_path
                    continue
                if exc.http_status == 404 and stream.optional:
                    # Not served here (an older API version, localstripe): none to list.
                    log.info("stream %s: %s not found, nothing to list", stream.name, path)
                    self._unserved.add(stream.name)
                    return
                raise
            objects = [o for o in page.get("data") or [] if isinstance(o, dict) and "id" in o]
            has_more = bool(page.get("has_more")) and bool(objects)
            if stream.name == "subscription":
                objects = [with_items(o, self._more_items(o)) for o in objects]
            resuming = False
            yield objects, has_more, path
            if not has_more:
                return
            starting_after = objects[-1]["id"]

    def _more_items(self, sub: dict[str, Any]) -> list[dict[str, Any]]:
        """A subscription's items beyond the page embedded in it (``items.has_more``)."""
        items = sub.get("items")
        if not (isinstance(items, dict) and items.get("has_more")):
            return []
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"subscription": sub["id"], "limit": 100}
            if after:
                params["starting_after"] = after
            page = self.api.get("subscription", "/v1/subscription_items", params)
            data = [i for i in page.get("data") or [] if isinstance(i, dict) and "id" in i]
            found.extend(data)
            if not (page.get("has_more") and data):
                return found
            after = data[-1]["id"]

    def _prepare_page(
        self, stream: Stream, objects: list[dict[str, Any]], fetched: datetime, source: str
    ) -> _Page:
        """A listed page made ready to land, versioned by its fetch time; refuses objects
        of the other mode than the key's (nothing of the page lands)."""
        where = f"stream {stream.name}"
        check_mode(self.settings.stripe.key_mode, objects, where)
        # Lists of the same second: the later fetch wins (sequence = its microsecond).
        version = Version(
            source,
            stripe_land.list_version_ts(fetched),
            fetched.microsecond,
            "",
            self.api.api_version,
        )
        by_table: dict[str, list[Landable]] = {stream.name: []}
        for obj in objects:
            flat, inner = flatten(obj)
            by_table[stream.name].append(landable(flat, version))
            if inner:
                check_mode(self.settings.stripe.key_mode, inner, where)
            for e in inner:
                by_table.setdefault(embedded_table(e), []).append(landable(e, version))
        return _Page(by_table, objects[-1]["id"] if objects else None, fetched)

    def _commit_pages(
        self, stream: Stream, pages: list[_Page], cursor: str | None, path: str | None, done: bool
    ) -> int:
        """Land a backfill's batch of ``stream``'s pages with its cursor after them, in one
        transaction; returns the objects landed.

        A backfill's own pages are new to the table (the cursor is committed with each
        batch, so a resumed listing goes on after the last one landed): they go in by
        plain inserts first (``new_only``, :func:`churn.pipelines.stripe.land.land_prepared`).
        When some id is stored after all (a listing started again from the top, an object
        an event landed first), the transaction is rolled back and the batch lands again
        the general way. When DuckDB runs out of memory in it, the transaction is done
        again once after a CHECKPOINT: a checkpoint writes what landing holds in memory
        between DuckDB's own (new rows, their keys' index entries) to the file, where the
        memory limit can evict it. It is made above the limit: DuckDB makes a checkpoint
        that cannot pin a block fatal to the database. A backfill at 100,000 accounts met
        the 256MB limit once part-way through its listing and stopped partial (not seen in
        the runs before and after it). A rolled-back batch is landed whole again: the same
        rows."""

        def land(new_only: bool) -> int:
            with transaction(self.con):
                n = self._land_pages(stream, pages, new_only=new_only)
                self._set_state(BACKFILL_PREFIX + stream.name, cursor, pages[-1].fetched,
                                {"done": done, "path": path})  # fmt: skip
            return n

        def healing(new_only: bool) -> int:
            try:
                return land(new_only)
            except duckdb.OutOfMemoryException:
                log.warning(
                    "stream %s: out of memory while landing a batch; checkpointed, landing"
                    " it again",
                    stream.name,
                )
                self.result.add("landing_out_of_memory", 1)
                # above the limit: a checkpoint that cannot pin a block is fatal
                with memory_unbounded(self.con, _limit_in_force(self.settings)):
                    self.con.execute("CHECKPOINT")
                return land(new_only)

        try:
            return healing(True)
        except duckdb.ConstraintException:
            self.result.add("batches_with_stored_ids", 1)
            return healing(False)

    def _land_pages(self, stream: Stream, pages: list[_Page], *, new_only: bool = False) -> int:
        """Land prepared pages in one statement per table (inside the caller's
        transaction); each object keeps its own page's version. ``new_only`` is for the
        stream's own objects; the objects embedded in them (a price in many items, a
        payment method in several customers) land the general way."""
        fetched = pages[-1].fetched if pages else utcnow()
        by_table: dict[str, list[Landable]] = {stream.name: []}
        for page in pages:
            for table, rows in page.by_table.items():
                by_table.setdefault(table, []).extend(rows)
        main = by_table.pop(stream.name)
        land_prepared(self.con, stream.name, main, fetched, new_only=new_only)
        for table, rows in sorted(by_table.items()):
            land_prepared(self.con, table, rows, fetched)
            self.result.add(f"objects_{table}", len(rows))
        self.result.add(f"objects_{stream.name}", len(main))
        return len(main)

    # -- backfill ----------------------------------------------------------------------

    def backfill(self, *, full: bool) -> None:
        started = utcnow()
        with transaction(self.con):
            if full:
                self.con.execute(
                    "DELETE FROM sync_state WHERE starts_with(stream, ?)", [BACKFILL_PREFIX]
                )
            _, cursor_ts, _ = self._state(EVENTS)
            if cursor_ts is None:
                # Events from now on are read after the backfill: nothing falls between;
                # and the first read takes every event Stripe still keeps ("List events,
                # going back up to 30 days"), so the recent past's changes come with their
                # own times. Pending until that read is whole: a killed one is redone.
                self._set_state(
                    EVENTS, None, started, {"polled_at": started.isoformat(), "retained": "pending"}
                )
            _, _, meta = self._state(BACKFILL_PREFIX + "all")
            if "started_at" not in meta:
                self._set_state(
                    BACKFILL_PREFIX + "all", None, started, {"started_at": started.isoformat()}
                )
        todo = [s for s in LISTED if not self._state(BACKFILL_PREFIX + s.name)[2].get("done")]
        workers = min(self.settings.stripe.concurrency, len(todo))
        if workers <= 1:
            for stream in todo:
                self._backfill_stream(stream)
        else:
            self._backfill_concurrently(todo, workers)
        with transaction(self.con):
            _, _, meta = self._state(BACKFILL_PREFIX + "all")
            began = datetime.fromisoformat(meta.get("started_at", started.isoformat()))
            self._set_state(BACKFILL_PREFIX + "all", None, began, {**meta, "done": True})
            self._set_state(RECONCILE, None, began, {"by": "backfill"})

    def _backfill_stream(self, stream: Stream) -> None:
        key = BACKFILL_PREFIX + stream.name
        cursor, _, details = self._state(key)
        if details.get("done"):
            return
        task = self._task(stream.name)
        # Several pages per transaction: a statement's fixed cost (about 40 ms against a
        # million-row table) paid once per batch instead of once per 100 objects. The
        # cursor still moves with the rows it covers; a kill loses at most one batch.
        batch: list[_Page] = []
        last, path = cursor, details.get("path", stream.path)

        def commit(done: bool) -> None:
            nonlocal batch
            n = self._commit_pages(stream, batch, last, path, done)
            # "page committed" is what the kill tests wait for between transactions.
            log.debug("stream %s: page committed (%d pages, %d objects, after %s)",
                      stream.name, len(batch), n, last)  # fmt: skip
            self._advance(task, n)
            batch = []

        try:
            for objects, has_more, asked in self._pages(stream, cursor, path):
                page = self._prepare_page(stream, objects, utcnow(), "list")
                batch.append(page)
                path = asked  # the path that answered (/v1/plans on an old API)
                last = page.last_id or last
                if not has_more or len(batch) >= self.settings.stripe.land_batch_pages:
                    commit(done=not has_more)
        except StripeExtractError:
            if batch:  # what was fetched before the failure lands: the rerun goes on from it
                commit(done=False)
            raise
        self._finish(task)

    def _backfill_concurrently(self, streams: list[Stream], workers: int) -> None:
        """List ``streams`` with ``workers`` threads, one stream per thread at a time (a
        stream's pages follow each other's cursor), under the API's shared rate limiter.

        Beside the streams, one more reader lists the events (an endpoint of its own,
        with its own rate limit), which this thread stages for :meth:`events` to apply
        after the listing (applied beside it, their temporary tables and the landing
        met DuckDB's memory limit at 100,000 accounts). A failure of that read does not
        stop the listing: :meth:`events` raises it, as when it read them itself.

        This thread is the warehouse's only writer: it lands each stream's pages in
        batches of ``land_batch_pages``, in the stream's order, with the stream's cursor
        in the same transaction, exactly as the one-stream-at-a-time backfill does; so a
        kill at any point leaves every stream at its last committed batch. The queue
        between the readers and the writer is bounded: memory is a few batches of pages,
        whatever the account's size. On a failure the readers stop, what was fetched
        lands (the rerun goes on from it) and the first failure is raised.
        """
        size = self.settings.stripe.land_batch_pages
        pages: queue.Queue[_Fetched] = queue.Queue(maxsize=max(2, workers * 2))
        todo: queue.Queue[Stream] = queue.Queue()
        for stream in streams:
            todo.put(stream)
        stop = threading.Event()

        def put(item: _Fetched) -> bool:
            # A page fetched when a failure stopped the readers still lands if there is
            # room: what was fetched lands.
            return _hand_over(pages, item, stop)

        def read() -> None:
            while not stop.is_set():
                try:
                    stream = todo.get_nowait()
                except queue.Empty:
                    break
                cursor, _, details = self._state_of[stream.name]
                path = details.get("path", stream.path)
                try:
                    for objects, has_more, asked in self._pages(stream, cursor, path):
                        # Flattened and written as text here, beside the other readers:
                        # the writer's thread only lands, and the queue holds text.
                        page = self._prepare_page(stream, objects, utcnow(), "list")
                        if not put(_Fetched(stream, page, has_more, asked, page.fetched)):
                            return
                    if not put(_Fetched(stream, None, False, None, utcnow(), finished=True)):
                        return
                except BaseException as exc:  # handed to the writer, which raises it
                    put(_Fetched(stream, None, False, None, utcnow(), error=exc))
                    return
            put(_Fetched(None, None, False, None, utcnow(), finished=True))

        def read_events(since: datetime | None) -> None:
            listed = 0
            try:
                for data in self._event_pages(since):
                    batch = _events_batch(data, listed)
                    listed += len(data)
                    if not put(_Fetched(None, None, False, None, utcnow(), events=batch)):
                        return
            except BaseException as exc:
                put(_Fetched(None, None, False, None, utcnow(), events_end=True, error=exc))
                return
            put(_Fetched(None, None, False, None, utcnow(), events_end=True))

        # Each stream's committed state, read here: the readers never touch the warehouse.
        self._state_of = {s.name: self._state(BACKFILL_PREFIX + s.name) for s in streams}
        batches: dict[str, list[_Page]] = {}
        last: dict[str, str | None] = {s.name: self._state_of[s.name][0] for s in streams}
        paths: dict[str, str | None] = {
            s.name: self._state_of[s.name][2].get("path", s.path) for s in streams
        }
        tasks: dict[str, Any] = {}
        by_name = {s.name: s for s in streams}

        def commit(name: str, done: bool) -> None:
            batch = batches.pop(name, [])
            if not batch:
                return
            n = self._commit_pages(by_name[name], batch, last[name], paths[name], done)
            log.debug("stream %s: page committed (%d pages, %d objects, after %s)",
                      name, len(batch), n, last[name])  # fmt: skip
            self._advance(tasks[name], n)

        threads = [
            threading.Thread(target=read, name=f"stripe-backfill-{k}", daemon=True)
            for k in range(workers)
        ]
        events_began = utcnow()
        self._new_events_read()
        threads.append(
            threading.Thread(
                target=read_events,
                args=(self._events_since(events_began),),
                name="stripe-backfill-events",
                daemon=True,
            )
        )
        for t in threads:
            t.start()
        failure: BaseException | None = None
        running = workers
        events_reading = True

        try:
            while running or events_reading:
                try:
                    item = pages.get(timeout=0.2)
                except queue.Empty:
                    # Readers stopped by a failure end without a word.
                    if stop.is_set() and not any(t.is_alive() for t in threads):
                        break
                    continue
                if item.events is not None:
                    self._stage_events(item.events)
                    continue
                if item.events_end:
                    events_reading = False
                    self._events_staged = events_began
                    self._events_failure = item.error
                    continue
                if item.stream is None:
                    running -= 1
                    continue
                name = item.stream.name
                if name not in tasks:
                    tasks[name] = self._task(name)
                if item.error is not None:
                    failure = failure or item.error
                    stop.set()
                    commit(name, done=False)
                    running -= 1  # that reader returned
                    continue
                if item.finished:
                    commit(name, done=False)  # only pages a failure left behind
                    self._finish(tasks[name])
                    continue
                assert item.page is not None
                batches.setdefault(name, []).append(item.page)
                paths[name] = item.path
                last[name] = item.page.last_id or last[name]
                if not item.has_more or len(batches[name]) >= size:
                    commit(name, done=not item.has_more)
        except BaseException as exc:
            failure = failure or exc
            stop.set()
            raise
        finally:
            stop.set()
            if failure is not None:
                # What was fetched before the failure lands, the pages still queued too
                # (another stream's first page may not have reached this thread yet):
                # the rerun goes on from it. The readers end first (each after the
                # request it is making), so none is left half-handed.
                for t in threads:
                    t.join()
                while True:
                    try:
                        item = pages.get_nowait()
                    except queue.Empty:
                        break
                    if item.stream is not None and item.page is not None:
                        batches.setdefault(item.stream.name, []).append(item.page)
                        paths[item.stream.name] = item.path
                        last[item.stream.name] = item.page.last_id or last[item.stream.name]
                        if item.stream.name not in tasks:
                            tasks[item.stream.name] = self._task(item.stream.name)
                for name in list(batches):
                    with contextlib.suppress(Exception):
                        commit(name, done=False)
        if failure is not None:
            raise failure

    # -- events ------------------------------------------------------------------------

    def events(self) -> None:
        """Read ``/v1/events`` from the cursor and apply what is new, in chunks.

        The pages go to a temporary table as they come (``_events_read``: each event's
        place in the listing, its second, its object and its text), so memory holds one
        page and one chunk, never the read: the first read takes every event Stripe still
        keeps (30 days), hundreds of thousands on a large account. The order, the
        sequences within each second, what is new and which event is each object's newest
        are then computed over the whole read in SQL, exactly as over a list in memory.
        """
        if self._events_failure is not None:
            # the read beside the backfill failed: raised here, as a read made now
            failure, self._events_failure = self._events_failure, None
            raise failure
        # when the read staged beside the backfill began (None: read here)
        staged, self._events_staged = self._events_staged, None
        _, cursor_ts, details = self._state(EVENTS)
        task = self._task("events")
        if staged is not None:
            polled = staged
        else:
            polled = utcnow()
            self._new_events_read()
            for batch in self._events_read_ahead(self._events_since(polled)):
                self._stage_events(batch)
        n_read, n_new = self._order_events()
        self.result.add("seen_events", n_read)
        # A backfill's events land over what its listing landed, all of it pending until
        # the rebuild (a --full one's marks everything after): nothing to mark there.
        pending_tables = (
            all_pending(self.con, [s.name for s in STREAMS])
            if self.result.mode == "backfill" and n_new
            else frozenset()
        )
        cursor = cursor_ts or polled
        # STRIPE_EVENTS_BATCH_PAGES pages a transaction: each step reads the stored rows of
        # its objects and lands into the keyed raw tables, both costing with the account,
        # not the step (the first read of everything Stripe keeps, at 100,000 accounts:
        # 60,000 events 2,000 a step took 27.4 s, 5,000 a step 17.5 s; for 25 MB more of
        # parsed events). Events are staged before any is applied, so a kill loses only
        # the step's work: the rerun reads again from the committed cursor.
        size = self.settings.stripe.page_size * self.settings.stripe.events_batch_pages
        more_items: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, max(n_new, 1), size):
            chunk = self._events_chunk(start, size)
            done = start + size >= n_new
            # Partial objects: retrieved whole, landed as of the retrieve (never as of the
            # event: the state at the event's time is what the thin event did not say).
            retrieved = {e["id"]: got for e, _ in chunk if (got := self._retrieve_partial(e))}
            # Where a partial event is its object's newest in this read, the object
            # retrieved now is its state from that event on (a change without an event is
            # as rare here as for a listing): landed as of the event, as the event itself
            # would have been. An older one's state is unknown (a later change came after
            # it): as of the fetch.
            at_event = {
                eid for eid, (obj, _) in retrieved.items() if self._newest(obj["id"]) == eid
            }
            # Items beyond a subscription's embedded page: as listed now (the event's own
            # page is kept as it was); one call per such subscription, not per event.
            for event, _ in chunk:
                obj = (event.get("data") or {}).get("object")
                if event["id"] in retrieved:
                    obj = retrieved[event["id"]][0]
                if not (isinstance(obj, dict) and obj.get("object") == "subscription"):
                    continue
                if obj.get("id") not in more_items and _has_more_items(obj):
                    more_items[obj["id"]] = self._more_items(obj)
            cursor = max([cursor, *(_from_epoch(e.get("created")) for e, _ in chunk)])
            state = {**details, "last_event": chunk[-1][0]["id"] if chunk else None}
            if done:
                state["polled_at"] = polled.isoformat()
                state.pop("retained", None)
            with transaction(self.con):
                self._apply_events(chunk, more_items, retrieved, at_event, pending_tables)
                self._set_state(EVENTS, None, cursor, state)
            log.debug("stream events: page committed (%d events, cursor %s)", len(chunk), cursor)
            self._advance(task, len(chunk))
            # Let go of this step's parsed events before the next step's are read: held
            # across the read, two steps' at once made the backfill's peak memory.
            del chunk, retrieved, at_event
        self.con.execute("DROP TABLE IF EXISTS _events_read")
        self.con.execute("DROP TABLE IF EXISTS _events_new")
        self._finish(task)

    def _events_since(self, polled: datetime) -> datetime | None:
        """Where an events read starts: the cursor less the overlap; None (all Stripe
        keeps) for the first read after a backfill."""
        _, cursor_ts, details = self._state(EVENTS)
        if details.get("retained") == "pending":
            return None
        overlap = timedelta(seconds=self.settings.stripe.events_overlap_seconds)
        return (cursor_ts or polled) - overlap

    def _event_pages(self, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """``/v1/events`` from ``since``, a page at a time, in the API's order."""
        starting_after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self.settings.stripe.page_size}
            if since is not None:
                params["created"] = {"gte": _epoch(since)}
            if starting_after:
                params["starting_after"] = starting_after
            page = self.api.get("events", "/v1/events", params)
            data = [e for e in page.get("data") or [] if isinstance(e, dict) and "id" in e]
            if data:
                yield data
            if not (page.get("has_more") and data):
                return
            starting_after = data[-1]["id"]

    def _events_read_ahead(self, since: datetime | None) -> Iterator[pa.Table]:
        """The pages of an events read as staged batches (:func:`_events_batch`), in the
        API's order, fetched and converted by a thread of their own a few pages ahead of
        the caller: the pages come at the events endpoint's rate limit (25 a second), and
        staging one waits on the warehouse, so the two overlap instead of adding up. A
        failure of the read is raised here, after the pages before it; the caller's own
        failure stops the thread (after the request it is making)."""
        ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        stop = threading.Event()

        def put(kind: str, item: Any) -> bool:
            return _hand_over(ahead, (kind, item), stop)

        def read() -> None:
            listed = 0
            try:
                for data in self._event_pages(since):
                    if not put("batch", _events_batch(data, listed)):
                        return
                    listed += len(data)
            except BaseException as exc:  # raised in the caller's thread
                put("error", exc)
                return
            put("end", None)

        reader = threading.Thread(target=read, name="stripe-events-read", daemon=True)
        reader.start()
        try:
            while True:
                kind, item = ahead.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            reader.join()

    def _new_events_read(self) -> None:
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _events_read (id VARCHAR, listed BIGINT, "
            "created BIGINT, object_id VARCHAR, payload VARCHAR)"
        )

    def _stage_events(self, batch: pa.Table) -> None:
        """One page of events (:func:`_events_batch`) into ``_events_read``."""
        self.con.register("_events_page", batch)
        try:
            self.con.execute("INSERT INTO _events_read SELECT * FROM _events_page")
        finally:
            self.con.unregister("_events_page")

    def _order_events(self) -> tuple[int, int]:
        """``_events_new``: the read's events not stored yet, each with its sequence in its
        second (:func:`~churn.pipelines.stripe.land.sequence_events`' rule) and its place
        (``ord``) oldest first. Returns (events read, new ones)."""
        # First sighting of each id, in the API's order.
        # The windows over the events' keys only: the payloads (gigabytes on a large
        # account's first read) join back once, streamed, never held by a window.
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE _events_first AS "
            "SELECT id, listed, created, object_id FROM _events_read "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY listed) = 1"
        )
        order = self.settings.stripe.events_order
        if order == "auto":
            ((ascending, descending),) = self.con.execute(
                "SELECT coalesce(bool_or(created < nxt), false), "
                "coalesce(bool_or(created > nxt), false) FROM (SELECT created, "
                "lead(created) OVER (ORDER BY listed) AS nxt FROM _events_first)"
            ).fetchall()
            order = "oldest_first" if ascending and not descending else "newest_first"
        # Oldest first within a second: the listing's order, or its reverse.
        within = "listed" if order == "oldest_first" else "listed DESC"
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _events_new AS
            WITH keys AS (
                SELECT id, object_id, listed, seq,
                       row_number() OVER (ORDER BY created, seq) AS ord
                FROM (
                    -- sequences over the whole read, stored events included (a rerun after
                    -- a kill gives each event the sequence the killed read gave it)
                    SELECT f.*,
                           row_number() OVER (PARTITION BY f.created ORDER BY {within}) AS seq
                    FROM _events_first f
                )
                WHERE id NOT IN (SELECT id FROM raw_stripe_event)
            )
            SELECT k.id, k.object_id, r.payload, k.seq, k.ord
            FROM keys k JOIN _events_read r ON r.listed = k.listed
            """
        )
        ((n_read, n_new),) = self.con.execute(
            "SELECT (SELECT count(*) FROM _events_first), (SELECT count(*) FROM _events_new)"
        ).fetchall()
        self.con.execute("DROP TABLE _events_first")
        return int(n_read), int(n_new)

    def _events_chunk(self, start: int, size: int) -> list[tuple[dict[str, Any], int]]:
        rows = self.con.execute(
            "SELECT payload, seq FROM _events_new WHERE ord > ? AND ord <= ? ORDER BY ord",
            [start, start + size],
        ).fetchall()
        return [(json.loads(text), int(seq)) for text, seq in rows]

    def _newest(self, object_id: str) -> str | None:
        """The id of ``object_id``'s newest new event in this read."""
        ((newest,),) = self.con.execute(
            "SELECT arg_max(id, ord) FROM _events_new WHERE object_id = ?", [object_id]
        ).fetchall()
        return None if newest is None else str(newest)

    def _retrieve_partial(self, event: dict[str, Any]) -> tuple[dict[str, Any], datetime] | None:
        """The whole object and when it was fetched, for an event whose ``data.object``
        came partial; None when it came whole, or the retrieve answers 404 (the object is
        gone: :func:`apply_events` then keeps the partial one out)."""
        obj = (event.get("data") or {}).get("object")
        kind = obj.get("object") if isinstance(obj, dict) else None
        table = OBJECT_TABLES.get(kind) if isinstance(kind, str) else None
        if table is None or not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            return None
        if not is_partial(table, obj):
            return None
        stream = STREAMS_BY_NAME[table]
        path = f"/v1/{stream.served_as}/{obj['id']}"
        params: dict[str, Any] = {}
        if "expand" in stream.params and stream.path:
            # the listing's expansions, without its "data." prefix
            params["expand"] = [e.removeprefix("data.") for e in stream.params["expand"]]
        try:
            whole = self.api.get(stream.name, path, params)
        except StripeRequestError as exc:
            if exc.http_status not in (400, 404):
                raise
            log.warning(
                "stream events: event %s carries a partial %s %s, which cannot be retrieved",
                event["id"],
                table,
                obj["id"],
            )
            return None
        if whole.get("id") != obj["id"] or is_partial(table, whole):
            return None
        self.result.add("events_completed_by_retrieve", 1)
        return whole, utcnow()

    def _unseen(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not events:
            return []
        rows = self.con.execute(
            "SELECT id FROM raw_stripe_event WHERE id IN (SELECT unnest(?::VARCHAR[]))",
            [[e["id"] for e in events]],
        ).fetchall()
        seen = {r[0] for r in rows}
        return [e for e in events if e["id"] not in seen]

    def _apply_events(
        self,
        events: list[tuple[dict[str, Any], int]],
        more_items: dict[str, list[dict[str, Any]]],
        retrieved: dict[str, tuple[dict[str, Any], datetime]],
        at_event: set[str],
        pending_tables: frozenset[str],
    ) -> None:
        if not events:
            return
        key_mode = self.settings.stripe.key_mode
        n = apply_events(
            self.con, events, key_mode, self.result, more_items, retrieved, at_event,
            pending_tables,
        )  # fmt: skip
        self.result.add("events", n)

    # -- reconciliation ----------------------------------------------------------------

    def reconcile(self, *, windowed: bool = False) -> None:
        started = utcnow()
        self.result.reconciled = True
        days = self.settings.stripe.reconcile_window_days
        since = started - timedelta(days=days) if windowed and days > 0 else None
        for stream in LISTED:
            if stream.mutable:
                self._reconcile_stream(stream, since if stream.windowed else None)
        with transaction(self.con):
            self._set_state(RECONCILE, None, started, {"by": "reconcile"})
            _, cursor_ts, details = self._state(EVENTS)
            # After a full re-list, events older than it add nothing: never a gap.
            self._set_state(
                EVENTS,
                None,
                max(cursor_ts or started, started - timedelta(seconds=1)),
                {**details, "polled_at": max(details.get("polled_at", ""), started.isoformat())},
            )

    def _reconcile_stream(self, stream: Stream, since: datetime | None = None) -> None:
        """Re-list one stream a page at a time: each page diffed against the stored rows of
        its ids and landed in its own transaction; the ids seen are kept in a temp table,
        so memory stays one page whatever the stream's size. Stored objects the whole
        listing did not show are then kept as deleted. With ``since``, only objects created
        from then on are listed, and only those are candidates for deletion."""
        task = self._task(f"reconcile {stream.name}")
        began = utcnow()
        table = f"raw_stripe_{stream.name}"
        self.con.execute("CREATE OR REPLACE TEMP TABLE _reconcile_seen (id VARCHAR PRIMARY KEY)")
        new = changed = 0
        if since is not None:
            stream = replace(stream, params={**stream.params, "created": {"gte": _epoch(since)}})
            self.result.add(f"reconcile_window_days_{stream.name}", (began - since).days)
        for objects, _, _path in self._pages(stream, None, stream.path):
            page = self._prepare_page(stream, objects, utcnow(), "reconcile")
            flat = {row.id: row.text for row in page.by_table[stream.name]}
            stored = dict(
                self.con.execute(
                    f"SELECT id, payload::VARCHAR FROM {table} WHERE NOT is_deleted "
                    "AND id IN (SELECT unnest(?::VARCHAR[]))",
                    [list(flat)],
                ).fetchall()
            )
            new += sum(1 for k in flat if k not in stored)
            changed += sum(1 for k, text in flat.items() if k in stored and text != stored[k])
            with transaction(self.con):
                self._land_pages(stream, [page])
                self.con.execute(
                    "INSERT INTO _reconcile_seen SELECT DISTINCT unnest(?::VARCHAR[]) "
                    "ON CONFLICT DO NOTHING",
                    [list(flat)],
                )
            self._advance(task, len(objects))
        with transaction(self.con):
            gone = (
                []
                if stream.name in self._unserved
                else [
                    r[0]
                    for r in self.con.execute(
                        f"SELECT id FROM {table} WHERE NOT is_deleted "
                        "AND id NOT IN (SELECT id FROM _reconcile_seen)"
                        " AND (CAST(? AS BIGINT) IS NULL"
                        "      OR TRY_CAST(payload->>'created' AS BIGINT) >= CAST(? AS BIGINT))",
                        [None if since is None else _epoch(since)] * 2,
                    ).fetchall()
                ]
            )
            mark_deleted(self.con, stream.name, gone, stripe_land.list_version_ts(began))
        self.con.execute("DROP TABLE _reconcile_seen")
        self.result.add(f"reconcile_new_{stream.name}", new)
        self.result.add(f"reconcile_changed_{stream.name}", changed)
        self.result.add(f"reconcile_deleted_{stream.name}", len(gone))
        self._finish(task)


def _hand_over(to: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` on a reader's bounded queue, waiting for room unless ``stop`` is set;
    False when the reader is to stop (``item`` is still put if there was room)."""
    while True:
        try:
            to.put(item, timeout=0.05)
            return not stop.is_set()
        except queue.Full:
            if stop.is_set():
                return False


def _events_batch(data: list[dict[str, Any]], listed: int) -> pa.Table:
    """One page of events as staged in ``_events_read``, in the API's order (``listed``:
    the place of its first event in the read)."""
    objs = [(e.get("data") or {}).get("object") for e in data]
    return pa.Table.from_pydict(
        {
            "id": [str(e["id"]) for e in data],
            "listed": list(range(listed, listed + len(data))),
            "created": [int(e.get("created") or 0) for e in data],
            "object_id": [
                o.get("id") if isinstance(o, dict) and isinstance(o.get("id"), str) else None
                for o in objs
            ],
            "payload": [stripe_land.dumps(e) for e in data],
        },
        schema=_STAGED,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None)


def apply_events(
    con: duckdb.DuckDBPyConnection,
    events: list[tuple[dict[str, Any], int]],
    key_mode: str | None,
    result: StripeExtractResult | None = None,
    more_items: dict[str, list[dict[str, Any]]] | None = None,
    retrieved: dict[str, tuple[dict[str, Any], datetime]] | None = None,
    at_event: set[str] | None = None,
    pending_tables: frozenset[str] = frozenset(),
) -> int:
    """Store events (once each) and land their objects newer-over-older.

    ``events`` pairs each event with its sequence in its second (see
    :func:`~churn.pipelines.stripe.land.sequence_events`); the caller's transaction.
    ``more_items``: by subscription id, the items its embedded page left out; the event
    is stored as Stripe sent it, the subscription landed with them. ``retrieved``: by event
    id, the whole object retrieved for a partial one and when: landed as of that fetch
    (as a listing is), or as of the event for the events in ``at_event`` (each its
    object's newest); the event is stored as sent. A partial object not retrieved is kept
    out, with a quarantine row (source ``stripe_event``). ``pending_tables``: the raw
    tables whose every row is pending (:func:`~churn.pipelines.stripe.land.all_pending`).
    """
    fetched = utcnow()
    check_mode(key_mode, [e for e, _ in events], "stream events")
    by_table: dict[str, list[tuple[dict[str, Any], Version]]] = {}
    rows = []
    partial: list[tuple[Any, ...]] = []
    for event, seq in events:
        obj = (event.get("data") or {}).get("object")
        kind = obj.get("object") if isinstance(obj, dict) else None
        table = OBJECT_TABLES.get(kind) if isinstance(kind, str) else None
        rows.append(
            (
                event["id"],
                str(event.get("type")),
                _from_epoch(event.get("created")),
                event.get("api_version"),
                kind,
                obj.get("id") if isinstance(obj, dict) else None,
                event.get("livemode") if isinstance(event.get("livemode"), bool) else None,
                stripe_land.dumps(event),
                fetched,
            )
        )
        if table is None or not isinstance(obj, dict) or "id" not in obj:
            continue
        got = (retrieved or {}).get(event["id"])
        missing = missing_fields(table, obj)
        if got is not None:
            obj, at = got
            if kind == "subscription" and more_items and obj["id"] in more_items:
                obj = with_items(obj, more_items[obj["id"]])
            flat, inner = flatten(obj)
            if event["id"] in (at_event or set()):
                at_version = Version(
                    "event", _from_epoch(event.get("created")), seq, event["id"],
                    event.get("api_version"),
                )  # fmt: skip
            else:
                at_version = Version(
                    "retrieve", stripe_land.list_version_ts(at), at.microsecond, "",
                    event.get("api_version"),
                )  # fmt: skip
            by_table.setdefault(table, []).append((flat, at_version))
            for e in inner:
                by_table.setdefault(embedded_table(e), []).append((e, at_version))
            continue
        if missing:
            # Never stored over a full payload: kept out, with a quarantine row.
            partial.append(
                (
                    QUARANTINE_SOURCE,
                    table,
                    event["id"],
                    f"data.object of {table} {str(obj['id'])[:40]} is partial (no "
                    + ", ".join(missing)[:120]
                    + ") and could not be retrieved; kept out",
                    stripe_land.dumps({"id": obj["id"], "object": kind}),
                    result.run_id if result is not None else None,
                    fetched,
                )
            )
            continue
        if kind == "subscription" and more_items and obj["id"] in more_items:
            obj = with_items(obj, more_items[obj["id"]])
        flat, inner = flatten(obj)
        version = Version(
            "event",
            _from_epoch(event.get("created")),
            seq,
            event["id"],
            event.get("api_version"),
            deleted=str(event.get("type", "")).endswith(".deleted") and kind != "subscription",
        )
        by_table.setdefault(table, []).append((flat, version))
        for e in inner:
            by_table.setdefault(embedded_table(e), []).append((e, version))
    stripe_land.store_events(con, rows)
    if partial:
        con.executemany(
            "INSERT OR REPLACE INTO quarantine (source, stream, object_id, reason, payload,"
            " run_id, quarantined_at) VALUES (?, ?, ?, ?, ?::JSON, ?, ?)",
            partial,
        )
        if result is not None:
            result.add("quarantined_partial_events", len(partial))
    for table, items in sorted(by_table.items()):
        land(con, table, items, fetched, stored_pending=table in pending_tables)
        if result is not None:
            result.add(f"objects_{table}", len(items))
    return len(events)


def _has_more_items(sub: dict[str, Any]) -> bool:
    items = sub.get("items")
    return isinstance(items, dict) and bool(items.get("has_more"))


def with_items(sub: dict[str, Any], more: list[dict[str, Any]]) -> dict[str, Any]:
    """The subscription with its whole item list: the embedded page, then the items
    ``more`` adds (by id); ``has_more`` false. Unchanged when it had no more items."""
    if not _has_more_items(sub):
        return sub
    items = dict(sub["items"])
    data = [i for i in items.get("data") or [] if isinstance(i, dict)]
    known = {i.get("id") for i in data}
    items["data"] = data + [i for i in more if i.get("id") not in known]
    items["has_more"] = False
    return {**sub, "items": items}


def _from_epoch(value: Any) -> datetime:
    return _EPOCH + timedelta(seconds=int(value or 0))


def _epoch(value: datetime) -> int:
    return int((value - _EPOCH).total_seconds())


def _log_start(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    with transaction(con):
        con.execute(
            "INSERT INTO run_log (run_id, command, started_at, status) "
            "VALUES (?, 'extract stripe', ?, 'running')",
            [run_id, utcnow()],
        )


def _log_end(
    con: duckdb.DuckDBPyConnection,
    result: StripeExtractResult,
    failure: Exception | None,
    *,
    partial: bool,
) -> None:
    status = "success" if failure is None else "partial" if partial else "failed"
    with transaction(con):
        con.execute(
            "UPDATE run_log SET finished_at = ?, status = ?, counts = ?::JSON, "
            "api_calls = ?::JSON, durations = ?::JSON, error = ? WHERE run_id = ?",
            [
                utcnow(),
                status,
                json.dumps(result.counts),
                json.dumps({"stripe": result.api_calls}),
                json.dumps({"stripe": result.seconds}),
                str(failure) if failure else None,
                result.run_id,
            ],
        )


def _summary(result: StripeExtractResult) -> None:
    table = Table(title=f"Stripe extract ({result.mode})", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in sorted(result.counts.items()):
        table.add_row(key, str(value))
    table.add_row("API calls", str(result.api_calls))
    table.add_row("seconds", f"{result.seconds:.1f}")
    Console(stderr=True).print(table)
