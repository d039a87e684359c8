"""The webhook worker: drain the spool into the warehouse in micro-batches, rescore the
accounts they touched and push those accounts to Salesforce; and ``serve``, the receiver
with a worker beside it.

One micro-batch (:func:`process_batch`), under the job's run lock (holder ``webhook``):

1. take the oldest pending events from the spool (at most ``batch_size``);
2. land the ones ``raw_stripe_event`` does not hold yet through the events extract's own
   code (:func:`churn.pipelines.stripe.extract.apply_events`: every event once, objects
   newer over older) and refresh core and history, in one transaction;
3. score as of now and keep the accounts linked to the events' customers; push those
   accounts only (their Account fields, their Tasks: opened, escalated, closed), batched
   into sObject Collections by the push's own apply;
4. mark the events done in the spool.

A kill at any point loses nothing and lands nothing twice: an event stays pending until
step 4, a redone step 2 skips the ids already landed, and a redone push plans against
``push_state`` (nothing changed: no call). The lock is released between batches; a
``churn run`` that finds the worker holding it waits for the batch (flagged, so the worker
takes no next one first), and the worker waits while a run holds it: deliveries are still
acknowledged into the spool meanwhile, and the worker catches up after.

Events of one second have no order a webhook can see (Stripe stamps ``created`` to the
second and does not promise delivery order), so each lands as sequence 1 of its second:
a tie is broken by the payload, the same way whatever order they came in. The scheduled
run's reconciliation corrects what a webhook cannot know.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from churn import warehouse
from churn.errors import ChurnError, LockHeldError
from churn.job.model import in_force_version, load_in_force
from churn.job.run import WEBHOOK_HOLDER, lock_path_for, run_lock, run_waiting
from churn.job.scope import keep, scoped
from churn.job.scoring import write_frames
from churn.pipelines.webhook.spool import Spool, SpooledEvent, spool_path_for
from churn.settings import Settings
from churn.signals import SIGNAL_SCHEMA, SIGNALS
from churn.signals.health import account_health
from churn.signals.model.model import ChurnModel, predict
from churn.signals.mrr import account_mrr
from churn.signals.tables import Tables
from churn.warehouse import transaction

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger(__name__)


def _lazy(module: str, name: str) -> Any:
    """Pipelines that import an SDK are loaded at call time, as the job's steps are (the
    import contract keeps the SDKs out of the job's import graph)."""
    return getattr(importlib.import_module(module), name)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC).replace(tzinfo=None)
#: Attempts at landing an event before it is set aside; after a failed batch the worker
#: takes one event at a time until one succeeds, so one bad event does not hold the rest.
MAX_ATTEMPTS = 5
#: How far ahead of this machine's clock an event's ``created`` may move the score's as_of.
MAX_SKEW = timedelta(minutes=5)
#: Days done and ignored spool rows are kept.
KEEP_DAYS = 7.0
#: The worker's temporary tables of the marts' shape (its connection only).
HEALTH_TABLE = "_webhook_account_health"
SIGNALS_TABLE = "_webhook_signal_events"


@dataclass
class BatchResult:
    """What one micro-batch did."""

    claimed: int = 0
    landed: int = 0
    accounts: int = 0
    push_counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    seconds: float = 0.0
    push_error: str | None = None
    #: Seconds by stage: land (events, core, history), score, push.
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class WorkTotals:
    batches: int = 0
    events: int = 0
    landed: int = 0
    api_calls: int = 0
    busy_waits: int = 0
    failures: int = 0


def open_spool(settings: Settings) -> Spool:
    return Spool(spool_path_for(settings.db, settings.webhook.spool_path))


def customer_ids(events: Sequence[dict[str, Any]]) -> list[str]:
    """The Stripe customers the events' objects belong to."""
    out: set[str] = set()
    for event in events:
        obj = (event.get("data") or {}).get("object")
        if not isinstance(obj, dict):
            continue
        if obj.get("object") == "customer" and isinstance(obj.get("id"), str):
            out.add(obj["id"])
        cus = obj.get("customer")
        if isinstance(cus, dict):
            cus = cus.get("id")
        if isinstance(cus, str):
            out.add(cus)
    return sorted(out)


