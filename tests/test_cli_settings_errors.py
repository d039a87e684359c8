"""A settings error is one line and exit 2 in every command, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.settings import load_settings


@pytest.mark.parametrize("command", [["run"], ["schedule", "--max-runs", "1"], ["score"]])
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CHURN_SIGNALS__RISK_WEIGHTS", '{"no_such_signal": 0.5}', "unknown signal"),
        ("CHURN_SIGNALS__RISK_WEIGHTS", "{not json", "not valid JSON"),
        ("CHURN_PUSH__COLLECTION_SIZE", "many", "CHURN_PUSH__COLLECTION_SIZE"),
    ],
)
def test_settings_error_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], variable: str, value: str, says: str
) -> None:
    env = {"CHURN_DB": str(tmp_path / "w.duckdb"), variable: value}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0]


def test_a_list_setting_reads_json_or_commas() -> None:
    as_json = load_settings(env={"CHURN_PUSH__TASK_SIGNALS": '["payment_failure", "downgrade"]'})
    as_list = load_settings(env={"CHURN_PUSH__TASK_SIGNALS": "payment_failure, downgrade"})
    assert (
        as_json.push.task_signals
        == as_list.push.task_signals
        == (
            "payment_failure",
            "downgrade",
        )
    )
    weights = load_settings(env={"CHURN_SIGNALS__RISK_WEIGHTS": '{"payment_failure": 1}'})
    assert weights.signals.risk_weights == {"payment_failure": 1.0}
