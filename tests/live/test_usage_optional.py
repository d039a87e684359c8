"""Issue 17: the usage feed is optional.

README, Going live: "Usage feed (optional)". Before: with no usage setting the usage step
raised ConfigError, the run skipped links, scoring and the push and ended partial (exit 3),
which the README's systemd unit counted as success (``SuccessExitStatus=3 75``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb

from churn import warehouse
from churn.job.run import DEFAULT_STEPS, Step, run_job
from churn.pipelines.usage import NOT_CONFIGURED
from churn.settings import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _ok(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
    return SimpleNamespace(counts={"objects": 1}, api_calls=0)


def test_no_usage_setting_means_no_seat_signals_named_once_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    settings = load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb")})
    assert settings.usage.folder is None and settings.usage.account_field is None
    real = {s.name: s for s in DEFAULT_STEPS}
    steps = [
        Step("stripe", _ok),
        Step("salesforce", _ok),
        real["usage"],
        real["links"],
        real["score"],
        Step("push", _ok),
    ]
    result = run_job(settings, steps=steps)
    assert [(o.name, o.status) for o in result.steps] == [
        (name, "success") for name in ("stripe", "salesforce", "usage", "links", "score", "push")
    ]
    assert (result.status, result.exit_code) == ("success", 0)
    # Named once, by the usage step; scoring adds no per-account note about it.
    all_notes = [n for notes in result.notes.values() for n in notes]
    assert all_notes.count(NOT_CONFIGURED) == 1
    assert result.notes["usage"] == (NOT_CONFIGURED,)
    assert not any("usage" in n for n in result.notes.get("score", ()))
    con = warehouse.connect(settings.db)
    try:
        [(notes,)] = con.execute("SELECT notes FROM run_log").fetchall()
    finally:
        con.close()
    assert json.loads(notes)["usage"] == [NOT_CONFIGURED]


def test_the_readme_systemd_unit_does_not_count_a_partial_run_as_success() -> None:
    """systemd.service: "SuccessExitStatus= Takes a list of exit status definitions that,
    when returned by the main service process, will be considered successful termination,
    in addition to the normal successful exit status 0". A partial run (exit 3) is a real
    failure an operator must see; a tick that found the lock held (75) is not."""
    text = README.read_text()
    units = re.findall(r"^SuccessExitStatus=(.*)$", text, flags=re.MULTILINE)
    assert units, "the README shows a systemd unit"
    for line in units:
        assert "3" not in line.split(), line
        assert "75" in line.split()
