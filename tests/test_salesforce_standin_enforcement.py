"""The stand-in refuses what a real org refuses (issue 15): lookups, restricted picklists,
read-only fields, Id format, expired sessions, locked rows; with Salesforce's error shape
(``[{"message", "errorCode", "fields"}]``; per record ``{"statusCode", "message",
"fields"}`` in sObject Collections)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from churn.sandbox.salesforce.server import API_VERSION, RunningSalesforce, start_salesforce_server

pytestmark = pytest.mark.slow

OWNER = "005000000000000OWN"


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server(
        seed={"User": [{"Id": OWNER, "Name": "O", "IsActive": True}]}
    ) as r:
        yield r


def _call(sf: RunningSalesforce, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        f"{sf.instance_url}/services/data/v{API_VERSION}/{path}",
        headers={"Authorization": f"Bearer {sf.session_id}", "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body),
        verify=str(sf.ca_path),
        timeout=600,
    )


def _task(sf: RunningSalesforce, what_id: str) -> requests.Response:
    return _call(sf, "POST", "sobjects/Task", {"Subject": "s", "WhatId": what_id})


def test_a_task_on_a_missing_deleted_or_wrong_object_is_refused(sf: RunningSalesforce) -> None:
    """A lookup is checked on every write: "invalid cross reference id" for a record that
    is not there (INVALID_CROSS_REFERENCE_KEY), ENTITY_IS_DELETED for a deleted one,
    FIELD_INTEGRITY_EXCEPTION ("id value of incorrect type") for an Id of another object,
    MALFORMED_ID for text that is no Id. Before: every one was accepted."""
    [live, gone] = sf.seed("Account", [{"Name": "A"}, {"Name": "B"}])
    sf.delete("Account", gone)
    assert _task(sf, live).status_code == 201
    cases = {
        "001000000000999AAA": "INVALID_CROSS_REFERENCE_KEY",
        gone: "ENTITY_IS_DELETED",
        OWNER: "FIELD_INTEGRITY_EXCEPTION",
        "not-an-id": "MALFORMED_ID",
    }
    for what_id, code in cases.items():
        answer = _task(sf, what_id)
        assert answer.status_code == 400
        [error] = answer.json()
        assert error["errorCode"] == code and error["fields"] == ["WhatId"]
        assert set(error) == {"message", "errorCode", "fields"}
    assert len(sf.records["Task"]) == 1
    # A 15-character Id names the same record as its 18-character form.
    assert _task(sf, live[:15]).status_code == 201
    assert (
        _call(sf, "PATCH", "sobjects/Account/bad-id", {"Name": "x"}).json()[0]["errorCode"]
        == "MALFORMED_ID"
    )


def test_restricted_picklist_and_read_only_field_per_record(sf: RunningSalesforce) -> None:
    [acct] = sf.seed("Account", [{"Name": "A"}])
    sf.set_field("Account", "Payment_Health__c", picklist_values=("Failed", "Healthy"))
    sf.set_field("Account", "Churn_Top_Reason__c", updateable=False)
    records = [
        {"attributes": {"type": "Account"}, "Id": acct, "Payment_Health__c": "At Risk"},
        {"attributes": {"type": "Account"}, "Id": acct, "Churn_Top_Reason__c": "x"},
        {"attributes": {"type": "Account"}, "Id": acct, "Payment_Health__c": "Healthy"},
    ]
    answer = _call(sf, "PATCH", "composite/sobjects", {"allOrNone": False, "records": records})
    first, second, third = answer.json()
    assert first["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert first["errors"][0]["fields"] == ["Payment_Health__c"]
    assert second["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert second["errors"][0]["fields"] == ["Churn_Top_Reason__c"]
    assert third["success"] is True
    described = {
        f["name"]: f for f in _call(sf, "GET", "sobjects/Account/describe").json()["fields"]
    }
    assert described["Churn_Top_Reason__c"]["updateable"] is False
    assert described["Payment_Health__c"]["restrictedPicklist"] is True
    assert [v["value"] for v in described["Payment_Health__c"]["picklistValues"]] == [
        "Failed",
        "Healthy",
    ]
    assert described["OwnerId"]["referenceTo"] == ["User"]


def test_user_has_no_is_deleted_field(sf: RunningSalesforce) -> None:
    """Users are deactivated, never deleted: User has no IsDeleted field (the object
    reference lists IsActive, not IsDeleted), so a query naming it is INVALID_FIELD."""
    names = {f["name"] for f in _call(sf, "GET", "sobjects/User/describe").json()["fields"]}
    assert "IsActive" in names and "IsDeleted" not in names
    answer = _call(sf, "GET", "query?q=SELECT+Id,+IsDeleted+FROM+User")
    assert answer.status_code == 400 and answer.json()[0]["errorCode"] == "INVALID_FIELD"


def test_sessions_expire_and_rows_lock_on_demand(sf: RunningSalesforce) -> None:
    [acct] = sf.seed("Account", [{"Name": "A"}])
    sf.lock_rows([acct], times=1)
    locked = _call(sf, "PATCH", f"sobjects/Account/{acct}", {"Name": "B"})
    assert locked.status_code == 400 and locked.json()[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    assert _call(sf, "PATCH", f"sobjects/Account/{acct}", {"Name": "B"}).status_code == 204
    sf.expire_sessions(after_requests=1)
    assert _call(sf, "GET", "limits").status_code == 200
    expired = _call(sf, "GET", "limits")
    assert expired.status_code == 401
    assert expired.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]
