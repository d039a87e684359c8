from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churn.cli import app


def test_help_lists_the_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "churn" in result.output.lower()


def test_extract_stripe_without_a_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("STRIPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHURN_DB", str(tmp_path / "w.duckdb"))
    help_text = CliRunner().invoke(app, ["extract", "--help"]).output
    assert "stripe" in help_text
    result = CliRunner().invoke(app, ["extract", "stripe", "--no-progress"])
    assert result.exit_code == 2
    assert "STRIPE_API_KEY" in result.output
