"""Landing Stripe payloads in ``raw_stripe_*``: a batch at a time, newer over older.

A batch becomes one Arrow table and one ``INSERT ... ON CONFLICT DO UPDATE``: a payload
replaces the stored one only when its version (``version_ts``, ``version_seq``, then the
payload text as a last, arbitrary but fixed, tie-break) is greater. The order is total,
so landing the same payloads twice, or in any order, leaves the same rows.

Versions: an event's object is as of the start of the event's ``created`` second, with
its rank among that second's events (:func:`sequence_events`); a listed object is as of
just before the second it was fetched in (sequence 0). Stripe stamps events to the
second, so an event of that very second may be older or newer than the list's view; it
wins, and since every later change has a later (or higher-ranked) event, the newest
event of the second carries the state the list saw or a newer one. Only a change that
emits no event, made in the same second after an event, waits for a reconciliation.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from churn.errors import ModeMismatchError
from churn.pipelines.stripe.normalise import pending_counts
from churn.warehouse import rows_where

_RAW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("payload", pa.string()),
        ("api_version", pa.string()),
        ("source", pa.string()),
        ("version_ts", pa.timestamp("us")),
        ("version_seq", pa.int64()),
        ("fetched_at", pa.timestamp("us")),
        ("is_deleted", pa.bool_()),
        ("livemode", pa.bool_()),
        ("version_key", pa.string()),
    ]
)


@dataclass(frozen=True)
class Version:
    """Where one payload came from and how new it is."""

    source: str  # list | event | reconcile
    ts: datetime
    seq: int
    key: str  # the event id, or '' for a snapshot (keyed by its hash when kept)
    api_version: str | None
    deleted: bool = False


def list_version_ts(fetched: datetime) -> datetime:
    """A listed object's version: just before the second it was fetched in."""
    return fetched.replace(microsecond=0) - timedelta(microseconds=1)


def _orjson_may_differ(text: bytes) -> bool:
    """Where orjson's text may differ from the standard library's: non-ASCII (orjson
    writes UTF-8, Python ``\\uXXXX``), DEL (escaped by Python only), a number below 0.0001
    (Python ``1e-05``, orjson ``0.00001``) or in exponent form (``2.5e-07`` against
    ``2.5e-7``). Substring finds, not a regular expression (which costs ten times the
    write itself); the same bytes inside a string only cost the slow path."""
    if not text.isascii() or b"\x7f" in text or b"0.0000" in text:
        return True
    for sign in (b"e-", b"e+"):
        at = text.find(sign)
        while at > 0:
            if 48 <= text[at - 1] <= 57:  # a digit before it: a number's exponent
                return True
            at = text.find(sign, at + 2)
    return False


def dumps(obj: Any) -> str:
    """Canonical JSON: the same object always gives the same text.

    The text is the standard library's ``json.dumps(obj, sort_keys=True,
    separators=(",", ":"))`` byte for byte (stored payloads are compared as text, and a
    subscription's list version is keyed by its text's hash, so the form must never
    drift). orjson writes it about four times faster (4.5 against 16.3 µs for an
    invoice-sized object; a backfill canonicalises every object it lands); where its text
    could differ (:func:`_orjson_may_differ`, and what it refuses: integers past 64 bits,
    lone surrogates, keys that are not strings) the standard library writes it. One difference is kept: NaN and Infinity, which are not
    JSON and which Stripe never sends, become ``null`` (the standard library's ``NaN``
    would fail the warehouse's JSON column).
    """
    try:
        text = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        text = None
    if text is None or _orjson_may_differ(text):
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return text.decode()


def sequence_events(
    events: Sequence[dict[str, Any]], order: str = "auto"
) -> list[tuple[dict[str, Any], int]]:
    """Each event with its sequence within its ``created`` second (1, 2, ...; oldest first).

    Stripe stamps events to the second, so the API's listing order is the only witness of
    which of two same-second events is newer. ``events`` is one read in the order the API
    listed it; ``order`` says how it lists (Stripe: newest first; some stand-ins: oldest
    first); ``auto`` reads it from the timestamps and falls back to Stripe's documented
    newest-first. Computed once per read, the sequences make applying the events in any
    order, or twice, give the same state.
    """
    created = [int(e.get("created") or 0) for e in events]
    if order == "auto":
        ascending = any(a < b for a, b in itertools.pairwise(created))
        descending = any(a > b for a, b in itertools.pairwise(created))
        order = "oldest_first" if ascending and not descending else "newest_first"
    listed = list(events) if order == "oldest_first" else list(reversed(events))
    # Stable sort by second keeps the API's order inside each second.
    listed.sort(key=lambda e: int(e.get("created") or 0))
    out: list[tuple[dict[str, Any], int]] = []
    rank: dict[int, int] = {}
    for event in listed:
        second = int(event.get("created") or 0)
        rank[second] = rank.get(second, 0) + 1
        out.append((event, rank[second]))
    return out