def _accounts(con: duckdb.DuckDBPyConnection, customers: Sequence[str]) -> list[str]:
    if not customers:
        return []
    rows = con.execute(
        "SELECT DISTINCT account_id FROM core_account_links WHERE account_id IS NOT NULL"
        " AND customer_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY 1",
        [list(customers)],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _unseen(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT id FROM raw_stripe_event WHERE id IN (SELECT unnest(?::VARCHAR[]))",
        [[e["id"] for e in events]],
    ).fetchall()
    seen = {r[0] for r in rows}
    out: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["id"] not in seen:
            out.setdefault(event["id"], event)
    return sorted(out.values(), key=lambda e: (int(e.get("created") or 0), str(e["id"])))


def land_events(
    con: duckdb.DuckDBPyConnection, settings: Settings, events: list[dict[str, Any]]
) -> int:
    """Land the events ``raw_stripe_event`` does not hold, then core and history; one
    transaction. Returns how many were new."""
    new = _unseen(con, events)
    with transaction(con):
        extract = importlib.import_module("churn.pipelines.stripe.extract")
        if new:
            extract.apply_events(con, [(e, 1) for e in new], settings.stripe.key_mode)
        extract.refresh_core(con, f"webhook-{uuid.uuid4().hex[:12]}")
    return len(new)


class ModelCache:
    """The model in force, loaded once per version (loading one takes seconds)."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.model: ChurnModel | None = None

    def get(self, con: duckdb.DuckDBPyConnection, as_of: datetime) -> ChurnModel | None:
        version = in_force_version(con, as_of)
        if version is None:
            self.version, self.model = None, None
        elif version != self.version:
            self.model = load_in_force(con, as_of)
            self.version = self.model.version if self.model is not None else None
        return self.model


def score_accounts(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    as_of: datetime,
    accounts: Sequence[str],
    models: ModelCache | None = None,
) -> dict[str, pl.DataFrame]:
    """``account_health`` and ``signal_events`` rows of ``accounts`` as of ``as_of``: what
    the scoring step computes for them (signals, MRR, the model's probability and reasons,
    Payment Health), without the marts the push does not read (MRR movements). Computed
    over these accounts' own rows of the warehouse (:func:`churn.job.scope.scoped`), not
    over every account's."""
    model = (models or ModelCache()).get(con, as_of)
    sig = settings.signals
    with scoped(con, accounts, as_of) as cur:
        tables = Tables(cur)
        frames = [s.score(tables, as_of, sig) for s in SIGNALS]
        signals = (
            pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=SIGNAL_SCHEMA)
        )
        mrr = account_mrr(tables, as_of, sig)
        scores = None if model is None else predict(tables, as_of, model, sig, accounts=accounts)
        health = account_health(tables, as_of, sig, signals, mrr, scores)
    return keep({"account_health": health, "signal_events": signals}, accounts)


def rescore_and_push(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    accounts: Sequence[str],
    salesforce: Any = None,
    newest: datetime | None = None,
    models: ModelCache | None = None,
    stages: dict[str, float] | None = None,
) -> tuple[dict[str, int], int]:
    """Score as of now, keep ``accounts``, push them only. Returns (push counts, API calls).

    ``newest``: the latest ``created`` among the batch's events. An event in hand is known,
    so a Stripe clock a second ahead of this machine's does not hide it from the score.
    """
    if not accounts:
        return {}, 0
    now = warehouse.utcnow()
    # A second or two of skew, not a bogus future stamp: at most MAX_SKEW ahead of now.
    as_of = max(now, min(newest, now + MAX_SKEW)) if newest is not None else now
    t0 = time.perf_counter()
    frames = score_accounts(con, settings, as_of, accounts, models)
    t1 = time.perf_counter()
    for name, table in (("account_health", HEALTH_TABLE), ("signal_events", SIGNALS_TABLE)):
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {name} LIMIT 0")
    write_frames(con, frames, {"account_health": HEALTH_TABLE, "signal_events": SIGNALS_TABLE})
    scores = _lazy("churn.pipelines.push.sync", "Scores")
    result = _lazy("churn.pipelines.push.sync", "push")(
        settings,
        con,
        salesforce=salesforce,
        scores=scores(HEALTH_TABLE, SIGNALS_TABLE, tuple(accounts)),
    )
    if stages is not None:
        stages.update(score=t1 - t0, push=time.perf_counter() - t1)
    return dict(result.counts), result.api_calls


