"""The fault suite's running totals: faults injected, kills, runs healed, rows lost, duplicates.

Each fault test calls :func:`record` with what it did and what it found; the totals are
printed at the end of the session (``pytest -m faults``), summed across xdist workers
through one JSON-lines file per worker in a directory the controller chooses
(:func:`new_directory`, named after its process; the session removes it at its end, and
the next session removes one a killed session left: :func:`sweep`). A test that
finds a lost row or a duplicate also fails on its own assertion: the totals are the
suite's report, not its verdict.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

#: Environment variable naming the directory the totals are written to.
ENV = "CHURN_FAULT_TALLY_DIR"
KEYS = ("faults_injected", "kills", "runs_healed", "rows_lost", "duplicates")
#: The totals directories' names: ``churn-fault-tally-<controller pid>-<random>``.
PREFIX = "churn-fault-tally-"
_PID = re.compile(rf"^{PREFIX}(\d+)-")
#: A directory of the older, unnamed form is removed once this old (no session runs a day).
UNNAMED_AGE = 86_400.0


def new_directory(root: Path | None = None) -> str:
    """A new totals directory, named after this process (the session's controller)."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path, *, now: float | None = None) -> list[Path]:
    """Remove the totals directories under ``root`` that sessions killed before their end
    left: those whose process no longer runs, and unnamed ones older than a day. Returns
    what it removed."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(root.glob(f"{PREFIX}*")):
        match = _PID.match(path.name)
        try:
            if match:
                stale = int(match.group(1)) != os.getpid() and not _running(int(match.group(1)))
            else:
                stale = now - path.stat().st_mtime > UNNAMED_AGE
        except OSError:
            continue  # removed meanwhile
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def record(
    *,
    faults_injected: int = 0,
    kills: int = 0,
    runs_healed: int = 0,
    rows_lost: int = 0,
    duplicates: int = 0,
) -> None:
    """Add to the session's totals (a no-op when no session directory is set)."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    row = {
        "faults_injected": faults_injected,
        "kills": kills,
        "runs_healed": runs_healed,
        "rows_lost": rows_lost,
        "duplicates": duplicates,
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # Made again if it went (a session whose process another's sweep could not see): a
    # test never fails for its report.
    Path(directory).mkdir(parents=True, exist_ok=True)
    with (Path(directory) / f"{worker}.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def totals(directory: Path) -> dict[str, int]:
    """The sums over every worker's file in ``directory``."""
    sums = dict.fromkeys(KEYS, 0)
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in KEYS:
                sums[key] += int(row.get(key, 0))
    return sums
