from __future__ import annotations

from typer.testing import CliRunner

from churn.pipelines.cli import app


def test_help_lists_the_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "churn" in result.output.lower()
