"""`churn score`: read the warehouse, run the pure signals, write the marts in one transaction.

Re-scoring an ``as_of`` already scored replaces its rows (delete then insert, in the same
transaction), so the marts never hold two answers for one date. What the signals could
not use is said, not hidden: usage that supports no seat signal is counted by reason in
``counts`` and worded in ``notes`` (counts and reasons only, never an account).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from churn.errors import ScoringError
from churn.job.incremental import Decision, decide, landed_through, record
from churn.job.model import load_in_force
from churn.job.retention import thin_snapshots
from churn.job.scope import keep, scoped
from churn.settings import Settings
from churn.signals import SIGNAL_SCHEMA, SIGNALS, payment_failure, seat_utilization
from churn.signals.health import account_health
from churn.signals.model.model import ChurnModel, predict
from churn.signals.mrr import account_mrr, movements
from churn.signals.tables import Tables
from churn.warehouse import transaction

log = logging.getLogger(__name__)

MARTS = ("signal_events", "account_health", "account_mrr", "mrr_movements")


class _Unset:
    """No model given: :func:`compute` loads the one in force."""


_UNSET = _Unset()


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring wrote. ``counts`` are the snapshot's; ``signals`` and ``health`` the
    rows computed (after an incremental scoring, the changed accounts' only)."""

    as_of: datetime
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    signals: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SIGNAL_SCHEMA))
    health: pl.DataFrame = field(default_factory=pl.DataFrame)
    #: Sentences for the run summary and run_log: what could not be scored, and why.
    notes: tuple[str, ...] = ()
    #: Whole or incremental, and why (:func:`churn.job.incremental.decide`).
    scoring: str = ""


def compute(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    accounts: Sequence[str] | None = None,
    model: ChurnModel | _Unset | None = _UNSET,
) -> dict[str, pl.DataFrame]:
    """Every mart's rows for ``as_of``, computed without writing anything.

    ``accounts``: the rows of these accounts only, computed over their own rows of the
    warehouse (:func:`churn.job.scope.scoped`): equal to the same accounts' rows of a full
    score. ``model``: the model in force when the caller has it loaded already (the
    webhook worker's cache), else it is loaded here.
    """
    if isinstance(model, _Unset):
        model = load_in_force(con, as_of)
    return _scored(con, settings, as_of, accounts, model, gaps=False)[0]


def _scored(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    accounts: Sequence[str] | None,
    model: ChurnModel | None,
    *,
    gaps: bool,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame | None]:
    """:func:`compute`'s marts and, with ``gaps``, the same accounts' usage gaps
    (:func:`churn.signals.seat_utilization.unsupported`), over the same connection."""
    # one Tables for both: the seat signals' read gives the gaps too (seat_utilization._all)
    if accounts is None:
        tables = Tables(con)
        marts = _compute(tables, settings, as_of, model, None)
        return marts, _unsupported(tables, settings, as_of) if gaps else None
    with scoped(con, accounts, as_of) as cur:
        tables = Tables(cur)
        marts = keep(_compute(tables, settings, as_of, model, accounts), accounts)
        if not gaps:
            return marts, None
        return marts, keep({"gaps": _unsupported(tables, settings, as_of)}, accounts)["gaps"]


def _compute(
    tables: Tables,
    settings: Settings,
    as_of: datetime,
    model: ChurnModel | None,
    accounts: Sequence[str] | None,
) -> dict[str, pl.DataFrame]:
    sig = settings.signals
    frames = [s.score(tables, as_of, sig) for s in SIGNALS]
    signals = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=SIGNAL_SCHEMA)
    mrr = account_mrr(tables, as_of, sig)
    model_scores = None if model is None else predict(tables, as_of, model, sig, accounts=accounts)
    health = account_health(tables, as_of, sig, signals, mrr, model_scores)
    moves = movements(tables, as_of, sig).with_columns(
        as_of=pl.lit(as_of).cast(pl.Datetime("us")),
        reporting_currency=pl.lit(sig.reporting_currency.upper()),
    )
    mrr_rows = mrr.rename({"t": "as_of"}).select(
        "account_id", "as_of", "currency", "mrr_minor", "reporting_currency",
        "source_rate", "reporting_rate", "reporting_mrr_minor",
    )  # fmt: skip
    return {
        "signal_events": signals,
        "account_health": health,
        "account_mrr": mrr_rows,
        "mrr_movements": moves,
    }


