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
        ("STRIPE_PAGE_SIZE", "0", "STRIPE_PAGE_SIZE"),
        # issue 15: unknown settings and bad values were accepted silently
        ("CHURN_NOSUCH__THING", "1", "CHURN_NOSUCH__THING"),
        ("CHURN_DB_PATH", "x.duckdb", "CHURN_DB_PATH"),
        ("CHURN_RUN__EVERY", "sometimes", "CHURN_RUN__EVERY"),
        # Stripe's keys: "sk_test_" / "sk_live_" secret keys, "rk_test_" / "rk_live_"
        # restricted keys (docs.stripe.com/keys); a publishable key cannot read the API.
        ("STRIPE_API_KEY", "pk_test_abcdef", "STRIPE_API_KEY"),
        ("STRIPE_API_KEY", "sk_test_", "STRIPE_API_KEY"),
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


@pytest.mark.parametrize("command", [["run"], ["schedule", "--max-runs", "1"], ["score"]])
def test_a_broken_toml_file_is_one_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    cfg = tmp_path / "churn.toml"
    cfg.write_text("[signals\nrisk = ")
    env = {"CHURN_DB": str(tmp_path / "w.duckdb"), "CHURN_CONFIG": str(cfg)}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "not valid TOML" in lines[0]


def test_the_error_never_shows_the_value_of_a_malformed_key(tmp_path: Path) -> None:
    env = {"CHURN_DB": str(tmp_path / "w.duckdb"), "STRIPE_API_KEY": "pk_live_SECRETISH123"}
    result = CliRunner().invoke(app, ["run"], env=env)
    assert result.exit_code == 2 and "SECRETISH" not in result.output


def test_the_tools_variables_are_not_settings() -> None:
    env = {"CHURN_CUTOFF": "2026-01-01", "CHURN_FAULT_TALLY_DIR": "/tmp/x", "CHURN_TRUTH": "t"}
    assert load_settings(env=env).run.every == "15m"


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({}, "STRIPE_API_KEY"),
        ({"STRIPE_API_KEY": "sk_test_abc123"}, "SALESFORCE_"),
        # a password login without the connected app's client id/secret cannot log in
        (
            {"STRIPE_API_KEY": "sk_test_abc123", "SALESFORCE_USERNAME": "u@example.com",
             "SALESFORCE_PASSWORD": "pw"},
            "SALESFORCE_CLIENT_ID",
        ),
    ],
)  # fmt: skip
def test_missing_credentials_stop_churn_run_before_any_work(
    tmp_path: Path, variables: dict[str, str], says: str
) -> None:
    """Issue 15: a missing Salesforce login was found only after the Stripe extract ran.
    Nothing listens on the discard port: had the extract started, it would have failed
    there, after opening the warehouse; the check comes first, and exits 2."""
    db = tmp_path / "w.duckdb"
    env = {"CHURN_DB": str(db), "STRIPE_API_BASE": "http://127.0.0.1:9", **variables}
    result = CliRunner().invoke(app, ["run"], env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0]
    assert not db.exists()  # no work: the warehouse was not even opened


def test_the_cli_global_options_variables_are_not_unknown_settings() -> None:
    """CHURN_LOG_FORMAT and CHURN_LOG_LEVEL are the CLI's ``--log-format``/``--log-level``
    (their envvar), not settings: the unknown-variable check must not refuse them."""
    from churn.settings import load_settings

    settings = load_settings(env={"CHURN_LOG_FORMAT": "json", "CHURN_LOG_LEVEL": "INFO"})
    assert settings.db.name == "churn.duckdb"


def test_a_jwt_bearer_login_is_a_complete_salesforce_login(tmp_path: Path) -> None:
    """The JWT bearer flow (consumer key, run-as user, private key; no secret) passes the
    check churn run makes before any work, like the other logins."""
    from churn.job.run import DEFAULT_STEPS, check_credentials
    from churn.settings import load_settings

    key = tmp_path / "churn.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    settings = load_settings(
        env={
            "STRIPE_API_KEY": "sk_test_x",
            "SALESFORCE_CLIENT_ID": "3MVG9consumer",
            "SALESFORCE_USERNAME": "integration@example.com",
            "SALESFORCE_PRIVATE_KEY_FILE": str(key),
        }
    )
    check_credentials(settings, DEFAULT_STEPS)  # no ConfigError
