"""Landing Stripe payloads in ``raw_stripe_*``: a batch at a time, newer over older.

A batch becomes one Arrow table and one ``INSERT ... ON CONFLICT DO UPDATE``: a payload
replaces the stored one only when its version (``version_ts``, ``version_seq``, then the
payload text as a last, arbitrary but fixed, tie-break) is greater. The order is total,
so landing the same payloads twice, or in any order, leaves the same rows.

Versions: an event's object is as of the event's ``created`` second, with a sequence
derived from the event id; a listed object is as of the second it was fetched, with
sequence 0, so an event in that same second wins (it cannot be older than the list's
view by more than that second).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from churn.errors import ModeMismatchError

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


def dumps(obj: Any) -> str:
    """Canonical JSON: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def event_seq(event_id: str) -> int:
    """A fixed tie-break between events of the same second (Stripe gives no finer order)."""
    return 1 + zlib.crc32(event_id.encode())


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


def land(
    con: duckdb.DuckDBPyConnection,
    table: str,
    items: Sequence[tuple[dict[str, Any], Version]],
    fetched_at: datetime,
) -> int:
    """Upsert payloads into ``raw_stripe_<table>``; returns how many were offered."""
    if not items:
        return 0
    texts = [dumps(obj) for obj, _ in items]
    batch = pa.Table.from_pydict(
        {
            "id": [obj["id"] for obj, _ in items],
            "payload": texts,
            "api_version": [v.api_version for _, v in items],
            "source": [v.source for _, v in items],
            "version_ts": [v.ts for _, v in items],
            "version_seq": [v.seq for _, v in items],
            "fetched_at": [fetched_at] * len(items),
            "is_deleted": [v.deleted or obj.get("deleted") is True for obj, v in items],
            "livemode": [
                obj["livemode"] if isinstance(obj.get("livemode"), bool) else None
                for obj, _ in items
            ],
            "version_key": [v.key for _, v in items],
        },
        schema=_RAW_SCHEMA,
    )
    con.register("_land_batch", batch)
    try:
        con.execute(
            f"""
            INSERT INTO raw_stripe_{table}
            SELECT id, payload::JSON, api_version, source, version_ts, version_seq,
                   fetched_at, is_deleted, livemode
            FROM _land_batch
            QUALIFY row_number() OVER (
                PARTITION BY id ORDER BY version_ts DESC, version_seq DESC, payload DESC) = 1
            ON CONFLICT (id) DO UPDATE SET
                payload = excluded.payload, api_version = excluded.api_version,
                source = excluded.source, version_ts = excluded.version_ts,
                version_seq = excluded.version_seq, fetched_at = excluded.fetched_at,
                is_deleted = excluded.is_deleted, livemode = excluded.livemode
            WHERE excluded.version_ts > raw_stripe_{table}.version_ts
               OR (excluded.version_ts = raw_stripe_{table}.version_ts
                   AND (excluded.version_seq > raw_stripe_{table}.version_seq
                        OR (excluded.version_seq = raw_stripe_{table}.version_seq
                            AND excluded.payload::VARCHAR > raw_stripe_{table}.payload::VARCHAR)))
            """
        )
        if table == "subscription":
            _add_subscription_versions(con)
    finally:
        # After a failed statement the transaction is aborted; the original error matters.
        with contextlib.suppress(duckdb.Error):
            con.unregister("_land_batch")
    return len(items)


def _add_subscription_versions(con: duckdb.DuckDBPyConnection) -> None:
    """Keep every version of a subscription for the history.

    Event payloads are kept once per event; a list snapshot only when it differs from
    the latest version already kept, so reruns over the same state add nothing.
    """
    con.execute(
        """
        INSERT INTO stripe_subscription_versions
        SELECT b.id, b.version_key, b.version_ts,
               b.version_seq, b.source, b.payload::JSON
        FROM _land_batch b WHERE b.source = 'event'
        ON CONFLICT DO NOTHING
        """
    )
    con.execute(
        """
        WITH latest AS (
            SELECT subscription_id, payload::VARCHAR AS payload
            FROM stripe_subscription_versions
            QUALIFY row_number() OVER (
                PARTITION BY subscription_id
                ORDER BY version_ts DESC, version_seq DESC, version_key DESC) = 1
        )
        INSERT INTO stripe_subscription_versions
        SELECT b.id, 'list:' || md5(b.payload) || ':' || epoch(b.version_ts), b.version_ts,
               b.version_seq, b.source, b.payload::JSON
        FROM _land_batch b LEFT JOIN latest l ON l.subscription_id = b.id
        WHERE b.source <> 'event' AND (l.payload IS NULL OR l.payload <> b.payload)
        ON CONFLICT DO NOTHING
        """
    )


def mark_deleted(
    con: duckdb.DuckDBPyConnection, table: str, ids: Sequence[str], ts: datetime
) -> int:
    """Flag objects a full re-list no longer shows as deleted (kept, never dropped)."""
    if not ids:
        return 0
    con.execute(
        f"UPDATE raw_stripe_{table} SET is_deleted = TRUE, version_ts = ?, source = 'reconcile' "
        f"WHERE id IN (SELECT unnest(?::VARCHAR[])) AND NOT is_deleted",
        [ts, list(ids)],
    )
    return len(ids)