_INSERT = {
    "signal_events": "INSERT INTO signal_events BY NAME SELECT * REPLACE (CAST(evidence AS JSON) AS evidence) FROM frame",
    "account_health": (
        "INSERT INTO account_health BY NAME SELECT * REPLACE (to_json(top_reasons) AS top_reasons,"
        " to_json(stripe_customer_ids) AS stripe_customer_ids) FROM frame"
    ),
    "account_mrr": "INSERT INTO account_mrr BY NAME SELECT * FROM frame",
    "mrr_movements": "INSERT INTO mrr_movements BY NAME SELECT * FROM frame",
}


def write_frames(
    con: duckdb.DuckDBPyConnection,
    frames: dict[str, pl.DataFrame],
    into: dict[str, str],
) -> None:
    """Insert mart frames into other tables of the same shape (``into``: mart -> table),
    converted as the marts are (the webhook worker's temporary tables)."""
    for name, frame in frames.items():
        if frame.height:
            con.execute(
                _INSERT[name].replace(f"INSERT INTO {name} ", f"INSERT INTO {into[name]} ", 1)
            )


def score(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    *,
    as_of: datetime,
    incremental: bool | None = None,
) -> ScoreResult:
    """Score at ``as_of`` (naive UTC) and write the marts' snapshot; returns counts.

    Every account, or with ``incremental`` (None: ``run.incremental_scoring``, as the
    run's scoring step calls it; ``churn score`` passes False) and when
    :func:`churn.job.incremental.decide` allows, only the accounts whose data changed
    since the last scoring, the others' rows carried from the snapshot before
    with the instant they were computed at (``account_health.scored_as_of``).
    """
    if as_of.tzinfo is not None:
        raise ScoringError("as_of must be naive UTC")
    sizes: dict[str, int] = {}
    try:
        landed = landed_through(con)
        model = load_in_force(con, as_of)
        version = None if model is None else model.version
        decision = (
            decide(con, settings, as_of, version)
            if (settings.run.incremental_scoring if incremental is None else incremental)
            else Decision(True, "every account asked for")
        )
        marts, gaps = _scored(con, settings, as_of, decision.accounts, model, gaps=True)
        with transaction(con):
            for name in MARTS:
                con.execute(f"DELETE FROM {name} WHERE as_of = ?", [as_of])
                if decision.accounts is not None:
                    _carry(con, name, decision, as_of)
                frame = marts[name]
                if frame.height:
                    con.execute(_INSERT[name])
            computed = marts["account_health"].height
            if gaps is not None:
                _store_gaps(con, gaps, as_of, decision)
            record(con, settings, as_of, landed, decision, version, computed)
            thinned = thin_snapshots(con, settings.run.keep_every_snapshot_days)
        if decision.accounts is not None:
            # the snapshot's counts and MRR gaps are the whole snapshot's; the frames
            # returned are the rows computed
            computed_marts = marts
            marts = {name: _snapshot(con, name, as_of) for name in ("account_mrr",)}
            marts.update({name: computed_marts[name] for name in MARTS if name != "account_mrr"})
            sizes = {name: _count(con, name, as_of) for name in MARTS}
    except duckdb.Error as exc:
        raise ScoringError(f"scoring as_of {as_of.isoformat()} failed: {exc}") from exc
    log.info(
        "scoring as_of %s: %s (%s), %d accounts computed",
        as_of.isoformat(), "whole" if decision.full else "incremental", decision.reason,
        computed,
    )  # fmt: skip
    counts = (
        sizes if decision.accounts is not None else {name: marts[name].height for name in MARTS}
    )
    if not decision.full:
        counts["accounts_computed"] = computed
        counts["scoring_incremental"] = 1
    if thinned:
        counts["snapshots_thinned"] = thinned
    # Accounts whose MRR is unknown (an item at a quarantined price): said, not hidden.
    unknown = marts["account_mrr"].filter(pl.col("mrr_minor").is_null())["account_id"].n_unique()
    if unknown:
        counts["accounts_mrr_unknown"] = unknown
    # Accounts whose MRR could not be converted (no rate for a currency): said, not hidden.
    missing = (
        marts["account_mrr"]
        .filter(pl.col("reporting_mrr_minor").is_null() & pl.col("mrr_minor").is_not_null())[
            "account_id"
        ]
        .n_unique()
    )
    if missing:
        counts["accounts_mrr_missing_rate"] = missing
        currencies = sorted(
            marts["account_mrr"]
            .filter(pl.col("reporting_mrr_minor").is_null() & pl.col("mrr_minor").is_not_null())[
                "currency"
            ]
            .unique()
            .to_list()
        )
        log.warning(
            "%d accounts have no MRR in %s: no rate for %s (Salesforce CurrencyType or"
            " CHURN_SIGNALS__CURRENCY_RATES)",
            missing, settings.signals.reporting_currency, ", ".join(currencies),
        )  # fmt: skip
    # the snapshot's usage gaps: the rows just stored (an incremental scoring's computed
    # accounts' recomputed, the others' kept)
    usage_counts, notes = _worded_gaps(_stored_gaps(con, as_of), settings)
    counts.update(usage_counts)
    debt_counts, debt_notes = uncollected_debt(con, settings, as_of)
    counts.update(debt_counts)
    bad_counts, bad_notes = quarantined_input(con, unknown)
    counts.update(bad_counts)
    notes = (*notes, *debt_notes, *bad_notes)
    for note in notes:
        log.warning("%s", note)
    log.info("scored as_of %s: %s", as_of.isoformat(), counts)
    return ScoreResult(
        as_of=as_of,
        counts=counts,
        signals=marts["signal_events"],
        health=marts["account_health"],
        notes=notes,
        scoring=f"{'whole' if decision.full else 'incremental'}: {decision.reason}",
    )


