"""A world as it stood at an earlier instant: the time-travel test's other half.

``world_at(folder, at, out)`` writes a world folder whose ``now`` is ``at``, rebuilt from
the world's own events: every Stripe object in the state its latest event at or before
``at`` carried, objects created after ``at`` left out, events after ``at`` dropped, the
usage feed cut at ``at``'s day. Extracting it gives the warehouse a service installed at
``at`` would have had; scoring that as of ``at`` is the reference a warehouse extracted
today must reproduce for the same instant (the point-in-time rule).

What an event stream cannot rebuild is counted, not guessed: an object created by
``at`` with no event at or before it is kept in today's state (``kept_without_event``).
Salesforce records are served as they are today (the world keeps no Salesforce history).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churn.errors import SandboxError


@dataclass
class TimeTravelReport:
    """What the rebuilt world holds, per Stripe object type."""

    at: int
    objects: dict[str, int] = field(default_factory=dict)
    dropped_later: dict[str, int] = field(default_factory=dict)
    kept_without_event: dict[str, int] = field(default_factory=dict)
    events: int = 0


def _read(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)


def _stripe_file(folder: Path, name: str) -> Path | None:
    for p in (folder / "stripe" / f"{name}.jsonl.gz", folder / "stripe" / f"{name}.jsonl"):
        if p.exists():
            return p
    return None


def world_at(folder: Path, at: datetime | int, out: Path) -> TimeTravelReport:
    """Write ``folder`` as it stood at ``at`` (naive UTC or unix seconds) into ``out``."""
    manifest_path = folder / "world.json"
    if not manifest_path.exists():
        raise SandboxError(f"{folder} is not a world folder (no world.json)")
    manifest = json.loads(manifest_path.read_text())
    ts = (
        at
        if isinstance(at, int)
        else int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
    )
    if ts > int(manifest["now"]):
        raise SandboxError("a world can be rebuilt only for an instant before its now")
    report = TimeTravelReport(at=ts)

    # The state each object's latest event at or before `at` carried (file order breaks
    # ties between events of one second, as the world wrote them in order).
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    kept_events: list[dict[str, Any]] = []
    events_path = _stripe_file(folder, "event")
    for event in _read(events_path) if events_path else ():
        created = int(event["created"])
        if created > ts:
            continue
        kept_events.append(event)
        obj = (event.get("data") or {}).get("object") or {}
        oid = obj.get("id")
        if isinstance(oid, str) and created >= latest.get(oid, (-1, {}))[0]:
            latest[oid] = (created, obj)
    report.events = len(kept_events)

    if out.exists():
        shutil.rmtree(out)
    (out / "stripe").mkdir(parents=True)
    for path in sorted((folder / "stripe").glob("*.jsonl*")):
        kind = path.name.split(".")[0]
        if kind == "event":
            continue
        rows: list[dict[str, Any]] = []
        for obj in _read(path):
            if int(obj.get("created") or 0) > ts:
                report.dropped_later[kind] = report.dropped_later.get(kind, 0) + 1
                continue
            seen = latest.get(obj["id"])
            if seen is None:
                report.kept_without_event[kind] = report.kept_without_event.get(kind, 0) + 1
                rows.append(obj)
            else:
                rows.append(seen[1])
        report.objects[kind] = len(rows)
        _write(out / "stripe" / f"{kind}.jsonl.gz", rows)
    _write(out / "stripe" / "event.jsonl.gz", kept_events)

    if (folder / "salesforce").is_dir():
        shutil.copytree(folder / "salesforce", out / "salesforce")
    usage = folder / "usage" / "usage.csv"
    if usage.exists():
        day = datetime.fromtimestamp(ts, UTC).date().isoformat()
        (out / "usage").mkdir()
        with (
            usage.open(newline="") as src,
            (out / "usage" / "usage.csv").open("w", newline="") as dst,
        ):
            reader = csv.reader(src)
            writer = csv.writer(dst)
            header = next(reader, None)
            if header is not None:
                writer.writerow(header)
                at_day = header.index("day")
                writer.writerows(r for r in reader if r[at_day] <= day)
    if (folder / "truth.csv").exists():
        shutil.copy(folder / "truth.csv", out / "truth.csv")
    manifest = {
        **manifest,
        "now": ts,
        "counts": {**report.objects, "event": report.events},
        "rebuilt_from": {"now": manifest["now"], "at": ts},
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report


#: What is compared per account, each a cause when it differs.
ASPECTS = (
    "payment_health",
    "total_mrr",
    "risk_score",
    "known_churn",
    "churn_probability",
    "model_version",
)
#: Probabilities closer than this are the same score (float noise of one model fed the
#: same features; a risk score is compared in whole percent anyway).
PROBABILITY_TOLERANCE = 1e-6


@dataclass
class Comparison:
    """Scoring as of ``at``: a warehouse extracted at ``at`` against one extracted now."""

    at: datetime
    accounts: int = 0
    equal: int = 0
    #: cause -> accounts differing by it (an account may differ by several).
    differing: dict[str, int] = field(default_factory=dict)
    #: cause -> a few account keys, to look at (synthetic ids of a sandbox world).
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: the one model both warehouses were scored with (None: rule-based score only)
    model_version: str | None = None

    def lines(self) -> list[str]:
        out = [
            f"time travel as of {self.at:%Y-%m-%d}: {self.accounts} accounts compared, "
            f"{self.equal} equal, {self.accounts - self.equal} differing"
            + (f"; model {self.model_version}" if self.model_version else "")
        ]
        out += [f"  {cause}: {n}" for cause, n in sorted(self.differing.items())]
        return out


def _run(folder: Path, db: Path, at: datetime, names: tuple[str, ...]) -> None:
    """Run the job's steps named ``names`` on ``folder``'s world into ``db`` as of ``at``."""
    from churn.job.run import DEFAULT_STEPS, run_job
    from churn.sandbox.demo import demo_settings, serve_world

    with serve_world(folder) as sandbox:
        settings = demo_settings(sandbox, db).with_overrides(run={"as_of": at})
        result = run_job(settings, steps=[s for s in DEFAULT_STEPS if s.name in names])
    if result.status != "success":
        errors = "; ".join(o.error for o in result.steps if o.error)
        raise SandboxError(f"time travel: the job on {folder.name} ended {result.status}: {errors}")


#: The job's steps that land data (everything before the model and scoring).
EXTRACT_STEPS = ("stripe", "salesforce", "usage", "links")


def _extract_and_score(folder: Path, db: Path, at: datetime) -> None:
    """Extract and score without a model (the rule-based score only)."""
    _run(folder, db, at, (*EXTRACT_STEPS, "score"))


def train_once_and_store(train_db: Path, dbs: tuple[Path, ...], at: datetime) -> str:
    """Train the churn model at ``at`` on ``train_db``'s warehouse once and store the same
    version, promoted, in every warehouse of ``dbs``: their scores as of ``at`` then differ
    only by the features each warehouse gives the one model, never by a fit. Returns the
    version (``baseline-...`` when the history holds too few churners)."""
    from churn import warehouse
    from churn.job.model import promote, save_model
    from churn.settings import Settings
    from churn.signals.model.model import train
    from churn.signals.tables import Tables

    settings = Settings()
    con = warehouse.connect(train_db, read_only=True)
    try:
        model, _ = train(Tables(con), settings.signals, at, trained_at=at)
    finally:
        con.close()
    for db in dbs:
        con = warehouse.connect(db)
        try:
            save_model(con, model, at)
            promote(con, model.version, at)
        finally:
            con.close()
    return model.version


def _scores(db: Path, at: datetime) -> dict[str, dict[str, Any]]:
    from churn import warehouse

    con = warehouse.connect(db, read_only=True)
    try:
        health = con.execute(
            "SELECT account_id, payment_health, total_mrr_minor, risk_score, known_churn,"
            " churn_probability, model_version FROM account_health WHERE as_of = ?",
            [at],
        ).fetchall()
        events = con.execute(
            "SELECT account_id, signal, episode_key, severity FROM signal_events WHERE as_of = ?",
            [at],
        ).fetchall()
    finally:
        con.close()
    out: dict[str, dict[str, Any]] = {}
    for account, ph, mrr, risk, known, probability, version in health:
        out[account] = {
            "payment_health": ph,
            "total_mrr": mrr,
            "risk_score": risk,
            "known_churn": known,
            "churn_probability": probability,
            "model_version": version,
        }
    for account, signal, key, severity in events:
        row = out.setdefault(account, {})
        row.setdefault(f"signal:{signal}", set()).add((key, severity))
    return out


def _differ(key: str, a: Any, b: Any) -> bool:
    if key == "churn_probability" and a is not None and b is not None:
        return bool(abs(float(a) - float(b)) > PROBABILITY_TOLERANCE)
    return bool(a != b)


def compare_at(folder: Path, at: datetime, work: Path, *, model: bool = True) -> Comparison:
    """Extract ``folder`` as it stood at ``at`` and as it stands now, score both as of
    ``at`` and compare every account (``work`` holds the two warehouses).

    With ``model`` (the default) the churn model is trained once, at ``at`` on today's
    warehouse (labels known at ``at`` only), stored in both and promoted, and both are
    scored with it: the probability, the risk score it makes and the version are compared
    like the signals. Without it, the rule-based score only."""
    work.mkdir(parents=True, exist_ok=True)
    then_world = work / "world-then"
    world_at(folder, at, then_world)
    then_db, now_db = work / "then.duckdb", work / "now.duckdb"
    for db in (then_db, now_db):
        db.unlink(missing_ok=True)
    if model:
        _run(then_world, then_db, at, EXTRACT_STEPS)
        _run(folder, now_db, at, EXTRACT_STEPS)
        version = train_once_and_store(now_db, (then_db, now_db), at)
        _run(then_world, then_db, at, ("score",))
        _run(folder, now_db, at, ("score",))
    else:
        version = None
        _extract_and_score(then_world, then_db, at)
        _extract_and_score(folder, now_db, at)
    then, now = _scores(then_db, at), _scores(now_db, at)
    result = Comparison(at=at, model_version=version)
    for account in sorted(set(then) | set(now)):
        result.accounts += 1
        a, b = then.get(account), now.get(account)
        if a is None or b is None:
            causes = ["only_then" if b is None else "only_now"]
        else:
            keys = sorted(set(a) | set(b))
            causes = [k for k in keys if _differ(k, a.get(k), b.get(k))]
        if not causes:
            result.equal += 1
        for cause in causes:
            result.differing[cause] = result.differing.get(cause, 0) + 1
            result.examples.setdefault(cause, [])
            if len(result.examples[cause]) < 5:
                result.examples[cause].append(account)
    return result
