"""SIGKILL a real `churn run` (extract, links, score, push) at spread points of a first run
(the Stripe backfill) and of a second one (incremental); the next run in each case leaves
the warehouse and the Salesforce stand-in's records as one clean run does.

The kill points are stderr lines of the verbose run (`churn -v run`: every HTTP request,
every committed page, the scoring's end) of a clean run: four spread over the Stripe
extract, three over the Salesforce extract, one right after it (usage, links, scoring run
without a line), three over the push; so each step is hit whatever its speed on a loaded
machine, and each point names the step it fell in. A killed run is followed by one run,
as the clean one is; the one column the push writes back into the warehouse (the Account's
Stripe Customer Id, read by the next Salesforce extract) lags by a run after a kill before
the push, so it is compared in the stand-in's records, not in core_accounts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from churn.job.run import DEFAULT_STEPS, run_job
from churn.sandbox.demo import Sandbox, ensure_world, serve_world
from churn.settings import load_settings
from faults import tally
from faults.child_env import sandbox_env
from faults.warehouse_compare import contents, difference

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NOW = datetime(2026, 11, 2, tzinfo=UTC).replace(tzinfo=None)
STEPS = tuple(s for s in DEFAULT_STEPS if s.name != "model")
#: Kill points per phase (backfill, incremental): 2 x 11 = 22 kills.
POINTS = 11
#: What the push writes and the next extract reads back (compared in the stand-in).
PUSHED_BACK = {"core_accounts": {"stripe_customer_id"}}


def _env(box: Sandbox, db: Path) -> dict[str, str]:
    return sandbox_env(
        box,
        db,
        CHURN_RUN__AS_OF=NOW.isoformat(),
        # the model's cadence off: `churn run` here is extract, links, score and push
        CHURN_SIGNALS__MODEL_RETRAIN_EVERY_DAYS="0",
        STRIPE_PAGE_SIZE="10",  # many pages: many transactions to be killed between
        STRIPE_LAND_BATCH_PAGES="1",
        STRIPE_EVENTS_BATCH_PAGES="1",
    )


def _run(box: Sandbox, db: Path) -> None:
    """A whole run in this process (the rerun after a kill)."""
    settings = load_settings(env=_env(box, db))
    result = run_job(settings, steps=STEPS)
    assert result.status == "success", [(s.name, s.error) for s in result.steps]


def _cli(box: Sandbox, db: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "churn", "-v", "run"],
        env=_env(box, db), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _step_of(line: bytes, box: Sandbox, seen: str) -> str:
    """The step a verbose line shows the run in, given the one before."""
    sf_port = box.salesforce.settings_env()["SALESFORCE_INSTANCE_URL"].rsplit(":", 1)[-1]
    if b"scored as_of" in line:
        return "push"
    if seen == "push":
        return seen
    if f":{sf_port}".encode() in line or b"/services/" in line:
        return "salesforce" if seen in ("stripe", "salesforce") else seen
    if b"/v1/" in line or b"page committed" in line:
        return "stripe"
    if seen == "salesforce" and (b"usage" in line or b"links" in line):
        return "links/score"
    return seen


def _sf_state(box: Sandbox) -> dict[str, Counter[Any]]:
    """Tasks and Accounts as the push left them (Ids and stamps apart)."""
    stamps = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "attributes"}
    out: dict[str, Counter[Any]] = {}
    for sobject in ("Task", "Account"):
        records = box.salesforce.records.get(sobject, {}).values()
        out[sobject] = Counter(
            tuple(sorted((k, str(v)) for k, v in r.items() if k not in stamps)) for r in records
        )
    return out


def _kill_at(box: Sandbox, db: Path, lines: int) -> str:
    """SIGKILL the run after its ``lines``-th stderr line; the step it was in."""
    process = _cli(box, db)
    assert process.stderr is not None
    step = "stripe"
    for _ in range(lines):
        line = process.stderr.readline()
        if not line:
            break
        step = _step_of(line, box, step)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=600)  # a guard against a hang, not a speed check
    return step if process.returncode == -signal.SIGKILL else "after the end"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("kills") / "worlds", 25, 5, now=NOW)


@pytest.fixture(scope="module")
def clean(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per phase: a clean run's verbose length, and the warehouse and records after it."""
    out: dict[str, Any] = {}
    tmp = tmp_path_factory.mktemp("clean")
    for phase in ("backfill", "incremental"):
        db = tmp / f"{phase}.duckdb"
        with serve_world(world) as box:
            if phase == "incremental":
                _run(box, db)
            process = _cli(box, db)
            _, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
            _run(box, db)  # a run after a clean one changes nothing either
            out[phase] = (_points(err.splitlines(), box), contents(db, PUSHED_BACK), _sf_state(box))
    return out


def _points(lines: list[bytes], box: Sandbox) -> list[int]:
    """The POINTS line numbers to kill after, by step (see the module's docstring)."""
    sf_port = box.salesforce.settings_env()["SALESFORCE_INSTANCE_URL"].rsplit(":", 1)[-1]
    sf = next(i for i, line in enumerate(lines) if f":{sf_port}".encode() in line)
    scored = next(i for i, line in enumerate(lines) if b"scored as_of" in line)
    end = len(lines)
    return [
        *(max(1, int(sf * f)) for f in (0.1, 0.35, 0.6, 0.85)),
        *(sf + 1 + int((scored - 1 - sf) * f) for f in (0.2, 0.5, 0.8)),
        scored,  # after the last line before scoring's end: usage, links, scoring
        *(scored + 1 + int((end - scored - 1) * f) for f in (0.1, 0.4, 0.7)),
    ]


@pytest.mark.parametrize("phase", ["backfill", "incremental"])
@pytest.mark.parametrize("point", range(POINTS))
def test_a_killed_run_then_a_rerun_equals_a_clean_run(
    world: Path, clean: dict[str, Any], tmp_path: Path, phase: str, point: int
) -> None:
    points, want, want_sf = clean[phase]
    lines = points[point]
    db = tmp_path / "w.duckdb"
    with serve_world(world) as box:
        if phase == "incremental":
            _run(box, db)
        step = _kill_at(box, db, lines)
        if point == 7 and step == "salesforce":
            step = "usage/links/score"  # no line of their own: right after the extract
        _run(box, db)
        got_sf = _sf_state(box)
    lost, extra, tables = difference(want, contents(db, PUSHED_BACK))
    sf_lost, sf_extra, sf_tables = difference(want_sf, got_sf)
    tally.record(
        kills=int(step != "after the end"),
        runs_healed=1,
        rows_lost=lost + sf_lost,
        duplicates=extra + sf_extra,
    )
    print(f"{phase} kill after line {lines} ({points}): in {step}")
    assert (lost, extra) == (0, 0), (phase, lines, step, tables)
    assert (sf_lost, sf_extra) == (0, 0), (phase, lines, step, sf_tables)