def process_batch(
    settings: Settings,
    spool: Spool,
    *,
    salesforce: Any = None,
    point: Callable[[str], None] | None = None,
    models: ModelCache | None = None,
    limit: int | None = None,
) -> BatchResult | None:
    """One micro-batch (module docstring); None when a run holds or waits for the lock.

    An event claimed ``MAX_ATTEMPTS`` times without landing is set aside (``failed``)."""
    lock = lock_path_for(settings)
    if run_waiting(lock):
        return None
    mark = point or (lambda name: log.info("webhook batch: %s", name))
    started = time.perf_counter()
    try:
        with run_lock(lock, holder=WEBHOOK_HOLDER):
            claimed = spool.claim(limit or settings.webhook.batch_size)
            worn = [e.seq for e in claimed if e.attempts > MAX_ATTEMPTS]
            if worn:
                spool.set_aside(worn)
                log.error("webhook batch: %d events set aside after %d attempts",
                          len(worn), MAX_ATTEMPTS)  # fmt: skip
                claimed = [e for e in claimed if e.attempts <= MAX_ATTEMPTS]
            if not claimed:
                return BatchResult(claimed=len(worn))
            mark("claimed")
            result = _locked_batch(settings, spool, claimed, salesforce, mark, models)
    except LockHeldError:
        return None
    result.seconds = time.perf_counter() - started
    log.info(
        "webhook batch: %d events (%d new), %d accounts, %.2fs (%s)",
        result.claimed, result.landed, result.accounts, result.seconds,
        ", ".join(f"{k} {v:.2f}s" for k, v in result.stage_seconds.items()),
    )  # fmt: skip
    return result


def _locked_batch(
    settings: Settings,
    spool: Spool,
    claimed: list[SpooledEvent],
    salesforce: Any,
    mark: Callable[[str], None],
    models: ModelCache | None,
) -> BatchResult:
    events = [e.event() for e in claimed]
    result = BatchResult(claimed=len(claimed))
    t0 = time.perf_counter()
    con = warehouse.connect(settings.db)
    try:
        result.landed = land_events(con, settings, events)
        result.stage_seconds["land"] = time.perf_counter() - t0
        mark("landed")
        accounts = _accounts(con, customer_ids(events))
        result.accounts = len(accounts)
        try:
            newest = max((int(e.get("created") or 0) for e in events), default=0)
            result.push_counts, result.api_calls = rescore_and_push(
                con,
                settings,
                accounts,
                salesforce,
                _EPOCH + timedelta(seconds=newest) if newest else None,
                models,
                result.stage_seconds,
            )
        except ChurnError as exc:
            # Landed, not pushed: the next churn run pushes it (it plans against
            # push_state). Counted; the reason only.
            result.push_error = f"{type(exc).__name__}"
            log.warning(
                "webhook batch: push failed (%s); the next run pushes it", type(exc).__name__
            )
            spool.count("push_failed", len(claimed))
        mark("pushed")
    finally:
        con.close()
    spool.mark_done([e.seq for e in claimed])
    mark("done")
    return result


def work(
    settings: Settings,
    spool: Spool,
    stop: threading.Event,
    *,
    once: bool = False,
    salesforce: Any = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    point: Callable[[str], None] | None = None,
    ready: threading.Event | None = None,
) -> WorkTotals:
    """Drain the spool until ``stop`` (``once``: until it is empty and no run holds the lock).

    First the model in force is loaded (seconds, once per version), so the first delivery
    does not wait for it; ``ready`` is set after that. Between batches the lock is
    released; an idle worker looks again every ``poll_seconds``. A failed batch stays
    pending and is retried after a pause.
    """
    totals = WorkTotals()
    models = ModelCache()
    single = False  # after a failed batch: one event at a time until one lands
    spool.prune(KEEP_DAYS)
    _warm_up(settings, models)
    if ready is not None:
        ready.set()
    poll = settings.webhook.poll_seconds
    sf = salesforce
    while not stop.is_set():
        if sf is None and settings.salesforce.configured:
            try:
                connect = _lazy("churn.pipelines.salesforce.client", "make_salesforce")
                sf = connect(settings.salesforce)
            except ChurnError as exc:
                log.warning("webhook worker: no Salesforce session (%s)", type(exc).__name__)
        try:
            result = process_batch(
                settings, spool, salesforce=sf, point=point, models=models,
                limit=1 if single else None,
            )  # fmt: skip
        except Exception as exc:  # the worker outlives a bad batch; the type only, no data
            single = True
            totals.failures += 1
            spool.count("batch_failed")
            log.error("webhook worker: batch failed (%s); retried", type(exc).__name__)
            stop.wait(poll * 5)
            continue
        if result is None:
            totals.busy_waits += 1
            stop.wait(poll)
            continue
        if result.claimed == 0:
            if once:
                break
            stop.wait(poll)
            continue
        single = False
        if result.push_error is not None and salesforce is None:
            sf = None  # a fresh session for the next batch (this one may have expired)
        totals.batches += 1
        totals.events += result.claimed
        totals.landed += result.landed
        totals.api_calls += result.api_calls
        if on_batch is not None:
            on_batch(result)
    return totals