def _carry(con: duckdb.DuckDBPyConnection, name: str, decision: Decision, as_of: datetime) -> None:
    """Copy the rows of the accounts not computed from the snapshot before to ``as_of``
    (``account_health`` keeps the instant each row was computed at)."""
    scored = ", COALESCE(scored_as_of, as_of) AS scored_as_of" if name == "account_health" else ""
    con.execute(
        f"INSERT INTO {name} SELECT * REPLACE (CAST($as_of AS TIMESTAMP) AS as_of{scored})"
        f" FROM {name} WHERE as_of = $prev"
        " AND account_id NOT IN (SELECT unnest($ids::VARCHAR[]))",
        {"as_of": as_of, "prev": decision.previous, "ids": list(decision.accounts or ())},
    )


def _snapshot(con: duckdb.DuckDBPyConnection, name: str, as_of: datetime) -> pl.DataFrame:
    return con.sql(f"SELECT * FROM {name} WHERE as_of = ?", params=[as_of]).pl()


def _count(con: duckdb.DuckDBPyConnection, name: str, as_of: datetime) -> int:
    rows = con.execute(f"SELECT count(*) FROM {name} WHERE as_of = ?", [as_of]).fetchall()
    return int(rows[0][0])


def quarantined_input(
    con: duckdb.DuckDBPyConnection, unknown_mrr_accounts: int = 0
) -> tuple[dict[str, int], tuple[str, ...]]:
    """What the extracts kept out as bad input (the ``quarantine`` table): counts per
    source and stream (``quarantined_<source>_<stream>``) and one note per reason, most
    first; reasons are the service's own words and never carry customer data."""
    rows = con.execute(
        "SELECT source, stream, reason, count(*) AS n FROM quarantine GROUP BY ALL"
        " ORDER BY n DESC, source, stream, reason"
    ).fetchall()
    counts: dict[str, int] = {}
    for source, stream, _, n in rows:
        key = f"quarantined_{source}_{stream}"
        counts[key] = counts.get(key, 0) + int(n)
    notes = [
        f"quarantine: {n:,} {source} {stream} row{'' if n == 1 else 's'} kept out: {reason}"
        for source, stream, reason, n in rows[:_MAX_NOTES]
    ]
    rest = sum(int(r[3]) for r in rows[_MAX_NOTES:])
    if rest:
        notes.append(f"quarantine: {rest:,} more rows kept out for other reasons")
    if unknown_mrr_accounts:
        notes.append(
            f"MRR unknown (not 0) for {unknown_mrr_accounts:,} account"
            f"{'' if unknown_mrr_accounts == 1 else 's'}: an item at a quarantined price"
        )
    return dict(sorted(counts.items())), tuple(notes)


