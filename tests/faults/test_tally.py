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