def _warm_up(settings: Settings, models: ModelCache) -> None:
    """Load the model in force, if the warehouse is free now (else the first batch does)."""
    lock = lock_path_for(settings)
    if run_waiting(lock) or not settings.db.exists():
        return
    try:
        with run_lock(lock, holder=WEBHOOK_HOLDER):
            con = warehouse.connect(settings.db)
            try:
                models.get(con, warehouse.utcnow())
            finally:
                con.close()
    except (LockHeldError, ChurnError, duckdb.Error) as exc:
        log.info("webhook worker: model not preloaded (%s)", type(exc).__name__)


# -- serving ------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@dataclass
class RunningReceiver:
    """A receiver serving on a background thread (tests, the demo, the bench)."""

    url: str
    spool: Spool
    _server: Any
    _thread: threading.Thread
    _stop: threading.Event
    _worker: threading.Thread | None
    #: Set once the worker has loaded the model in force (at once without a worker).
    ready: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._worker is not None:
            self._worker.join(timeout=60)


def _uvicorn_server(settings: Settings, spool: Spool) -> Any:
    import uvicorn

    app: Starlette = _lazy("churn.pipelines.webhook.receiver", "make_app")(settings, spool)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        # Stripe waits a few seconds for an answer; keep-alive connections are reused.
        timeout_keep_alive=30,
        lifespan="off",
    )
    return uvicorn.Server(config)


def start_receiver(
    settings: Settings, *, port: int | None = None, worker: bool | None = None,
    salesforce: Any = None,
) -> RunningReceiver:  # fmt: skip
    """Serve the receiver (and, unless ``worker`` is False, a worker) in this process, on
    background threads; ``port`` 0 picks a free one."""
    spool = open_spool(settings)
    host = settings.webhook.host
    sock = _bind(host, settings.webhook.port if port is None else port)
    bound = sock.getsockname()[1]
    server = _uvicorn_server(settings, spool)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="webhook-receiver", daemon=True
    )
    thread.start()
    stop = threading.Event()
    ready = threading.Event()
    worker_thread = None
    if settings.webhook.worker_in_serve if worker is None else worker:
        worker_thread = threading.Thread(
            target=work, args=(settings, spool, stop), kwargs={"salesforce": salesforce, "ready": ready},
            name="webhook-worker", daemon=True,
        )  # fmt: skip
        worker_thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    shown = f"[{host}]" if ":" in host else host
    if worker_thread is None:
        ready.set()
    return RunningReceiver(f"http://{shown}:{bound}/stripe/webhook", spool, server, thread,
                           stop, worker_thread, ready)  # fmt: skip


@contextmanager
def receiver(settings: Settings, **kwargs: Any) -> Iterator[RunningReceiver]:
    running = start_receiver(settings, **kwargs)
    try:
        yield running
    finally:
        running.stop()


def serve(
    settings: Settings,
    *,
    worker: bool | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """``churn webhook serve``: the receiver in the foreground (uvicorn handles SIGINT and
    SIGTERM: it stops taking deliveries, finishes the ones in flight), the worker beside it
    on a thread, stopped after its current batch. ``on_listening`` gets the URL once the
    socket listens (the port the OS chose for port 0): deliveries from then on wait in the
    backlog until uvicorn accepts them."""
    if not settings.stripe.webhook_secret:
        from churn.errors import ConfigError

        raise ConfigError("STRIPE_WEBHOOK_SECRET is not set: no delivery could be verified")
    spool = open_spool(settings)
    sock = _bind(settings.webhook.host, settings.webhook.port)
    if on_listening is not None:
        host = settings.webhook.host
        shown = f"[{host}]" if ":" in host else host
        on_listening(f"http://{shown}:{sock.getsockname()[1]}/stripe/webhook")
    server = _uvicorn_server(settings, spool)
    stop = threading.Event()
    worker_thread = None
    if settings.webhook.worker_in_serve if worker is None else worker:
        worker_thread = threading.Thread(
            target=work, args=(settings, spool, stop), name="webhook-worker", daemon=True
        )
        worker_thread.start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        if worker_thread is not None:
            worker_thread.join()
