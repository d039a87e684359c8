"""`churn doctor`: check the Salesforce org against the settings before anything is written.

Each check is one line, ``ok`` or ``problem``, naming what it looked at: the login, the
API version, each field the service writes or reads (present, of the right type,
writable by the integration user), the permission set assigned to that user, the Task
Status and Priority values the settings map to (present and active in the org's
picklists), and the remaining daily API budget. Only reads: a token request, ``GET
/services/data/``, ``/services/oauth2/userinfo``, two describes, two SOQL queries and
``/limits``. Messages name fields, values and settings, never a record or a secret.

:func:`check_task_picklists` is also what the push calls before it writes a Task, so an
org with its own Status picklist gets one clear error instead of every Task rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ChurnError, ConfigError, PushError
from churn.fields import ACCOUNT_FIELDS
from churn.pipelines.salesforce.client import error_codes, make_salesforce
from churn.settings import Settings

#: The permission set the metadata in ``salesforce/force-app`` deploys.
PERMISSION_SET = "Churn_Signals_Integration"
#: The budget check wants at least this many calls above ``api_reserve`` left today.
MIN_SPARE_CALLS = 100


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'problem':<8}{self.name}: {self.detail}"


def _problem(exc: Exception) -> str:
    if isinstance(exc, SalesforceError):
        return f"{type(exc).__name__}: {error_codes(exc)}"
    if isinstance(exc, requests.RequestException):
        return f"no answer ({type(exc).__name__})"
    return str(exc)


def _base(sf: Salesforce) -> str:
    return sf.base_url.split("/services/data", 1)[0]


def check_login(settings: Settings, connect: Callable[[], Salesforce]) -> tuple[Check, Any]:
    """The login, and the client when it worked."""
    try:
        sf = connect()
        # A session id is only tried by a first call: the Organization the service checks
        # before every push.
        records = sf.query("SELECT IsSandbox FROM Organization LIMIT 1")["records"]
    except (ChurnError, SalesforceError, requests.RequestException) as exc:
        return Check("login", False, _problem(exc)), None
    host = _base(sf).removeprefix("https://")
    kind = "a sandbox org" if records and records[0].get("IsSandbox") else "a production org"
    return Check("login", True, f"logged in to {host}, {kind}"), sf


def check_api_version(sf: Salesforce, version: str) -> Check:
    name = f"API version {version}"
    try:
        answer = sf.session.get(f"{_base(sf)}/services/data/", timeout=60)
        versions = [str(v.get("version")) for v in answer.json()]
    except (requests.RequestException, ValueError, AttributeError) as exc:
        return Check(name, False, f"cannot list the org's versions ({type(exc).__name__})")
    if version in versions:
        return Check(name, True, "available")
    newest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")), default="none")
    return Check(
        name,
        False,
        f"not available in this org (newest {newest}); set SALESFORCE_API_VERSION",
    )


def describe_fields(sf: Salesforce, sobject: str) -> dict[str, dict[str, Any]]:
    """The fields describe gives for ``sobject``, by lower-cased name."""
    answer = getattr(sf, sobject).describe()
    return {str(f["name"]).lower(): f for f in answer.get("fields", [])}


def _field_check(
    sobject: str,
    fields: Mapping[str, dict[str, Any]],
    name: str,
    types: Iterable[str],
    *,
    writable: bool,
    setting: str,
    external_id: bool = False,
) -> Check:
    label = f"field {sobject}.{name}"
    found = fields.get(name.lower())
    wanted = tuple(types)
    if found is None:
        return Check(
            label,
            False,
            f"missing (not deployed, or not visible to the integration user); {setting}",
        )
    if found.get("type") not in wanted:
        return Check(
            label, False, f"is of type {found.get('type')}, the service needs {' or '.join(wanted)}"
        )
    if writable and not found.get("updateable", False):
        return Check(label, False, "not editable by the integration user (field-level security)")
    if external_id and not found.get("externalId", False):
        return Check(label, False, "is not an External ID (the Task upsert needs one)")
    return Check(label, True, str(found.get("type")))


def check_account_fields(sf: Salesforce, settings: Settings) -> list[Check]:
    """Every owned Account field the settings map, the Stripe customer field, the usage
    field when set."""
    try:
        fields = describe_fields(sf, "Account")
    except (SalesforceError, requests.RequestException) as exc:
        return [Check("describe Account", False, _problem(exc))]
    out = []
    mapped = settings.push.account_fields
    for spec in ACCOUNT_FIELDS:
        if spec.name not in mapped:
            continue
        out.append(
            _field_check(
                "Account",
                fields,
                mapped[spec.name],
                (spec.type.describe_type,),
                writable=True,
                setting=f"deploy salesforce/force-app or map it in CHURN_PUSH__ACCOUNT_FIELDS ({spec.name})",
            )
        )
    stripe_field = settings.salesforce.account_stripe_customer_field
    if stripe_field not in mapped.values():
        out.append(
            _field_check(
                "Account",
                fields,
                stripe_field,
                ("string",),
                writable=False,
                setting="SALESFORCE_ACCOUNT_STRIPE_CUSTOMER_FIELD",
            )
        )
    if settings.usage.account_field:
        out.append(
            _field_check(
                "Account",
                fields,
                settings.usage.account_field,
                ("double", "int"),
                writable=False,
                setting="CHURN_USAGE__ACCOUNT_FIELD",
            )
        )
    return out


def _picklist_problem(
    fields: Mapping[str, dict[str, Any]],
    name: str,
    wanted: Mapping[str, str],
    sobject: str = "Task",
) -> str | None:
    """Why the configured values (setting -> value) do not fit the picklist ``name``."""
    found = fields.get(name.lower())
    if found is None:
        return f"{sobject}.{name} is not visible to the integration user"
    values = found.get("picklistValues") or []
    active = {str(v.get("value")) for v in values if v.get("active", True)}
    inactive = {str(v.get("value")) for v in values if not v.get("active", True)}
    bad = []
    for setting, value in wanted.items():
        if value in active:
            continue
        state = "inactive" if value in inactive else "missing"
        bad.append(f"'{value}' ({setting}) is {state}")
    if not bad:
        return None
    shown = ", ".join(sorted(active)) or "none"
    return f"{'; '.join(bad)} in the org's {sobject} {name} picklist (active: {shown})"


def _task_values(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    push = settings.push
    status = {
        "CHURN_PUSH__TASK_STATUS_OPEN": push.task_status_open,
        "CHURN_PUSH__TASK_STATUS_CLOSED": push.task_status_closed,
    }
    priority = {
        f"CHURN_PUSH__TASK_PRIORITIES {level}": value
        for level, value in push.task_priorities.items()
    }
    return status, priority


def check_task(sf: Salesforce, settings: Settings) -> list[Check]:
    """The Task external-id field and the Status and Priority values."""
    try:
        fields = describe_fields(sf, "Task")
    except (SalesforceError, requests.RequestException) as exc:
        return [Check("describe Task", False, _problem(exc))]
    ext = settings.salesforce.task_external_id_field
    out = [
        _field_check(
            "Task",
            fields,
            ext,
            ("string",),
            writable=True,
            setting="deploy salesforce/force-app (Activity field) or SALESFORCE_TASK_EXTERNAL_ID_FIELD",
            external_id=True,
        )
    ]
    status, priority = _task_values(settings)
    for name, wanted in (("Status", status), ("Priority", priority)):
        problem = _picklist_problem(fields, name, wanted)
        detail = ", ".join(sorted(set(wanted.values())))
        out.append(Check(f"Task {name} values", problem is None, problem or detail))
    return out


def check_task_picklists(sf: Salesforce, settings: Settings) -> None:
    """Raise :class:`PushError` when a Task Status or Priority value the push sends is not
    an active value of the org's picklist (one describe call)."""
    try:
        fields = describe_fields(sf, "Task")
    except SalesforceError as exc:
        raise PushError(f"describe Task: {_problem(exc)}") from None
    status, priority = _task_values(settings)
    for name, wanted in (("Status", status), ("Priority", priority)):
        problem = _picklist_problem(fields, name, wanted)
        if problem:
            raise ConfigError(f"no Task written: {problem}; map the values in the settings")