def uncollected_debt(
    con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Open invoices with failed attempts that are no longer collected (their subscription
    ended, or their customer is deleted, with no retry pending): not payment failures, so
    counted (``payment_uncollected_invoices``) and noted, never silently dropped. No
    account is named."""
    try:
        rows = payment_failure.uncollected(Tables(con), as_of, settings.signals)
    except duckdb.Error as exc:
        raise ScoringError(f"uncollected invoices as_of {as_of.isoformat()} failed: {exc}") from exc
    if rows.is_empty():
        return {}, ()
    n = rows.height
    note = (
        f"payment failure: {n:,} open invoice{'' if n == 1 else 's'} of ended subscriptions or"
        " deleted customers, no retry pending: uncollected debt, not an active failure"
        " (Stripe stops collecting when a subscription is canceled)"
    )
    return {"payment_uncollected_invoices": n}, (note,)


#: The reasons worth a note; usage for accounts holding no seats (cancelled, metered-only)
#: is only counted: it is no gap in the feed.
_NOTED = (
    seat_utilization.UNKNOWN_KEY,
    seat_utilization.TOO_FEW_SAMPLES,
    seat_utilization.TOO_LITTLE_COVERAGE,
)
_MAX_NOTES = 5


def usage_gaps(
    con: duckdb.DuckDBPyConnection, settings: Settings, as_of: datetime
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Accounts whose usage supports no seat signal: counts by reason, and notes.

    Counts ``seat_usage_<code>`` per :func:`churn.signals.seat_utilization.unsupported`
    code (zeros left out); notes group the accounts by their worded reason, most first,
    e.g. "seat signals: 40 accounts skipped: 1 usage sample in the 30-day window (one
    every 31 days); seat signals need 2". No account is named.
    """
    return _worded_gaps(_unsupported(Tables(con), settings, as_of), settings)


def _unsupported(tables: Tables, settings: Settings, as_of: datetime) -> pl.DataFrame:
    try:
        return seat_utilization.unsupported(tables, as_of, settings.signals)
    except duckdb.Error as exc:
        raise ScoringError(f"usage coverage as_of {as_of.isoformat()} failed: {exc}") from exc


_GAP_COLUMNS = ("account_id", "code", "samples", "days", "cadence_days", "window_days")


def _store_gaps(
    con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, as_of: datetime, decision: Decision
) -> None:
    """``score_usage_gaps`` (migration 100) of the ``as_of`` snapshot: the rows computed,
    and after an incremental scoring the other accounts' rows carried from the snapshot
    before; rows of snapshots older than the newest are dropped. The caller's
    transaction."""
    con.execute("DELETE FROM score_usage_gaps WHERE as_of = ?", [as_of])
    frame = rows.select(_GAP_COLUMNS).with_columns(  # noqa: F841 (read by the INSERT)
        as_of=pl.lit(as_of).cast(pl.Datetime("us"))
    )
    con.execute("INSERT INTO score_usage_gaps BY NAME SELECT * FROM frame")
    if decision.accounts is not None:
        con.execute(
            "INSERT INTO score_usage_gaps SELECT * REPLACE (CAST($as_of AS TIMESTAMP) AS as_of)"
            " FROM score_usage_gaps WHERE as_of = $prev"
            " AND account_id NOT IN (SELECT unnest($ids::VARCHAR[]))",
            {"as_of": as_of, "prev": decision.previous, "ids": list(decision.accounts)},
        )
    con.execute(
        "DELETE FROM score_usage_gaps WHERE as_of <> ?"
        " AND as_of < (SELECT max(as_of) FROM account_health)",
        [as_of],
    )


def _stored_gaps(con: duckdb.DuckDBPyConnection, as_of: datetime) -> pl.DataFrame:
    return con.sql(
        f"SELECT {', '.join(_GAP_COLUMNS)} FROM score_usage_gaps WHERE as_of = ?",
        params=[as_of],
    ).pl()


def _worded_gaps(rows: pl.DataFrame, settings: Settings) -> tuple[dict[str, int], tuple[str, ...]]:
    """Counts by code and notes by worded reason (:func:`usage_gaps`) of unsupported rows."""
    sig = settings.signals
    counts = {f"seat_usage_{code}": int(n) for code, n in rows["code"].value_counts().iter_rows()}
    by_reason: dict[str, int] = {}
    for row in rows.filter(pl.col("code").is_in(_NOTED)).iter_rows(named=True):
        text = seat_utilization.describe(row, sig)
        by_reason[text] = by_reason.get(text, 0) + 1
    ranked = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    notes = [
        f"seat signals: {n:,} account{'' if n == 1 else 's'} skipped: {text}"
        for text, n in ranked[:_MAX_NOTES]
    ]
    rest = sum(n for _, n in ranked[_MAX_NOTES:])
    if rest:
        notes.append(f"seat signals: {rest:,} more accounts skipped for other usage gaps")
    return dict(sorted(counts.items())), tuple(notes)