def payload_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def check_mode(key_mode: str | None, objects: Sequence[dict[str, Any]], where: str) -> None:
    """Refuse objects of the other mode than the key's (before anything lands)."""
    if key_mode is None:
        return
    want_live = key_mode == "live"
    for obj in objects:
        live = obj.get("livemode")
        if isinstance(live, bool) and live != want_live:
            mode = "live" if live else "test"
            raise ModeMismatchError(
                f"{where}: a {key_mode}-mode key (STRIPE_API_KEY) received {mode}-mode "
                f"object {obj.get('id')!r}; refusing to land it"
            )


@dataclass(frozen=True, slots=True)
class Landable:
    """One payload made ready to land: its canonical text and what its row keeps beside
    it. Made where the payload is read (a backfill's reader threads), so what waits for
    the warehouse's writer is text, not the parsed page (a tenth of its memory)."""

    id: str
    text: str
    version: Version
    deleted: bool
    livemode: bool | None


def landable(obj: dict[str, Any], version: Version) -> Landable:
    live = obj.get("livemode")
    return Landable(
        obj["id"],
        dumps(obj),
        version,
        version.deleted or obj.get("deleted") is True,
        live if isinstance(live, bool) else None,
    )


def land(
    con: duckdb.DuckDBPyConnection,
    table: str,
    items: Sequence[tuple[dict[str, Any], Version]],
    fetched_at: datetime,
    *,
    stored_pending: bool = False,
) -> int:
    """Upsert payloads into ``raw_stripe_<table>``; returns how many were offered.
    ``stored_pending``: as for :func:`land_prepared`."""
    return land_prepared(
        con,
        table,
        [landable(obj, v) for obj, v in items],
        fetched_at,
        stored_pending=stored_pending,
    )


