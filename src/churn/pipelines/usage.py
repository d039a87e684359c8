"""The usage feed: active seats per account per day into core_usage.

Sources: CSV or Parquet files in ``settings.usage.folder`` (columns ``account_id`` or
``customer_id``, ``day``, ``active_seats``), and/or a Salesforce Account field
(``settings.usage.account_field``) read from raw_sf_account, dated by its SystemModstamp.
Loading is an upsert on (account_id, day): rerunning changes nothing. A restated sample
(another value for a day already loaded) keeps the value it replaces in
``core_usage_history``; ``core_usage_as_of(t, since_day)`` gives the feed as known at
``t``. Bad rows go to quarantine with the reason, ``file:line`` as their object id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from churn.errors import ConfigError, ExtractError
from churn.settings import Settings
from churn.warehouse import read_state, transaction, utcnow, write_state

_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class UsageResult:
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    #: Sentences for the run summary (no usage source configured), never customer data.
    notes: tuple[str, ...] = ()


#: The usage step's note when no source is configured: the feed is optional.
NOT_CONFIGURED = (
    "usage feed: not configured (CHURN_USAGE__FOLDER or CHURN_USAGE__ACCOUNT_FIELD);"
    " no seat signals this run"
)


def read_usage_file(path: Path) -> pl.DataFrame:
    """One file as strings plus its ``line`` (CSV: the file's line; Parquet: row number)."""
    try:
        if path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(path).with_row_index("line", offset=1)
            frame = frame.with_columns(pl.exclude("line").cast(pl.Utf8))
        else:
            frame = pl.read_csv(path, infer_schema=False).with_row_index("line", offset=2)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ExtractError(f"usage file {path} cannot be read: {exc}") from exc
    if "account_id" not in frame.columns and "customer_id" in frame.columns:
        frame = frame.rename({"customer_id": "account_id"})
    missing = {"account_id", "day", "active_seats"} - set(frame.columns)
    if missing:
        raise ExtractError(f"usage file {path} lacks column(s) {sorted(missing)}")
    return frame.select(
        pl.lit(path.name).alias("file"),
        pl.col("line").cast(pl.Int64),
        "account_id",
        "day",
        "active_seats",
    )


#: The reason a usage row for an account or customer the warehouse does not know is kept
#: out; such rows are released into core_usage by a later load once the id is known.
UNKNOWN_ACCOUNT = "account_id is no known Salesforce Account or Stripe customer"
#: The quarantine stream of a whole file kept out (its object id is the file's name).
FILE_STREAM = "usage_file"


def _known_ids(con: duckdb.DuckDBPyConnection) -> set[str] | None:
    """Every Salesforce Account and Stripe customer id known, or None when the warehouse
    knows none yet (nothing to judge a usage row's id by: every row is taken)."""
    rows = con.execute(
        "SELECT account_id FROM core_accounts UNION SELECT customer_id FROM core_customers"
        " UNION SELECT account_id FROM core_account_links WHERE account_id IS NOT NULL"
    ).fetchall()
    return {r[0] for r in rows} or None


def validate_usage(
    raw: pl.DataFrame, known: set[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split string rows into (good: account_id, day, active_seats, source) and (bad + reason).

    ``known``: the account and customer ids the warehouse knows; a row for another id is
    bad (``UNKNOWN_ACCOUNT``), its payload the parsed values, for a later release.
    """
    parsed = raw.with_columns(
        pl.col("account_id").str.strip_chars().alias("account_id"),
        pl.col("day")
        .str.strip_chars()
        .str.slice(0, 10)
        .str.to_date("%Y-%m-%d", strict=False)
        .alias("day_p"),
        pl.col("active_seats").str.strip_chars().cast(pl.Int64, strict=False).alias("seats_p"),
    ).with_columns(
        pl.when(pl.col("account_id").is_null() | (pl.col("account_id") == ""))
        .then(pl.lit("missing account_id"))
        .when(pl.col("day_p").is_null())
        .then(pl.lit("day is not a YYYY-MM-DD date"))
        .when(pl.col("seats_p").is_null())
        .then(pl.lit("active_seats is not an integer"))
        .when(pl.col("seats_p") < 0)
        .then(pl.lit("active_seats is negative"))
        .when(
            pl.lit(known is not None)
            & ~pl.col("account_id").is_in(pl.lit(sorted(known or ()), dtype=pl.List(pl.Utf8)))
        )
        .then(pl.lit(UNKNOWN_ACCOUNT))
        .alias("reason")
    )
    good = (
        parsed.filter(pl.col("reason").is_null())
        .select(
            "account_id",
            pl.col("day_p").alias("day"),
            pl.col("seats_p").alias("active_seats"),
            pl.col("file").alias("source"),
        )
        .unique(subset=["account_id", "day"], keep="last", maintain_order=True)
    )
    bad = parsed.filter(pl.col("reason").is_not_null()).select(
        (pl.col("file") + pl.lit(":") + pl.col("line").cast(pl.Utf8)).alias("object_id"),
        "reason",
        pl.when(pl.col("reason") == UNKNOWN_ACCOUNT)
        .then(
            pl.struct(
                "account_id",
                pl.col("day_p").cast(pl.Utf8).alias("day"),
                pl.col("seats_p").alias("active_seats"),
            ).struct.json_encode()
        )
        .otherwise(pl.struct("account_id", "day", "active_seats").struct.json_encode())
        .alias("payload"),
    )
    return good, bad


def _quarantine_file(
    con: duckdb.DuckDBPyConnection, path: Path, stamp: str, reason: str, now: datetime
) -> None:
    """Keep a whole file out: one quarantine row (its name), and its stamp, so it is read
    again only once changed."""
    with transaction(con):
        con.execute(
            "INSERT OR REPLACE INTO quarantine (source, stream, object_id, reason, payload,"
            " run_id, quarantined_at) VALUES ('usage', ?, ?, ?, NULL, NULL, ?)",
            [FILE_STREAM, path.name, reason.replace(str(path), path.name)[:300], now],
        )
        write_state(con, f"usage:file:{path.name}", cursor=stamp, cursor_ts=now)


def _release_known(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Rows kept out for an unknown account whose account is known now: into core_usage,
    out of quarantine. Returns how many."""
    with transaction(con):
        con.execute(
            """CREATE OR REPLACE TEMP TABLE usage_released AS
            SELECT q.object_id, q.payload->>'account_id' AS account_id,
                   CAST(q.payload->>'day' AS DATE) AS day,
                   CAST(q.payload->>'active_seats' AS BIGINT) AS active_seats,
                   split_part(q.object_id, ':', 1) AS source, CAST(? AS TIMESTAMP) AS loaded_at
            FROM quarantine q
            WHERE q.source = 'usage' AND q.stream = 'usage' AND q.reason = ?
              AND q.payload->>'account_id' IN (
                  SELECT account_id FROM core_accounts UNION SELECT customer_id FROM core_customers
                  UNION SELECT account_id FROM core_account_links)""",
            [now, UNKNOWN_ACCOUNT],
        )
        rows = con.execute("SELECT count(*) FROM usage_released").fetchall()
        n = int(rows[0][0]) if rows else 0
        if n:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE usage_release_rows AS
                SELECT account_id, day, active_seats, source, loaded_at FROM usage_released
                QUALIFY row_number() OVER (PARTITION BY account_id, day ORDER BY object_id DESC) = 1"""
            )
            _upsert(con, "usage_release_rows", now)
            con.execute(
                "DELETE FROM quarantine WHERE source = 'usage' AND stream = 'usage'"
                " AND object_id IN (SELECT object_id FROM usage_released)"
            )
            con.execute("DROP TABLE usage_release_rows")
        con.execute("DROP TABLE usage_released")
    return n


def load_usage(settings: Settings, con: duckdb.DuckDBPyConnection) -> UsageResult:
    """Load every usage source configured.

    The feed is optional: with no source, nothing is loaded and the result carries one
    note saying so (the seat signals then have nothing to score; the rest of the run goes
    on).
    """
    folder, account_field = settings.usage.folder, settings.usage.account_field
    if folder is None and not account_field:
        return UsageResult(counts={"not_configured": 1}, notes=(NOT_CONFIGURED,))
    result = UsageResult(counts={"files": 0, "rows": 0, "quarantined": 0, "account_field": 0})
    now = utcnow()
    if folder is not None:
        if not folder.is_dir():
            raise ConfigError(f"CHURN_USAGE__FOLDER {folder} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
        result.counts["files_unchanged"] = 0
        known = _known_ids(con)
        for path in files:
            # A file loaded before and not touched since is skipped: a feed of daily files
            # costs one file a day, not the whole history every run.
            stamp = _file_stamp(path)
            if _loaded_stamp(con, path) == stamp:
                result.counts["files_unchanged"] += 1
                continue
            try:
                raw = read_usage_file(path)
            except ExtractError as exc:
                # One bad file (a column missing, not CSV at all) is kept out whole, with
                # a file-level quarantine row; the other files load and scoring goes on.
                _quarantine_file(con, path, stamp, str(exc), now)
                result.counts["files_quarantined"] = result.counts.get("files_quarantined", 0) + 1
                continue
            good, bad = validate_usage(raw, known)
            _land(con, good.with_columns(pl.lit(now).alias("loaded_at")), bad, now, path, stamp)
            result.counts["files"] += 1
            result.counts["rows"] += good.height
            result.counts["quarantined"] += bad.height
        released = _release_known(con, now)
        if released:
            result.counts["released_known_account"] = released
    if account_field:
        if not _FIELD.match(account_field):
            raise ConfigError("CHURN_USAGE__ACCOUNT_FIELD is not a Salesforce field name")
        with transaction(con):
            con.execute(
                """CREATE OR REPLACE TEMP TABLE usage_field AS
                SELECT id AS account_id, CAST(system_modstamp AS DATE) AS day,
                  CAST(TRY_CAST(json_extract_string(payload, ?) AS DOUBLE) AS BIGINT)
                    AS active_seats,
                  'salesforce:' || ? AS source, CAST(? AS TIMESTAMP) AS loaded_at
                FROM raw_sf_account
                WHERE NOT is_deleted
                  AND TRY_CAST(json_extract_string(payload, ?) AS DOUBLE) >= 0""",
                [f"$.{account_field}", account_field, now, f"$.{account_field}"],
            )
            _upsert(con, "usage_field", now)
            rows = con.execute("SELECT count(*) FROM usage_field").fetchall()
            con.execute("DROP TABLE usage_field")
        result.counts["account_field"] = int(rows[0][0]) if rows else 0
    return result


def _upsert(con: duckdb.DuckDBPyConnection, relation: str, now: datetime) -> None:
    """Land samples (``account_id, day, active_seats, source, loaded_at``) into core_usage.

    A restatement (another value for a sample already loaded) moves the value it replaces
    to ``core_usage_history``, so a score as of an earlier date still reads what was
    known then (``core_usage_as_of``); a sample reloaded unchanged keeps its first
    ``loaded_at``.
    """
    con.execute(
        f"""INSERT INTO core_usage_history
        SELECT c.account_id, c.day, c.active_seats, c.source, c.loaded_at, ?
        FROM core_usage c JOIN {relation} g USING (account_id, day)
        WHERE c.active_seats <> g.active_seats
        ON CONFLICT DO NOTHING""",
        [now],
    )
    con.execute(
        f"""INSERT OR REPLACE INTO core_usage BY NAME
        SELECT g.account_id, g.day, g.active_seats, g.source, g.loaded_at
        FROM {relation} g LEFT JOIN core_usage c USING (account_id, day)
        WHERE c.account_id IS NULL OR c.active_seats <> g.active_seats"""
    )


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _loaded_stamp(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
    state = read_state(con, f"usage:file:{path.name}")
    return state.cursor if state else None


def _land(
    con: duckdb.DuckDBPyConnection,
    good: pl.DataFrame,
    bad: pl.DataFrame,
    now: datetime,
    path: Path,
    stamp: str,
) -> None:
    con.register("usage_good", good.to_arrow())
    con.register("usage_bad", bad.to_arrow())
    try:
        with transaction(con):
            _upsert(con, "usage_good", now)
            con.execute(
                """INSERT OR REPLACE INTO quarantine
                  (source, stream, object_id, reason, payload, run_id, quarantined_at)
                SELECT 'usage', 'usage', object_id, reason, payload, NULL, ? FROM usage_bad""",
                [now],
            )
            # A file kept out before and readable now is no longer quarantined.
            con.execute(
                "DELETE FROM quarantine WHERE source = 'usage' AND stream = ? AND object_id = ?",
                [FILE_STREAM, path.name],
            )
            # The file's size and modification time, with its rows: a kill before the
            # commit leaves neither, and the next run loads the file again.
            write_state(con, f"usage:file:{path.name}", cursor=stamp, cursor_ts=now)
    finally:
        con.unregister("usage_good")
        con.unregister("usage_bad")
