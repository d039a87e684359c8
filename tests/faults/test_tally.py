"""The fault suite's totals add up across files (the report ``pytest -m faults`` prints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from faults import tally


@pytest.mark.faults
def test_totals_sum_every_workers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tally.ENV, str(tmp_path))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    tally.record(faults_injected=2, runs_healed=1)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    tally.record(faults_injected=3, kills=4, duplicates=0)
    assert tally.totals(tmp_path) == {
        "faults_injected": 5,
        "kills": 4,
        "runs_healed": 1,
        "rows_lost": 0,
        "duplicates": 0,
    }


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_a_killed_sessions_directory_is_removed_by_the_next_session(tmp_path: Path) -> None:
    """A session removes its totals directory at its end, but a session killed (SIGTERM
    from a timeout: `timeout 10 pytest ...` left one each time, xdist or not) never reaches
    its end: 393 ``churn-fault-tally-*`` folders had piled up in /tmp. The directory names
    its session's process; the next session removes those whose process is gone (and, of
    the older unnamed ones, those a day old), never a running session's."""
    import os

    dead = tmp_path / f"churn-fault-tally-{_dead_pid()}-abcd1234"
    running = tmp_path / f"churn-fault-tally-{os.getppid()}-efgh5678"
    old_unnamed, new_unnamed = (
        tmp_path / "churn-fault-tally-k2j3h4g5",
        tmp_path / "churn-fault-tally-zz",
    )
    other = tmp_path / "churn-kernel-abc"
    for d in (dead, running, old_unnamed, new_unnamed, other):
        d.mkdir()
    (dead / "gw0.jsonl").write_text("{}\n")
    now = 1_800_000_000.0
    for d in (dead, running, new_unnamed, other):
        os.utime(d, (now - 60, now - 60))
    os.utime(old_unnamed, (now - 2 * 86_400, now - 2 * 86_400))
    removed = tally.sweep(tmp_path, now=now)
    assert sorted(p.name for p in removed) == sorted([dead.name, old_unnamed.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, new_unnamed.name, other.name]
    )
    made = Path(tally.new_directory(tmp_path))
    assert made.name.startswith(f"churn-fault-tally-{os.getpid()}-") and made.is_dir()
