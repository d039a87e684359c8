from __future__ import annotations

from pathlib import Path

import pytest

from churn.errors import ConfigError
from churn.settings import load_settings


def test_defaults_without_environment() -> None:
    s = load_settings(env={})
    assert s.db == Path("data/churn.duckdb")
    assert s.stripe.api_base == "https://api.stripe.com"
    assert s.stripe.api_key is None
    assert s.signals.card_expiry_horizon_days == 60


def test_environment_maps_to_sections() -> None:
    s = load_settings(
        env={
            "CHURN_DB": "/tmp/x.duckdb",
            "STRIPE_API_KEY": "sk_test_abc123",
            "STRIPE_API_BASE": "http://127.0.0.1:9/",
            "SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com",
            "SALESFORCE_SESSION_ID": "00Dsecret!",
            "CHURN_SIGNALS__CARD_EXPIRY_HORIZON_DAYS": "45",
            "STRIPE_UNRELATED_TOOL_SETTING": "ignored",
        }
    )
    assert s.db == Path("/tmp/x.duckdb")
    assert s.stripe.api_base == "http://127.0.0.1:9"
    assert s.stripe.key_mode == "test"
    assert s.salesforce.configured
    assert s.signals.card_expiry_horizon_days == 45


def test_secrets_are_masked_in_repr_and_str() -> None:
    s = load_settings(
        env={"STRIPE_API_KEY": "sk_live_supersecret", "SALESFORCE_PASSWORD": "hunter2"}
    )
    for text in (repr(s), str(s), repr(s.stripe), str(s.salesforce)):
        assert "supersecret" not in text
        assert "hunter2" not in text
    assert s.stripe.key_mode == "live"


def test_malformed_value_names_the_variable_not_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"STRIPE_PAGE_SIZE": "lots", "STRIPE_API_KEY": "sk_test_s3cr3t"})
    assert "STRIPE_PAGE_SIZE" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_out_of_range_and_unknown_section_fields_are_errors() -> None:
    with pytest.raises(ConfigError, match="STRIPE_PAGE_SIZE"):
        load_settings(env={"STRIPE_PAGE_SIZE": "500"})
    with pytest.raises(ConfigError, match="CHURN_SIGNALS__NO_SUCH_THING"):
        load_settings(env={"CHURN_SIGNALS__NO_SUCH_THING": "1"})
    with pytest.raises(ConfigError, match="STRIPE_API_BASE"):
        load_settings(env={"STRIPE_API_BASE": "ftp://nope"})


def test_toml_file_then_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "churn.toml"
    cfg.write_text('db = "from_toml.duckdb"\n[signals]\ndowngrade_window_days = 30\n')
    s = load_settings(env={"CHURN_CONFIG": str(cfg), "CHURN_DB": "from_env.duckdb"})
    assert s.db == Path("from_env.duckdb")
    assert s.signals.downgrade_window_days == 30
    cfg.write_text("[signals]\ndowngrade_window_days = -1\n")
    with pytest.raises(ConfigError, match=r"\[signals\] downgrade_window_days"):
        load_settings(env={}, config_path=cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={}, config_path=tmp_path / "missing.toml")


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        s.db = Path("elsewhere")  # type: ignore[misc]
    assert s.with_overrides(db="other.duckdb").db == Path("other.duckdb")


def test_account_fields_from_the_environment_replace_the_default() -> None:
    s = load_settings(env={"CHURN_PUSH__ACCOUNT_FIELDS": '{"risk_score": "Risk__c"}'})
    assert s.push.account_fields == {"risk_score": "Risk__c"}
    with pytest.raises(ConfigError, match="CHURN_PUSH__ACCOUNT_FIELDS"):
        load_settings(env={"CHURN_PUSH__ACCOUNT_FIELDS": '{"no_such_field": "X__c"}'})


def test_timeline_group_from_the_environment_and_a_toml_table(tmp_path: Path) -> None:
    """[push.timeline] in a file, CHURN_PUSH__TIMELINE__<FIELD> in the environment; each
    kind off-able, unknown kinds refused naming the variable."""
    default = load_settings({})
    assert default.push.timeline.window_days == 30
    assert "downgrade" in default.push.timeline.kinds
    path = tmp_path / "churn.toml"
    path.write_text('[push.timeline]\nkinds = ["downgrade"]\nwindow_days = 7\n')
    from_file = load_settings({}, config_path=path)
    assert from_file.push.timeline.kinds == ("downgrade",)
    assert from_file.push.timeline.window_days == 7
    env = {"CHURN_PUSH__TIMELINE__KINDS": "upgrade,payment_recovered"}
    assert load_settings(env, config_path=path).push.timeline.kinds == (
        "upgrade",
        "payment_recovered",
    )
    assert load_settings({"CHURN_PUSH__TIMELINE__KINDS": "[]"}).push.timeline.kinds == ()
    with pytest.raises(ConfigError, match=r"CHURN_PUSH__TIMELINE__KINDS: .*unknown kind"):
        load_settings({"CHURN_PUSH__TIMELINE__KINDS": "refund"})
    with pytest.raises(ConfigError, match="CHURN_PUSH__TIMELINE__WINDOW_DAYS"):
        load_settings({"CHURN_PUSH__TIMELINE__WINDOW_DAYS": "-1"})