def all_pending(con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> frozenset[str]:
    """Of ``tables`` (``raw_stripe_<table>``), those whose every stored row is pending in
    ``stripe_dirty`` (:func:`~churn.pipelines.stripe.normalise.pending_counts`), as a
    backfill's are until its rebuild: landing over them need not mark what changed
    (:func:`land_prepared`'s ``stored_pending``)."""
    return frozenset(
        table for table in tables if (counts := pending_counts(con, table))[1] == counts[2]
    )


def land_prepared(
    con: duckdb.DuckDBPyConnection,
    table: str,
    items: Sequence[Landable],
    fetched_at: datetime,
    *,
    new_only: bool = False,
    stored_pending: bool = False,
) -> int:
    """:func:`land` for payloads already made ready (:func:`landable`).

    ``stored_pending``: every row stored in the table is pending already
    (:func:`all_pending`), so the stored ids the batch holds are not compared to be marked.

    ``new_only``: the caller expects every id to be new to the table (a backfill's own
    pages). The rows then go in by plain inserts, the primary keys checking them, instead
    of ``ON CONFLICT DO NOTHING``, whose cost grows with the table in DuckDB 2.0
    (measured: 1,000 ids into a keyed table of 2,000,000 rows, 45 ms a batch with it
    against 4 ms without, the same at any size). A stored id raises
    ``duckdb.ConstraintException`` and aborts the caller's transaction: the caller lands
    the batch again without ``new_only``."""
    if not items:
        return 0
    batch = pa.Table.from_pydict(
        {
            "id": [i.id for i in items],
            "payload": [i.text for i in items],
            "api_version": [i.version.api_version for i in items],
            "source": [i.version.source for i in items],
            "version_ts": [i.version.ts for i in items],
            "version_seq": [i.version.seq for i in items],
            "fetched_at": [fetched_at] * len(items),
            "is_deleted": [i.deleted for i in items],
            "livemode": [i.livemode for i in items],
            "version_key": [i.version.key for i in items],
        },
        schema=_RAW_SCHEMA,
    )
    con.register("_land_batch", batch)
    try:
        # Ids not stored yet go in first, found by the primary key's index (a backfill's
        # pages are all such): no statement here reads the stored rows for them, so a
        # batch costs the same whatever the table's size.
        conflict = "" if new_only else "ON CONFLICT DO NOTHING"
        new = con.execute(
            f"""
            INSERT INTO raw_stripe_{table}
            SELECT id, payload::JSON, api_version, source, version_ts, version_seq,
                   fetched_at, is_deleted, livemode
            FROM _land_batch
            QUALIFY row_number() OVER (
                PARTITION BY id ORDER BY version_ts DESC, version_seq DESC, payload DESC) = 1
            {conflict}
            RETURNING id
            """
        ).fetchall()
        if new:
            con.execute(
                f"INSERT INTO stripe_dirty SELECT ?, unnest(?::VARCHAR[]) {conflict}",
                [table, [r[0] for r in new]],
            )
        if len(new) < len({i.id for i in items}):
            _land_stored(con, table, stored_pending=stored_pending)
        if table == "subscription":
            sources = {i.version.source for i in items}
            _add_subscription_versions(
                con, new_only=new_only, events="event" in sources, others=sources != {"event"}
            )
        elif table == "discount":
            # a discount fills core_subscription_discounts through its subscription
            con.execute(
                "INSERT INTO stripe_dirty SELECT DISTINCT 'subscription', "
                "json_extract_string(payload::JSON, '$.subscription') FROM _land_batch "
                "WHERE json_extract_string(payload::JSON, '$.subscription') IS NOT NULL "
                "ON CONFLICT DO NOTHING"
            )
    finally:
        # After a failed statement the transaction is aborted; the original error matters.
        with contextlib.suppress(duckdb.Error):
            con.unregister("_land_batch")
    return len(items)


def _land_stored(
    con: duckdb.DuckDBPyConnection, table: str, *, stored_pending: bool = False
) -> None:
    """The batch's ids already stored: newer over older (the new ones, just inserted,
    compare equal to themselves and lose, which leaves them as they are).
    ``stored_pending``: every stored row of the table is pending (:func:`all_pending`),
    so none is compared to be marked (at 100,000 accounts a backfill's events compared
    700,000 stored payloads for nothing: 32 s)."""
    raw = f"raw_stripe_{table}"
    if not stored_pending:
        # What core and the history must redo: rows different (a superset: an older
        # payload that loses below still marks its id, which costs a no-op redo).
        stored = rows_where(raw, "id IN (SELECT id FROM _land_batch)")
        con.execute(
            f"""
            INSERT INTO stripe_dirty
            SELECT DISTINCT '{table}', b.id FROM _land_batch b JOIN {stored} r ON r.id = b.id
            WHERE r.payload::VARCHAR <> b.payload OR r.is_deleted <> b.is_deleted
            ON CONFLICT DO NOTHING
            """
        )
    # Only the ids whose batch row is newer are written: the upsert over a batch whose
    # rows all lost took 0.35 s a batch of 640 invoices at 100,000 accounts (this select
    # and the skip: 0.03 s), and most lose where this is called: the events Stripe keeps
    # are older than the listing a backfill landed first, and a rerun lands the same.
    # Decided on the versions alone, read without the payloads; only a version tie (the
    # same event landed again) compares the payloads, as _NEWER does.
    batch = (
        "(SELECT * FROM _land_batch QUALIFY row_number() OVER (PARTITION BY id"
        " ORDER BY version_ts DESC, version_seq DESC, payload DESC) = 1)"
    )
    judged = con.execute(
        f"""
        SELECT b.id,
               b.version_ts > r.version_ts
               OR (b.version_ts = r.version_ts AND b.version_seq > r.version_seq),
               b.version_ts = r.version_ts AND b.version_seq = r.version_seq
        FROM {batch} b
        JOIN (SELECT id, version_ts, version_seq FROM {raw}
              WHERE id IN (SELECT id FROM _land_batch)) r ON r.id = b.id
        """
    ).fetchall()
    newer = [i for i, later, _ in judged if later]
    ties = [i for i, _, tie in judged if tie]
    if ties:
        tied = rows_where(raw, "id IN (SELECT unnest(?::VARCHAR[]))")
        newer += [
            r[0]
            for r in con.execute(
                f"SELECT b.id FROM {batch} b JOIN {tied} r ON r.id = b.id"
                " WHERE b.payload::VARCHAR > r.payload::VARCHAR",
                [ties],
            ).fetchall()
        ]
    if not newer:
        return
    con.execute(
        f"""
            INSERT INTO raw_stripe_{table}
            SELECT id, payload::JSON, api_version, source, version_ts, version_seq,
                   fetched_at, is_deleted, livemode
            FROM _land_batch WHERE id IN (SELECT unnest(?::VARCHAR[]))
            QUALIFY row_number() OVER (
                PARTITION BY id ORDER BY version_ts DESC, version_seq DESC, payload DESC) = 1
            ON CONFLICT (id) DO UPDATE SET
                payload = excluded.payload, api_version = excluded.api_version,
                source = excluded.source, version_ts = excluded.version_ts,
                version_seq = excluded.version_seq, fetched_at = excluded.fetched_at,
                is_deleted = excluded.is_deleted, livemode = excluded.livemode
            WHERE {_NEWER.format(new="excluded", old=f"raw_stripe_{table}")}
            """,
        [newer],
    )


#: SQL: the row ``new`` is newer than the stored ``old``: later, then later in its second,
#: then (the same instant) the larger payload, so any order of landing ends the same.
_NEWER = (
    "{new}.version_ts > {old}.version_ts OR ({new}.version_ts = {old}.version_ts "
    "AND ({new}.version_seq > {old}.version_seq OR ({new}.version_seq = {old}.version_seq "
    "AND {new}.payload::VARCHAR > {old}.payload::VARCHAR)))"
)


#: A list (or retrieve) snapshot kept as a version when it differs from the latest kept.
_SNAPSHOT_VERSIONS = f"""
    WITH latest AS (
        SELECT subscription_id, payload::VARCHAR AS payload
        FROM {rows_where("stripe_subscription_versions", "subscription_id IN (SELECT id FROM _land_batch)")}
        QUALIFY row_number() OVER (
            PARTITION BY subscription_id
            ORDER BY version_ts DESC, version_seq DESC, version_key DESC) = 1
    )
    INSERT INTO stripe_subscription_versions
    SELECT b.id, 'list:' || md5(b.payload) || ':' || epoch(b.version_ts), b.version_ts,
           b.version_seq, b.source, b.payload::JSON
    FROM _land_batch b LEFT JOIN latest l ON l.subscription_id = b.id
    WHERE b.source <> 'event' AND (l.payload IS NULL OR l.payload <> b.payload)
    {{conflict}}
    RETURNING subscription_id
"""


def _add_subscription_versions(
    con: duckdb.DuckDBPyConnection,
    *,
    new_only: bool = False,
    events: bool = True,
    others: bool = True,
) -> None:
    """Keep every version of a subscription for the history.

    Event payloads are kept once per event; a list snapshot only when it differs from
    the latest version already kept, so reruns over the same state add nothing.
    ``new_only``: the batch's subscriptions were all new to the raw table just now, so
    all are marked dirty already: plain inserts, nothing marked again (see
    :func:`land_prepared`). ``events`` / ``others``: whether the batch holds events, and
    payloads of another source (listed, retrieved); a statement for none is not run (the
    snapshots' one reads the stored latest versions whatever it then keeps: 13.8 s of a
    100,000-account backfill's events, which hold no snapshot).
    """
    conflict = "" if new_only else "ON CONFLICT DO NOTHING"
    added: list[tuple[Any, ...]] = []
    if events:
        added += con.execute(
            f"""
            INSERT INTO stripe_subscription_versions
            SELECT b.id, b.version_key, b.version_ts,
                   b.version_seq, b.source, b.payload::JSON
            FROM _land_batch b WHERE b.source = 'event'
            {conflict}
            RETURNING subscription_id
            """
        ).fetchall()
    if others:
        added += con.execute(_SNAPSHOT_VERSIONS.format(conflict=conflict)).fetchall()
    # A new version changes the history even when the raw row stays (an older event).
    if added and not new_only:
        con.execute(
            "INSERT INTO stripe_dirty SELECT DISTINCT 'subscription', unnest(?::VARCHAR[]) "
            "ON CONFLICT DO NOTHING",
            [[r[0] for r in added]],
        )


def mark_deleted(
    con: duckdb.DuckDBPyConnection, table: str, ids: Sequence[str], ts: datetime
) -> int:
    """Flag objects a full re-list no longer shows as deleted (kept, never dropped)."""
    if not ids:
        return 0
    con.execute(
        f"INSERT INTO stripe_dirty SELECT '{table}', id FROM raw_stripe_{table} "
        f"WHERE id IN (SELECT unnest(?::VARCHAR[])) AND NOT is_deleted ON CONFLICT DO NOTHING",
        [list(ids)],
    )
    con.execute(
        f"UPDATE raw_stripe_{table} SET is_deleted = TRUE, version_ts = ?, source = 'reconcile' "
        f"WHERE id IN (SELECT unnest(?::VARCHAR[])) AND NOT is_deleted",
        [ts, list(ids)],
    )
    return len(ids)


_EVENT_COLUMNS = (
    "id",
    "type",
    "created",
    "api_version",
    "object_type",
    "object_id",
    "livemode",
    "payload",
    "fetched_at",
)


def store_events(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append events to ``raw_stripe_event`` as one batch; an id already there is skipped."""
    if not rows:
        return
    batch = pa.Table.from_pydict(
        {name: [r[i] for r in rows] for i, name in enumerate(_EVENT_COLUMNS)}
    )
    con.register("_event_batch", batch)
    try:
        con.execute(
            "INSERT INTO raw_stripe_event SELECT id, type, created, api_version, object_type, "
            "object_id, livemode, payload::JSON, fetched_at FROM _event_batch "
            "QUALIFY row_number() OVER (PARTITION BY id) = 1 ON CONFLICT DO NOTHING"
        )
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister("_event_batch")