def _case_values(settings: Settings) -> dict[str, dict[str, str]]:
    case = settings.case
    return {
        "Status": {
            "CHURN_CASE__STATUS_OPEN": case.status_open,
            "CHURN_CASE__STATUS_CLOSED": case.status_closed,
        },
        "Origin": {"CHURN_CASE__ORIGIN": case.origin},
        "Priority": {
            f"CHURN_CASE__PRIORITIES {level}": value for level, value in case.priorities.items()
        },
    }


def check_case(sf: Salesforce, settings: Settings) -> list[Check]:
    """The Case external-id field and the Status, Origin and Priority values the settings
    send (nothing when Cases are off)."""
    if settings.case.stage is None:
        return [Check("Case", True, "off (CHURN_CASE__OPEN_AT)")]
    try:
        fields = describe_fields(sf, "Case")
    except (SalesforceError, requests.RequestException) as exc:
        return [Check("describe Case", False, _problem(exc))]
    out = [
        _field_check(
            "Case",
            fields,
            settings.case.external_id_field,
            ("string",),
            writable=True,
            setting="deploy salesforce/force-app (Case field) or CHURN_CASE__EXTERNAL_ID_FIELD",
            external_id=True,
        )
    ]
    for name, wanted in _case_values(settings).items():
        problem = _picklist_problem(fields, name, wanted, "Case")
        detail = ", ".join(sorted(set(wanted.values())))
        out.append(Check(f"Case {name} values", problem is None, problem or detail))
    return out


