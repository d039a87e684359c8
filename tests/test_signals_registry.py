"""Driven by the signal registry: every rule about a signal is declared once, and a
forgotten one fails here. Parametrized over ``SIGNALS``, so a new signal is checked
without editing this file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from churn.errors import ConfigError
from churn.pipelines.push.plan import TASK, Episode, Owner, PushedState, ladder, plan_tasks
from churn.settings import PushSettings, SignalSettings, load_settings
from churn.signals import (
    LADDERS,
    SIGNAL_SCHEMA,
    SIGNALS,
    SIGNALS_BY_NAME,
    UNKNOWN_RESOLUTION,
    Signal,
)
from churn.signals.health import risk_score
from churn.signals.tables import Tables
from golden_world import cases, load_case, seed

AS_OF = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).replace(tzinfo=None)
EXT = "Churn_Episode_Key__c"
BY_NAME = pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: s.name)


def _row(signal: str, account: str = "001A", score: float = 1.0) -> dict[str, object]:
    return {
        "account_id": account,
        "signal": signal,
        "score": score,
        "severity": "high",
        "reason": "why",
        "evidence": "{}",
        "as_of": AS_OF,
        "episode_key": f"{signal}:{account}",
    }


def _episode(signal: str) -> Episode:
    return Episode(f"{signal}:001A", "001A", signal, "high", f"{signal} holds")


def test_names_are_unique_and_every_module_has_its_golden_cases() -> None:
    names = [s.name for s in SIGNALS]
    assert len(names) == len(set(names))
    assert all(len(cases(n)) >= 8 for n in names), {n: len(cases(n)) for n in names}


@BY_NAME
def test_a_risk_signal_has_a_weight_and_no_other_kind_has_one(signal: Signal) -> None:
    if signal.is_risk:
        assert signal.weight is not None and 0 < signal.weight <= 1
    else:
        assert signal.weight is None


@BY_NAME
def test_the_settings_defaults_come_from_the_registry(signal: Signal) -> None:
    weights = SignalSettings().risk_weights
    assert weights.get(signal.name) == signal.weight
    assert (signal.name in PushSettings().task_signals) is signal.makes_tasks


@BY_NAME
def test_a_risk_signal_moves_the_risk_score_by_its_weight(signal: Signal) -> None:
    rows = pl.DataFrame([_row(signal.name)], schema=SIGNAL_SCHEMA)
    scored = risk_score(rows, SignalSettings())
    if signal.is_risk:
        assert signal.weight is not None
        assert scored["risk_score"].to_list() == [round(100 * signal.weight)]
    else:  # known churn and expansion are shown apart, never folded into the score
        assert scored.height == 0


@BY_NAME
def test_the_task_decision_is_the_registry_s(signal: Signal) -> None:
    owners = {"001A": Owner("005A", True)}
    changes = plan_tasks([_episode(signal.name)], owners, {}, PushSettings(), EXT, AS_OF)
    assert [c.action for c in changes] == (["create_task"] if signal.makes_tasks else [])


@BY_NAME
def test_a_resolved_task_is_closed_with_the_signal_s_own_sentence(signal: Signal) -> None:
    assert signal.resolution and signal.resolution != UNKNOWN_RESOLUTION
    assert not signal.resolution.endswith(".") and signal.resolution[0].islower()
    key = f"{signal.name}:001A"
    state = {
        key: PushedState(
            TASK, key, {"_signal": signal.name, "Description": "d"}, AS_OF, status="open"
        )
    }
    [closed] = plan_tasks([], {"001A": Owner("005A", True)}, state, PushSettings(), EXT, AS_OF)
    assert closed.action == "close_task"
    assert f": {signal.resolution}." in closed.fields["Description"]


@BY_NAME
def test_the_ladder_is_the_one_the_signal_names(signal: Signal) -> None:
    assert signal.ladder in LADDERS
    settings = PushSettings()
    started = AS_OF - timedelta(hours=settings.escalate_after_hours + 1)
    rung = ladder(_episode(signal.name), AS_OF, started, settings)
    assert rung.stage == (1 if signal.ladder == "dunning" else 0)


def test_a_ladder_is_chosen_by_exact_name_never_by_substring() -> None:
    """A new signal called "failed_payment_recency" is not on the dunning ladder until
    the registry says so (it used to come out as "CSM outreach: payment still failing")."""
    settings = PushSettings()
    started = AS_OF - timedelta(hours=settings.outreach_after_hours + 1)
    rung = ladder(_episode("failed_payment_recency"), AS_OF, started, settings)
    assert (rung.stage, rung.label, rung.priority) == (0, "Failed payment recency", None)


@pytest.mark.parametrize(
    "path", [p for s in SIGNALS for p in cases(s.name)], ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_a_signal_emits_only_its_own_registered_name(path: Path, tmp_path: Path) -> None:
    from churn import warehouse

    con: duckdb.DuckDBPyConnection = warehouse.connect(tmp_path / "w.duckdb")
    try:
        case = load_case(path)
        seed(con, case["tables"])
        signal = SIGNALS_BY_NAME[path.parent.name]
        settings = SignalSettings(**case.get("settings", {}))
        rows = signal.score(Tables(con), case["as_of_dt"], settings)
    finally:
        con.close()
    assert set(rows["signal"].to_list()) <= {signal.name}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHURN_SIGNALS__RISK_WEIGHTS", '{"failed_payment_recency": 0.5}'),
        ("CHURN_SIGNALS__RISK_WEIGHTS", '{"cancel_at_period_end": 0.5}'),
        ("CHURN_PUSH__TASK_SIGNALS", '["no_such_signal"]'),
    ],
)
def test_settings_naming_a_signal_the_registry_does_not_have_are_refused(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=variable) as caught:
        load_settings(env={variable: value})
    assert "not risk signals" in str(caught.value) or "unknown signal" in str(caught.value)
