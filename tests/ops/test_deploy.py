"""The example configuration and the container files (issue 17: no container, no example
config)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from churn.cli import app
from churn.cli.config import example_toml
from churn.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "churn.example.toml"


def test_the_example_config_is_generated_from_the_settings_model() -> None:
    """Regenerate with `churn config example > deploy/churn.example.toml`."""
    assert EXAMPLE.read_text() == example_toml()
    result = CliRunner().invoke(app, ["config", "example"])
    assert result.exit_code == 0 and result.stdout == example_toml()


def test_the_example_names_every_setting_and_its_defaults_load(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for section, info in Settings.model_fields.items():
        model = info.annotation
        fields = getattr(model, "model_fields", None)
        if fields is None:
            assert re.search(rf"^# {section} = ", text, flags=re.M), section
            continue
        body = text.split(f"\n[{section}]\n")[1].split("\n[")[0]
        for name, field in fields.items():
            inner = getattr(field.annotation, "model_fields", None)
            if inner is None:
                assert re.search(rf"^# {name} = ", body, flags=re.M), f"{section}.{name}"
                continue
            # a group inside the section ([push.timeline]): its own table, every field
            group = text.split(f"\n[{section}.{name}]\n")[1].split("\n[")[0]
            for leaf in inner:
                assert re.search(rf"^# {leaf} = ", group, flags=re.M), f"{section}.{name}.{leaf}"
    # every line with a value, uncommented, is valid TOML that loads as the defaults
    uncommented = "\n".join(
        line[2:] if re.match(r"# [a-z_]+ = ", line) and "(unset)" not in line else line
        for line in text.splitlines()
    )
    tomllib.loads(uncommented)
    path = tmp_path / "churn.toml"
    path.write_text(uncommented)
    assert load_settings(env={}, config_path=path) == Settings()


def test_the_container_runs_churn_as_a_non_root_user_from_the_venv() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, flags=re.M)
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["/opt/churn/\.venv/bin/churn"', dockerfile, flags=re.M)
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "schedule" in compose and "dashboard" in compose
    # the scheduler and the dashboard share one volume for the DuckDB file
    assert compose.count("churn-data:/data") == 2
