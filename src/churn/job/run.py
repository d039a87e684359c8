"""`churn run`: extract (Stripe, Salesforce, usage), links, score, push as one job.

The job holds an OS-level lock (``flock`` on a file beside the warehouse) for its whole
run, taken *before* the warehouse is opened, so two runs never overlap: the second raises
:class:`~churn.errors.LockHeldError` (exit 75). Each run writes one ``run_log`` row with
per-step counts, API calls, durations and notes (a step's sentences about what it could
not use and why, e.g. usage too sparse for the seat signals: counts and reasons, never
customer data), and its status: ``success``, ``partial`` (some steps landed, exit 3) or
``failed`` (exit 1).

Steps are looked up by the contract's names at run time, so the job works with whichever
of the other engineers' modules are installed; a missing one makes the run partial, never
a silent success.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from churn import warehouse
from churn.errors import (
    DEGRADED_EXIT_CODE,
    ChurnError,
    ConfigError,
    LockHeldError,
    PartialRunError,
)
from churn.settings import Settings

log = logging.getLogger(__name__)


class StepResult(Protocol):
    """What a step returns; it may also carry ``notes`` (a sequence of sentences)."""

    counts: dict[str, int]
    api_calls: int


StepFn = Callable[[Settings, duckdb.DuckDBPyConnection, bool], Any]


@dataclass(frozen=True)
class Step:
    name: str
    run: StepFn
    #: The step this one may run beside (the one just before it in the run), each on a
    #: connection of its own, when :func:`side_by_side` allows.
    beside: str | None = None


@dataclass
class StepOutcome:
    name: str
    status: str  # success | failed | unavailable | skipped
    counts: dict[str, int] = field(default_factory=dict)
    api_calls: int = 0
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0
    notes: tuple[str, ...] = ()
    #: Succeeded without some of its writes (the push's blocked fields): exit 4.
    degraded: bool = False


@dataclass
class JobResult:
    run_id: str
    status: str  # success | degraded | partial | failed
    steps: list[StepOutcome]
    seconds: float
    #: A dry run: the push planned and stored its plan, and wrote nothing.
    dry_run: bool = False
    #: ``run.partial_is_success``: a partial run exits 0 instead of 3.
    partial_is_success: bool = False

    @property
    def exit_code(self) -> int:
        """0 success, 4 degraded, 3 partial (0 with ``run.partial_is_success``), 1 failed;
        2 when a step failed on a setting (whatever else landed)."""
        partial = 0 if self.partial_is_success else PartialRunError.exit_code
        if any(s.status == "failed" and s.exit_code == ConfigError.exit_code for s in self.steps):
            # A step failed on a setting (a fixed session that expired mid-run): no rerun
            # heals it until the setting changes.
            return ConfigError.exit_code
        return {"success": 0, "degraded": DEGRADED_EXIT_CODE, "partial": partial}.get(
            self.status, 1
        )

    @property
    def counts(self) -> dict[str, int]:
        return {f"{s.name}.{k}": v for s in self.steps for k, v in s.counts.items()}

    @property
    def api_calls(self) -> int:
        return sum(s.api_calls for s in self.steps)

    @property
    def notes(self) -> dict[str, tuple[str, ...]]:
        """Per step with any, its notes."""
        return {s.name: s.notes for s in self.steps if s.notes}


#: How long a run waits for a webhook worker's micro-batch to release the lock.
RUN_WAITS_FOR_WORKER_SECONDS = 300.0


def lock_path_for(settings: Settings) -> Path:
    if settings.run.lock_path is not None:
        return settings.run.lock_path
    return settings.db.with_name(settings.db.name + ".lock")


#: The run lock's holder tag of the webhook worker (written beside the pid): a run that
#: finds the lock held by it waits for the worker's micro-batch instead of giving up.
WEBHOOK_HOLDER = "webhook"


def waiting_path(path: Path) -> Path:
    """The flag file a run holds (``flock``) while it waits for a worker's micro-batch."""
    return path.with_name(path.name + ".run-waiting")


