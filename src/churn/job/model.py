"""The model's side effects: train and store a version in ``model_registry``, promote it,
load the promoted one, evaluate. The pure parts are :mod:`churn.signals.model`.

Promotion: a trained version replaces the one in force only when its back-test ROC AUC is
no worse than the one in force's (and it beats the baseline's); a baseline row is never
promoted. Loading reads the skops bytes through :mod:`churn.signals.model.serialize`'s
trusted-type list: nothing stored is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

from churn.settings import Settings
from churn.signals.model.features import FEATURE_NAMES
from churn.signals.model.model import ChurnModel, Evaluation, evaluate, train
from churn.signals.tables import Tables
from churn.warehouse import memory_limited, transaction

log = logging.getLogger(__name__)

#: ``model_registry.features`` as ``save_model`` writes it for this release's features.
_FEATURES_JSON = json.dumps(list(FEATURE_NAMES))
T = TypeVar("T")


@dataclass(frozen=True)
class TrainResult:
    model: ChurnModel
    card: dict[str, Any]
    promoted: bool
    why: str


def _auc(card: dict[str, Any], key: str) -> float:
    metrics = (card.get("backtest") or {}).get("metrics") or {}
    value = (metrics.get(key) or {}).get("roc_auc")
    return float(value) if value is not None else float("nan")


def save_model(con: duckdb.DuckDBPyConnection, model: ChurnModel, trained_at: datetime) -> None:
    """Store one version (replacing a row of the same version)."""
    card = model.card
    window = card.get("data_window") or {}
    blob = model.to_blob()
    with transaction(con):
        con.execute("DELETE FROM model_registry WHERE version = ?", [model.version])
        con.execute(
            "INSERT INTO model_registry (version, kind, trained_at, cutoff, data_from, data_to,"
            " horizon_days, features, metrics, card, serialization, model, compiled)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                model.version,
                model.kind,
                trained_at,
                datetime.fromisoformat(card["cutoff"]),
                window.get("first_snapshot"),
                window.get("last_snapshot"),
                card["horizon_days"],
                json.dumps([f["name"] for f in card["features"]]),
                json.dumps((card.get("backtest") or {}).get("metrics")),
                json.dumps(card, default=str),
                None if blob is None else "skops",
                blob,
                model.compiled_bytes(),
            ],
        )


def promote(con: duckdb.DuckDBPyConnection, version: str, at: datetime) -> None:
    with transaction(con):
        con.execute("UPDATE model_registry SET promoted = FALSE WHERE promoted")
        con.execute(
            "UPDATE model_registry SET promoted = TRUE, promoted_at = ? WHERE version = ?",
            [at, version],
        )


def promoted_card(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    row = con.execute(
        "SELECT card FROM model_registry WHERE promoted ORDER BY promoted_at DESC LIMIT 1"
    ).fetchall()
    return json.loads(row[0][0]) if row else None


def load_promoted(con: duckdb.DuckDBPyConnection) -> ChurnModel | None:
    """The model in force, or None (the rule-based score then stays in force)."""
    return _first_model(
        con.execute(
            "SELECT version, kind, model, card, compiled FROM model_registry WHERE promoted"
            " ORDER BY promoted_at DESC LIMIT 1"
        ).fetchall()
    )


def _first_model(rows: list[Any]) -> ChurnModel | None:
    """The first (version, kind, model, card, compiled) row of ``model_registry`` rebuilt, or None:
    once per process for the same row (:func:`_loaded`)."""
    if not rows:
        return None
    return _loaded(*rows[0]).result()


#: Models rebuilt in this process, by their row's digest (version, kind, skops bytes,
#: card): rebuilding one imports scikit-learn and skops (about 2 CPU seconds, most of a
#: 1% incremental run's scoring) and reads the bytes through the trusted-type list. A
#: version is immutable once stored; the digest of the row itself keys it all the same,
#: so two warehouses holding different models under one version name never share one.
_MODELS: dict[str, Future[ChurnModel]] = {}
_MODELS_LOCK = threading.Lock()
#: Rebuilt models kept per process (a run has one in force; tests open many warehouses).
_MODELS_KEPT = 4


def _loaded(
    version: Any, kind: Any, blob: Any, card: Any, compiled: Any = None
) -> Future[ChurnModel]:
    """The model of one ``model_registry`` row, rebuilt once per process: a future already
    done (or being done by another thread: the webhook worker's), else rebuilt here. A
    rebuild that failed is not kept: its error reaches the caller, and the next call
    tries again."""
    data = None if blob is None else bytes(blob)
    arrays = None if compiled is None else bytes(compiled)
    key = hashlib.sha256(
        json.dumps([str(version), str(kind), str(card)]).encode()
        + (data or b"")
        + b"\0compiled\0"
        + (arrays or b"")
    ).hexdigest()
    with _MODELS_LOCK:
        future = _MODELS.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            return future
        future = Future()
        _MODELS[key] = future
        while len(_MODELS) > _MODELS_KEPT:
            del _MODELS[next(iter(_MODELS))]

    def build() -> None:
        try:
            future.set_result(
                ChurnModel.from_stored(str(version), str(kind), data, json.loads(card), arrays)
            )
        except BaseException as exc:  # handed to whoever asks for the model
            future.set_exception(exc)

    build()
    return future


def load_in_force(con: duckdb.DuckDBPyConnection, as_of: datetime) -> ChurnModel | None:
    """The model that scores ``as_of``: the newest promoted version trained on data up to
    ``as_of`` at most (its cutoff), or None (the rule-based score then stays in force).

    A version trained later has seen who churned after ``as_of``: scoring a past date with
    it would leak the future into the back-fill, so a past date is scored by the version
    that was in force then, as it stood. Versions once promoted keep their
    ``promoted_at``; the one promoted now is preferred when its cutoff allows. A version
    trained on another feature list than this release computes (an upgrade added one) is
    not in force: the rule-based score stands in until the run's model step retrains.
    """
    return _first_model(con.execute(_IN_FORCE, [as_of, _FEATURES_JSON]).fetchall())


#: The row of the model in force at ``?`` (``load_in_force``).
_IN_FORCE = (
    "SELECT version, kind, model, card, compiled FROM model_registry"
    " WHERE promoted_at IS NOT NULL AND model IS NOT NULL AND cutoff <= ?"
    " AND features = ? ORDER BY promoted DESC, promoted_at DESC LIMIT 1"
)


def in_force_version(con: duckdb.DuckDBPyConnection, as_of: datetime) -> str | None:
    """The version :func:`load_in_force` would load for ``as_of`` (without loading it)."""
    rows = con.execute(
        "SELECT version FROM model_registry"
        " WHERE promoted_at IS NOT NULL AND model IS NOT NULL AND cutoff <= ?"
        " AND features = ? ORDER BY promoted DESC, promoted_at DESC LIMIT 1",
        [as_of, _FEATURES_JSON],
    ).fetchall()
    return str(rows[0][0]) if rows else None


@dataclass(frozen=True)
class RetrainResult:
    """What the run's model step did: counts for ``run_log`` and a sentence why."""

    counts: dict[str, int]
    notes: tuple[str, ...] = ()
    api_calls: int = 0


def retrain_if_due(
    settings: Settings, con: duckdb.DuckDBPyConnection, as_of: datetime
) -> RetrainResult:
    """Train a version at ``as_of`` when the newest stored one (model or baseline) has a
    cutoff ``model_retrain_every_days`` or more before it; promote it when its back-test is
    no worse than the one in force. ``churn run``'s model step."""
    every = settings.signals.model_retrain_every_days
    if every == 0:
        return RetrainResult({"trained": 0, "retrain_disabled": 1})
    # An upgrade that changed the features makes retraining due at once.
    row = con.execute("SELECT max(cutoff) FROM model_registry WHERE features = ?",
                      [_FEATURES_JSON]).fetchall()  # fmt: skip
    newest = row[0][0] if row else None
    if isinstance(newest, datetime) and (as_of - newest).days < every:
        return RetrainResult({"trained": 0, "days_since_last_training": (as_of - newest).days})
    result = train_and_store(settings, con, as_of, trained_at=as_of)
    counts = {
        "trained": 1,
        "promoted": int(result.promoted),
        "baseline": int(result.model.is_baseline),
    }
    note = () if result.promoted else (f"model {result.model.version} not promoted: {result.why}",)
    return RetrainResult(counts, note)


def train_and_store(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    cutoff: datetime,
    *,
    trained_at: datetime,
    promote_if_better: bool = True,
) -> TrainResult:
    """Train at ``cutoff``, store the version, promote it when its back-test is no worse
    than the model in force and better than the baseline."""
    model, card = _bounded(
        settings,
        con,
        lambda: train(Tables(con), settings.signals, cutoff, trained_at=trained_at),
    )
    save_model(con, model, trained_at)
    if model.is_baseline:
        return TrainResult(model, card, False, str(card.get("why", "baseline")))
    auc, base = _auc(card, model.kind), _auc(card, "baseline")
    current = promoted_card(con)
    current_auc = _auc(current, str(current.get("kind"))) if current else float("nan")
    if not math.isnan(base) and not auc > base:
        return TrainResult(model, card, False, f"back-test AUC {auc:.3f} <= baseline {base:.3f}")
    if not math.isnan(current_auc) and auc < current_auc:
        why = f"back-test AUC {auc:.3f} below the model in force ({current_auc:.3f})"
        return TrainResult(model, card, False, why)
    if promote_if_better:
        promote(con, model.version, trained_at)
        return TrainResult(model, card, True, f"back-test AUC {auc:.3f}")
    return TrainResult(model, card, False, "not asked to promote")


def evaluate_at(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    cutoff: datetime,
    truth: Any | None = None,
) -> Evaluation:
    """Train at ``cutoff`` and evaluate at it (nothing stored)."""
    return _bounded(
        settings, con, lambda: evaluate(Tables(con), settings.signals, cutoff, truth=truth)
    )


def _bounded(settings: Settings, con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work`` (a training: the features' SQL over every snapshot, then scikit-learn)
    with DuckDB held to ``run.model_memory_limit``, so the blocks the features read do
    not stay cached beside the fit (2.9 GB at 100,000 accounts). A warehouse whose
    features need more than that is trained again under the connection's own limit."""
    limit = settings.run.step_memory_limit(settings.run.model_memory_limit)
    try:
        with memory_limited(con, limit):
            return work()
    except duckdb.OutOfMemoryException:
        if limit is None:
            raise
        log.warning(
            "model training: out of memory under CHURN_RUN__MODEL_MEMORY_LIMIT=%s;"
            " trained again under the warehouse connection's limit (raise the setting)",
            limit,
        )
        return work()


def latest_data_at(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The latest instant the warehouse holds data for (a charge, a subscription version)."""
    row = con.execute(
        "SELECT greatest((SELECT max(created_at) FROM core_charges),"
        " (SELECT max(valid_from) FROM history_subscriptions))"
    ).fetchall()
    value = row[0][0] if row else None
    return value if isinstance(value, datetime) else None


def read_truth(path: Path) -> tuple[pl.DataFrame, datetime | None]:
    """A world's ``truth.csv`` (docs/world-format.md) as key, churned_at, health; and the
    world's ``now`` from the ``world.json`` beside it, when there is one."""
    from churn.errors import ConfigError

    try:
        raw = pl.read_csv(path, infer_schema_length=0)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(f"cannot read the truth file {path.name}: {type(exc).__name__}") from None
    need = {"customer_id", "account_id", "health", "churn_at"}
    if not need <= set(raw.columns):
        raise ConfigError(f"the truth file lacks columns {sorted(need - set(raw.columns))}")
    truth = raw.select(
        key=pl.coalesce(
            pl.when(pl.col("account_id") != "").then(pl.col("account_id")), pl.col("customer_id")
        ),
        churned_at=pl.from_epoch(
            pl.when(pl.col("churn_at") != "").then(pl.col("churn_at")).cast(pl.Int64), "s"
        ),
        health=pl.col("health").cast(pl.Float64, strict=False),
    )
    now: datetime | None = None
    manifest = path.parent / "world.json"
    if manifest.exists():
        stamp = json.loads(manifest.read_text()).get("now")
        if isinstance(stamp, int | float):
            now = datetime.fromtimestamp(stamp, UTC).replace(tzinfo=None)
    return truth, now
