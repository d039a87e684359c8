"""Issue 17: `churn doctor` checks the org before anything is written.

The Salesforce stand-in configured wrong in each way names the problem in one line, and
exits 2 (a configuration problem); a right org is all ok and exits 0. Before: no such
command (exit 2 from typer's "No such command", with no line about the org).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.sandbox.salesforce.schema import FieldDef
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server() as running:
        yield running


def _doctor(sf: RunningSalesforce, **env: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["doctor"], env={**sf.settings_env(), **env})
    return result.exit_code, result.output.splitlines()


def test_a_right_org_is_all_ok_and_nothing_is_written(sf: RunningSalesforce) -> None:
    code, lines = _doctor(sf)
    assert code == 0, "\n".join(lines)
    checks = [line for line in lines if line.startswith(("ok", "problem"))]
    assert all(line.startswith("ok") for line in checks), checks
    names = "\n".join(checks)
    for expected in (
        "login",
        "API version 62.0",
        "field Account.Payment_Health__c",
        "field Account.Total_MRR__c",
        "field Task.Churn_Episode_Key__c",
        "Task Status values",
        "Task Priority values",
        "permission set Churn_Signals_Integration",
        "daily API budget",
        "field Case.Churn_Case_Key__c",
        "Case Status values",
        "Case Origin values",
        "Case Priority values",
        "Stripe customer emails: not checkable through the API; check Dashboard >",
    ):
        assert expected in names
    assert not [m for m, _ in sf.request_log if m in ("POST", "PATCH", "PUT", "DELETE")]


def _missing_field(sf: RunningSalesforce) -> None:
    sf.drop_field("Account", "Churn_Risk__c")


def _wrong_type(sf: RunningSalesforce) -> None:
    sf.declare_field("Account", FieldDef("Total_MRR__c", "double", custom=True))


def _read_only(sf: RunningSalesforce) -> None:
    sf.declare_field(
        "Account", FieldDef("MRR_At_Risk__c", "currency", custom=True, updateable=False)
    )


def _own_status_picklist(sf: RunningSalesforce) -> None:
    sf.declare_field("Task", FieldDef("Status", "picklist", picklist_values=("Open", "Done")))


def _inactive_priority(sf: RunningSalesforce) -> None:
    sf.declare_field(
        "Task",
        FieldDef(
            "Priority", "picklist", picklist_values=("High", "Normal"), inactive_values=("Low",)
        ),
    )


def _no_permission(sf: RunningSalesforce) -> None:
    sf.unassign_permission_set()


def _low_budget(sf: RunningSalesforce) -> None:
    sf.set_api_budget(15_000, used=14_450)  # 550 left, reserve 500


def _old_org(sf: RunningSalesforce) -> None:
    with sf.org.lock:
        sf.org.api_versions = ("58.0", "59.0")


CASES: list[tuple[str, Callable[[RunningSalesforce], None], dict[str, str], str]] = [
    ("missing field", _missing_field, {}, "field Account.Churn_Risk__c: missing"),
    ("wrong type", _wrong_type, {}, "field Account.Total_MRR__c: is of type double"),
    ("read-only field", _read_only, {}, "field Account.MRR_At_Risk__c: not editable"),
    (
        "missing picklist value",
        _own_status_picklist,
        {"CHURN_PUSH__TASK_STATUS_CLOSED": "Done"},
        "Task Status values: 'Not Started' (CHURN_PUSH__TASK_STATUS_OPEN) is missing",
    ),
    (
        "inactive picklist value",
        _inactive_priority,
        {},
        "Task Priority values: 'Low' (CHURN_PUSH__TASK_PRIORITIES Low) is inactive",
    ),
    (
        "Case value the org lacks",
        lambda sf: None,
        {"CHURN_CASE__ORIGIN": "Chat"},
        "Case Origin values: 'Chat' (CHURN_CASE__ORIGIN) is missing in the org's Case Origin"
        " picklist (active: Email, Phone, Web)",
    ),
    (
        "Case field not deployed",
        lambda sf: sf.drop_field("Case", "Churn_Case_Key__c"),
        {},
        "field Case.Churn_Case_Key__c: missing",
    ),
    ("no permission", _no_permission, {}, "permission set Churn_Signals_Integration: not assigned"),
    ("low budget", _low_budget, {}, "calls left today, reserve 500: fewer than 100 above"),
    ("API version", _old_org, {}, "API version 62.0: not available in this org (newest 59.0)"),
    (
        "bad login",
        lambda sf: None,
        {"SALESFORCE_SESSION_ID": "00Dbad!token"},
        "login: SALESFORCE_SESSION_ID has expired or is invalid (401 INVALID_SESSION_ID",
    ),
]


@pytest.mark.parametrize(
    ("wrong", "expected"), [(c[1], c[2:]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_an_org_configured_wrong_is_named_in_one_line(
    sf: RunningSalesforce,
    wrong: Callable[[RunningSalesforce], None],
    expected: tuple[dict[str, str], str],
) -> None:
    env, line = expected
    wrong(sf)
    code, lines = _doctor(sf, **env)
    problems = [x for x in lines if x.startswith("problem")]
    assert code == 2, "\n".join(lines)
    assert len(problems) == 1, "\n".join(lines)
    assert line in problems[0]
    assert "00Dbad" not in "\n".join(lines)  # never a secret


def test_the_mapped_status_values_pass_and_the_push_refuses_unmapped_ones(
    sf: RunningSalesforce,
) -> None:
    _own_status_picklist(sf)
    code, lines = _doctor(
        sf, CHURN_PUSH__TASK_STATUS_OPEN="Open", CHURN_PUSH__TASK_STATUS_CLOSED="Done"
    )
    assert code == 0, "\n".join(lines)