def run_waiting(path: Path) -> bool:
    """Whether a run is waiting for the lock (the worker then lets it go first)."""
    flag = waiting_path(path)
    if not flag.exists():
        return False
    fd = os.open(flag, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def _holder(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"


@contextmanager
def run_lock(
    path: Path,
    *,
    holder: str = "run",
    wait_for_worker_seconds: float = 0.0,
    poll_seconds: float = 0.02,
) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock``; the OS drops it if the process dies.

    The lock file holds ``<pid> <holder>``. With ``wait_for_worker_seconds``, a lock held
    by the webhook worker (a bounded micro-batch) is waited for, with the wait flagged
    (:func:`run_waiting`) so the worker takes no next batch before this run has run: the
    two never overlap and neither starves. Any other holder (another run) refuses at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    flag_fd: int | None = None
    try:
        deadline = time.monotonic() + wait_for_worker_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = _holder(fd)
                if not held_by.endswith(" " + WEBHOOK_HOLDER) or time.monotonic() > deadline:
                    raise LockHeldError(
                        f"another churn run holds the lock {path} (pid {held_by}); not started"
                    ) from None
                if flag_fd is None:
                    flag_fd = os.open(waiting_path(path), os.O_RDWR | os.O_CREAT, 0o644)
                    fcntl.flock(flag_fd, fcntl.LOCK_EX)
                time.sleep(poll_seconds)
        if flag_fd is not None:
            os.close(flag_fd)
            flag_fd = None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}".encode(), 0)
        yield
    finally:
        if flag_fd is not None:
            os.close(flag_fd)
        os.close(fd)


def _call(module: str, func: str) -> Callable[..., Any]:
    """Import a contract entry point lazily; ImportError means that part is not installed."""
    mod = importlib.import_module(module)
    fn: Callable[..., Any] = getattr(mod, func)
    return fn


def _stripe(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    # Progress bars on a terminal (never in cron, systemd or a container's log lines),
    # but no per-step table: the job prints one summary at the end.
    fn = _call("churn.pipelines.stripe.extract", "extract_stripe")
    return fn(s, con, progress=sys.stderr.isatty(), summary=False)


def _salesforce(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    fn = _call("churn.pipelines.salesforce.extract", "extract_salesforce")
    return fn(s, con, progress=False)


def _usage(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    return _call("churn.pipelines.usage", "load_usage")(s, con)


def _links(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    return _call("churn.pipelines.links", "link_customers")(s, con)


def scoring_as_of(settings: Settings) -> datetime:
    """The instant this run scores as of: ``run.as_of`` when set, else now."""
    now = warehouse.utcnow()
    as_of = settings.run.as_of
    if as_of is None:
        return now
    if as_of > now:
        raise ConfigError("CHURN_RUN__AS_OF is in the future; a score reads only what is known")
    return as_of


@dataclass
class _NotPushed:
    """The push step of a back-fill: nothing sent, and why in the counts."""

    counts: dict[str, int]
    api_calls: int = 0


def _score(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    return _call("churn.job.scoring", "score")(s, con, as_of=scoring_as_of(s))


def _model(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    return _call("churn.job.model", "retrain_if_due")(s, con, scoring_as_of(s))


def _push(s: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool) -> Any:
    if s.run.as_of is not None:
        rows = con.execute("SELECT max(as_of) FROM account_health").fetchall()
        latest = rows[0][0] if rows else None
        if latest is not None and latest > s.run.as_of:
            # A back-fill never rewinds Salesforce to an older state than it already has.
            return _NotPushed({"not_pushed_backfill": 1})
    # After an incremental scoring, the accounts it computed (and those with an open Task
    # or a refused change): the others' rows were carried unchanged.
    accounts = _call("churn.job.incremental", "pushed_accounts")(con, s.push.account_fields)
    push = _call("churn.pipelines.push.sync", "push")
    if accounts is None:
        return push(s, con, dry_run=dry_run)
    scores = _call("churn.pipelines.push.sync", "Scores")
    return push(s, con, dry_run=dry_run,
                scores=scores("account_health", "signal_events", tuple(accounts), timeline=True))  # fmt: skip


DEFAULT_STEPS: tuple[Step, ...] = (
    Step("stripe", _stripe),
    Step("salesforce", _salesforce, beside="stripe"),
    Step("usage", _usage),
    Step("links", _links),
    Step("model", _model),
    Step("score", _score),
    Step("push", _push),
)
# A failed extract leaves stale data: scoring and pushing over it would mislead owners.
_NEEDS_EXTRACTS = {"links", "model", "score", "push"}


def side_by_side(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the extracts may run beside each other: both have landed their first read
    (each incremental now). Their incremental reads wait on different APIs and write
    different tables, so the Salesforce extract's second or so passes inside the Stripe
    events' wait for the rate limit. A first read is not run beside the other: DuckDB's
    memory limit is the database's, and the Stripe extract's (``extract_memory_limit``)
    would bound a Salesforce backfill too."""
    try:
        stripe = _call("churn.pipelines.stripe.extract", "backfilled")
        salesforce = _call("churn.pipelines.salesforce.extract", "extracted_before")
    except ModuleNotFoundError:
        return False
    return bool(stripe(con) and salesforce(con))


def _run_beside(
    first: Step, second: Step, settings: Settings, con: duckdb.DuckDBPyConnection, dry_run: bool
) -> tuple[StepOutcome, StepOutcome]:
    """``first`` here and ``second`` in a thread on a connection of its own (a DuckDB
    cursor: the same database, its own transactions); both outcomes, in step order. An
    error no step expected, in either, is raised after both ended."""
    caught: list[BaseException] = []
    got: list[StepOutcome] = []
    cursor = con.cursor()

    def other() -> None:
        try:
            got.append(_run_step(second, settings, cursor, dry_run))
        except BaseException as exc:  # raised below, in the run's thread
            caught.append(exc)

    thread = threading.Thread(target=other, name=f"step-{second.name}", daemon=True)
    thread.start()
    try:
        outcome = _run_step(first, settings, con, dry_run)
    finally:
        thread.join()
        cursor.close()
    if caught:
        raise caught[0]
    return outcome, got[0]


#: What a step's error message may hold at most (characters): errors name the stream,
#: the request and the object id; nothing longer (no payload) reaches run_log.
ERROR_BOUND = 500


def bounded(text: str, limit: int = ERROR_BOUND) -> str:
    """``text`` cut to ``limit`` characters (a payload never rides along in full)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_credentials(settings: Settings, steps: Sequence[Step]) -> None:
    """Refuse, before any work, credentials a step will need and cannot have.

    The Stripe key's shape is checked when settings load; its absence, and a Salesforce
    login that is missing or incomplete, are found here, not after the Stripe extract ran.
    """
    runs = {s.run for s in steps}
    if _stripe in runs and settings.stripe.api_key is None:
        raise ConfigError("STRIPE_API_KEY is not set (churn run extracts Stripe first)")
    sf = settings.salesforce
    # Username, password and token alone are refused by orgs today (the issue 15/17
    # finding): the password flow needs the app's client id and secret too.
    if _salesforce in runs and not (
        (sf.instance_url and sf.session_id)
        or (sf.client_id and sf.client_secret)
        or (sf.client_id and sf.username and sf.private_key_file)
    ):
        raise ConfigError(
            "Salesforce login: set SALESFORCE_INSTANCE_URL and SALESFORCE_SESSION_ID, or"
            " SALESFORCE_CLIENT_ID with SALESFORCE_USERNAME and SALESFORCE_PRIVATE_KEY_FILE"
            " (JWT bearer), or SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (client"
            " credentials; with SALESFORCE_USERNAME and SALESFORCE_PASSWORD for the password"
            " flow)"
        )
    if runs & {_salesforce, _push}:
        # A fixed session id the org no longer accepts cannot be renewed: a settings
        # problem (exit 2), found before the Stripe extract spends calls.
        _call("churn.pipelines.salesforce.client", "check_fixed_session")(sf)


def _run_step(step: Step, settings: Settings, con: Any, dry_run: bool) -> StepOutcome:
    started = time.perf_counter()
    try:
        result = step.run(settings, con, dry_run)
    except OSError as exc:
        # The network (requests' ConnectionError is an OSError too): an API unreachable.
        # Its text names hosts and ports at most, but only the kind is kept.
        return StepOutcome(
            step.name,
            "failed",
            seconds=time.perf_counter() - started,
            error=f"{step.name}: {step.name} unreachable ({type(exc).__name__}); rerun when it answers",
            exit_code=1,
        )
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("churn."):
            raise
        return StepOutcome(
            step.name, "unavailable", error=f"{step.name}: module {exc.name} is not installed"
        )
    except ChurnError as exc:
        return StepOutcome(
            step.name,
            "failed",
            seconds=time.perf_counter() - started,
            error=bounded(f"{step.name}: {type(exc).__name__}: {exc}"),
            exit_code=exc.exit_code,
            api_calls=exc.api_calls,
        )
    return StepOutcome(
        step.name,
        "success",
        counts=dict(getattr(result, "counts", {}) or {}),
        api_calls=int(getattr(result, "api_calls", 0) or 0),
        seconds=time.perf_counter() - started,
        notes=tuple(str(n) for n in getattr(result, "notes", ()) or ()),
        degraded=bool(getattr(result, "degraded", False)),
    )


def overall_status(outcomes: Sequence[StepOutcome]) -> str:
    """success when every step succeeded (degraded when one wrote without fields
    Salesforce refuses); failed when none did; partial in between.

    A step that raised an error meant as partial (budget exhausted, PartialRunError) makes
    the run partial even if it was the only step.
    """
    ok = [o for o in outcomes if o.status == "success"]
    if len(ok) == len(outcomes):
        return "degraded" if any(o.degraded for o in ok) else "success"
    if ok or any(o.exit_code == PartialRunError.exit_code for o in outcomes):
        return "partial"
    return "failed"


def run_job(
    settings: Settings,
    *,
    dry_run: bool = False,
    steps: Sequence[Step] = DEFAULT_STEPS,
    on_step: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Run every step under the lock, record one run_log row, publish the read copy.

    ``should_stop`` is asked between steps (the scheduler's SIGTERM): the remaining steps
    are marked skipped and the run ends partial, with what landed committed.
    """
    scoring_as_of(settings)  # a future as_of is a settings error, before any work
    check_credentials(settings, steps)
    with run_lock(lock_path_for(settings), wait_for_worker_seconds=RUN_WAITS_FOR_WORKER_SECONDS):
        con = warehouse.connect(
            settings.db,
            memory_limit=settings.run.duckdb_memory_limit,
            threads=settings.run.duckdb_threads,
        )
        try:
            result = _run_locked(settings, con, dry_run, steps, on_step, should_stop)
            _alert(settings, result, con)
        finally:
            con.close()
        # Closed and still locked: the dashboard's consistent copy (warehouse.read_copy).
        warehouse.publish_read_copy(settings.db, spare=settings.run.read_copy_spare)
        return result


def _alert(settings: Settings, result: JobResult, con: duckdb.DuckDBPyConnection) -> None:
    """The alert hook (:mod:`churn.job.alert`); it never changes the run's outcome."""
    from churn.job.alert import notify

    try:
        notify(result, settings, con)
    except Exception:  # a broken receiver or payload must not fail a run that landed
        log.warning("alert hook failed", exc_info=True, extra={"run_id": result.run_id})


def close_interrupted_runs(con: duckdb.DuckDBPyConnection) -> int:
    """Mark ``run_log`` rows still 'running' as 'interrupted'; returns how many.

    Called with the job lock held and the warehouse open for writing, which DuckDB grants
    to one process at a time: a row still 'running' then belongs to a process that was
    killed or crashed. Its committed work stays (every step resumes from its cursors);
    ``finished_at`` stays empty, since when it died is not known.
    """
    rows = con.execute(
        "UPDATE run_log SET status = 'interrupted', error = coalesce(error,"
        " 'the process stopped before finishing (killed or crashed); the next run resumed')"
        " WHERE status = 'running' RETURNING run_id"
    ).fetchall()
    return len(rows)


def _run_locked(
    settings: Settings,
    con: duckdb.DuckDBPyConnection,
    dry_run: bool,
    steps: Sequence[Step],
    on_step: Callable[[str], None] | None,
    should_stop: Callable[[], bool] | None,
) -> JobResult:
    run_id = f"run_{uuid.uuid4().hex[:16]}"
    started_at = warehouse.utcnow()
    t0 = time.perf_counter()
    command = "run --dry-run" if dry_run else "run"
    interrupted = close_interrupted_runs(con)
    if interrupted:
        log.warning("%d earlier run(s) marked interrupted", interrupted, extra={"run_id": run_id})
    con.execute(
        "INSERT INTO run_log (run_id, command, started_at, status) VALUES (?, ?, ?, 'running')",
        [run_id, command, started_at],
    )
    log.info("run started", extra={"run_id": run_id, "dry_run": dry_run})
    outcomes: list[StepOutcome] = []
    extract_failed = False
    beside_done: set[str] = set()
    try:
        for at, step in enumerate(steps):
            if step.name in beside_done:
                continue
            if should_stop is not None and should_stop():
                outcomes.append(StepOutcome(step.name, "skipped", error="stopped by signal"))
                continue
            if extract_failed and step.name in _NEEDS_EXTRACTS:
                outcomes.append(StepOutcome(step.name, "skipped", error="an extract failed"))
                continue
            partner = steps[at + 1] if at + 1 < len(steps) else None
            if partner is not None and partner.beside == step.name and side_by_side(con):
                if on_step is not None:
                    on_step(step.name)
                    on_step(partner.name)
                ran: tuple[StepOutcome, ...] = _run_beside(step, partner, settings, con, dry_run)
                beside_done.add(partner.name)
            else:
                if on_step is not None:
                    on_step(step.name)
                ran = (_run_step(step, settings, con, dry_run),)
            for outcome in ran:
                extract_failed = _logged(outcome, run_id) or extract_failed
                outcomes.append(outcome)
    except Exception as exc:
        # An error no step expected: the row is closed (not left 'running'), naming the
        # kind only (its text may carry what a customer wrote), and the error goes on.
        con.execute(
            "UPDATE run_log SET finished_at = ?, status = 'failed', error = ? WHERE run_id = ?",
            [
                warehouse.utcnow(),
                f"unexpected {type(exc).__name__} after {len(outcomes)} steps",
                run_id,
            ],
        )
        raise
    status = overall_status(outcomes)
    errors = "; ".join(o.error for o in outcomes if o.error) or None
    con.execute(
        "UPDATE run_log SET finished_at = ?, status = ?, counts = ?, api_calls = ?,"
        " durations = ?, error = ?, notes = ? WHERE run_id = ?",
        [
            warehouse.utcnow(),
            status,
            json.dumps({o.name: o.counts for o in outcomes}),
            json.dumps({o.name: o.api_calls for o in outcomes}),
            json.dumps({o.name: round(o.seconds, 3) for o in outcomes}),
            errors,
            json.dumps({o.name: list(o.notes) for o in outcomes if o.notes}),
            run_id,
        ],
    )
    result = JobResult(
        run_id,
        status,
        outcomes,
        time.perf_counter() - t0,
        dry_run=dry_run,
        partial_is_success=settings.run.partial_is_success,
    )
    log.log(
        {"success": logging.INFO, "partial": logging.WARNING}.get(status, logging.ERROR),
        "run %s in %.1fs (exit %d)",
        status,
        result.seconds,
        result.exit_code,
        extra={
            "run_id": run_id,
            "status": status,
            "exit_code": result.exit_code,
            "seconds": round(result.seconds, 3),
            "api_calls": result.api_calls,
            "rejections": int(result.counts.get("push.rejected", 0)),
        },
    )
    return result


def _logged(outcome: StepOutcome, run_id: str) -> bool:
    """Log a step's outcome; True when it was an extract that did not succeed."""
    log.log(
        logging.INFO if outcome.status == "success" else logging.WARNING,
        "step %s %s in %.1fs",
        outcome.name,
        outcome.status,
        outcome.seconds,
        extra={
            "run_id": run_id,
            "step": outcome.name,
            "status": outcome.status,
            "seconds": round(outcome.seconds, 3),
            "api_calls": outcome.api_calls,
            "counts": outcome.counts,
            # the error's class, not its message (which may name a record)
            "error_type": error_type_of(outcome.error),
        },
    )
    return outcome.status != "success" and outcome.name in {"stripe", "salesforce", "usage"}


def error_type_of(error: str | None) -> str | None:
    """``ExtractError`` from a step's ``"<step>: <ErrorClass>: <message>"``."""
    parts = (error or "").split(": ")
    return parts[1] if len(parts) > 2 and parts[1].isidentifier() else None