def case_picklist_problem(sf: Salesforce, settings: Settings) -> str | None:
    """One sentence when a Case value the push sends is not an active value of the org's
    picklist, or the Case cannot be described (one describe call); None when all fit."""
    try:
        fields = describe_fields(sf, "Case")
    except SalesforceError as exc:
        return f"no Case written: describe Case failed ({_problem(exc)})"
    for name, wanted in _case_values(settings).items():
        problem = _picklist_problem(fields, name, wanted, "Case")
        if problem:
            return f"no Case written: {problem}; map the values in the [case] settings"
    return None


#: Stripe's own customer emails about failed payments and card updates, in the Dashboard
#: at Settings > Billing > Subscriptions and emails: "Send emails when card payments fail"
#: (with the link: "Link to a Stripe-hosted page"), "Send emails about expiring cards", and
#: under Manage payments that require confirmation "Send a Stripe-hosted link for customers
#: to confirm their payments". Stripe's API has no resource for these settings, so the
#: doctor says where to check them instead of guessing.
STRIPE_EMAIL_SETTINGS = (
    "not checkable through the API; check Dashboard > Settings > Billing > Subscriptions"
    " and emails: 'Send emails when card payments fail' (link to a Stripe-hosted page),"
    " 'Send emails about expiring cards', 'Send a Stripe-hosted link for customers to"
    " confirm their payments'"
)


def check_stripe_emails() -> Check:
    return Check("Stripe customer emails", True, STRIPE_EMAIL_SETTINGS)


def check_permission_set(sf: Salesforce) -> Check:
    name = f"permission set {PERMISSION_SET}"
    try:
        info = sf.session.get(f"{_base(sf)}/services/oauth2/userinfo", headers=sf.headers)
        user_id = str(info.json()["user_id"])
        sets = sf.query(
            format_soql("SELECT Id FROM PermissionSet WHERE Name = {}", PERMISSION_SET)
        )["records"]
        if not sets:
            return Check(name, False, "not deployed (deploy salesforce/force-app)")
        assigned = sf.query(
            format_soql(
                "SELECT Id FROM PermissionSetAssignment WHERE AssigneeId = {} AND"
                " PermissionSetId = {}",
                user_id,
                sets[0]["Id"],
            )
        )["records"]
    except (SalesforceError, requests.RequestException, ValueError, KeyError) as exc:
        return Check(name, False, f"cannot be read: {_problem(exc)}")
    if not assigned:
        return Check(name, False, "not assigned to the integration user (Setup > Permission Sets)")
    return Check(name, True, "assigned to the integration user")


def check_budget(sf: Salesforce, reserve: int) -> Check:
    name = "daily API budget"
    try:
        limits = sf.limits()
        daily = limits["DailyApiRequests"]
        remaining, most = int(daily["Remaining"]), int(daily["Max"])
    except (SalesforceError, requests.RequestException, KeyError, TypeError) as exc:
        return Check(name, False, f"cannot be read: {_problem(exc)}")
    detail = f"{remaining:,} of {most:,} calls left today, reserve {reserve:,}"
    if remaining - reserve < MIN_SPARE_CALLS:
        return Check(
            name,
            False,
            f"{detail}: fewer than {MIN_SPARE_CALLS} above the reserve (SALESFORCE_API_RESERVE)",
        )
    return Check(name, True, detail)


def run_doctor(settings: Settings, connect: Callable[[], Salesforce] | None = None) -> list[Check]:
    """Every check, in order; after a failed login the rest are not tried."""
    if not settings.salesforce.configured:
        raise ConfigError(
            "churn doctor needs a Salesforce login (SALESFORCE_* settings, see Going live)"
        )
    login, sf = check_login(settings, connect or (lambda: make_salesforce(settings.salesforce)))
    if sf is None:
        return [login]
    checks = [login, check_api_version(sf, settings.salesforce.api_version)]
    checks += check_account_fields(sf, settings)
    checks += check_task(sf, settings)
    checks += check_case(sf, settings)
    checks.append(check_permission_set(sf))
    checks.append(check_budget(sf, settings.salesforce.api_reserve))
    checks.append(check_stripe_emails())
    return checks


__all__ = [
    "PERMISSION_SET",
    "Check",
    "case_picklist_problem",
    "check_task_picklists",
    "run_doctor",
]
