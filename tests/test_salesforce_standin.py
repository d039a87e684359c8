from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from simple_salesforce import SalesforceMalformedRequest
from simple_salesforce.exceptions import SalesforceError

from churn.errors import ApiBudgetExhaustedError, SalesforceExtractError
from churn.pipelines.salesforce.client import make_salesforce
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import SalesforceSettings, load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sf_server() -> Iterator[RunningSalesforce]:
    with start_salesforce_server(batch_size=200) as running:
        yield running


def _client(running: RunningSalesforce, **extra: Any):  # type: ignore[no-untyped-def]
    settings = load_settings(env=running.settings_env()).salesforce
    return make_salesforce(settings.model_copy(update=extra))


def test_session_login_crud_and_system_fields(sf_server: RunningSalesforce) -> None:
    sf = _client(sf_server)
    rid = sf.Account.create({"Name": "Acme", "Website": "https://acme.io"})["id"]
    rec = sf.Account.get(rid)
    assert rec["Name"] == "Acme" and rec["IsDeleted"] is False
    stamp = rec["SystemModstamp"]
    assert stamp.endswith("+0000") and len(stamp) == len("2024-01-01T00:00:00.000+0000")
    sf.Account.update(rid, {"Total_MRR__c": 1200})
    assert sf.Account.get(rid)["Total_MRR__c"] == 1200
    assert sf.Account.get(rid)["SystemModstamp"] >= stamp
    sf.Account.delete(rid)
    live = sf.query(f"SELECT Id FROM Account WHERE Id = '{rid}'")
    every = sf.query_all(
        f"SELECT Id, IsDeleted FROM Account WHERE Id = '{rid}'", include_deleted=True
    )
    assert live["totalSize"] == 0
    assert every["records"][0]["IsDeleted"] is True


def test_unknown_field_gives_invalid_field_error_body(sf_server: RunningSalesforce) -> None:
    sf = _client(sf_server)
    with pytest.raises(SalesforceMalformedRequest) as info:
        sf.query("SELECT Id, Bogus__c FROM Account")
    body = info.value.content
    assert isinstance(body, list) and body[0]["errorCode"] == "INVALID_FIELD"
    assert set(body[0]) == {"message", "errorCode", "fields"}
    with pytest.raises(SalesforceMalformedRequest) as info:
        sf.Account.create({"Name": "x", "Nope__c": 1})
    assert info.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_query_paging_where_order_limit_and_count(sf_server: RunningSalesforce) -> None:
    ids = sf_server.seed(
        "Contact", [{"LastName": f"P{i:04d}", "Email": f"p{i}@x.io"} for i in range(450)]
    )
    sf = _client(sf_server)
    first = sf.query("SELECT Id, LastName FROM Contact WHERE LastName LIKE 'P%' ORDER BY LastName")
    assert len(first["records"]) == 200 and not first["done"]
    assert first["nextRecordsUrl"].startswith("/services/data/v")
    every = sf.query_all(
        "SELECT Id, LastName FROM Contact WHERE LastName LIKE 'P%' ORDER BY LastName DESC"
    )
    names = [r["LastName"] for r in every["records"]]
    assert len(names) == 450 and names == sorted(names, reverse=True)
    count = sf.query("SELECT COUNT() FROM Contact WHERE LastName LIKE 'P%'")
    assert count["totalSize"] == 450 and count["records"] == []
    some = sf.query(
        "SELECT Id FROM Contact WHERE (LastName = 'P0001' OR LastName IN ('P0002','P0003'))"
        " AND SystemModstamp > 2000-01-01T00:00:00Z AND CreatedDate < 2999-01-01T00:00:00.000+0000 LIMIT 2"
    )
    assert len(some["records"]) == 2
    assert {r["Id"] for r in some["records"]} <= set(ids)


def test_upsert_by_external_id(sf_server: RunningSalesforce) -> None:
    sf = _client(sf_server)
    assert sf.Task.upsert("Churn_Episode_Key__c/ep-1", {"Subject": "Call"}) == 201
    assert sf.Task.upsert("Churn_Episode_Key__c/ep-1", {"Subject": "Call again"}) == 200
    rows = sf.query("SELECT Subject FROM Task WHERE Churn_Episode_Key__c = 'ep-1'")["records"]
    assert [r["Subject"] for r in rows] == ["Call again"]


def test_collections_partial_success_and_validation_rule() -> None:
    rule_calls = []

    def no_negative(obj: str, rec: Any) -> str | None:
        rule_calls.append(obj)
        mrr = rec.get("Total_MRR__c")
        return "MRR cannot be negative" if mrr is not None and mrr < 0 else None

    with start_salesforce_server(rules=[no_negative]) as running:
        a, b = running.seed("Account", [{"Name": "A"}, {"Name": "B"}])
        sf = _client(running)
        out = sf.restful(
            "composite/sobjects",
            method="PATCH",
            json={
                "allOrNone": False,
                "records": [
                    {"attributes": {"type": "Account"}, "Id": a, "Total_MRR__c": 10},
                    {"attributes": {"type": "Account"}, "Id": b, "Total_MRR__c": -5},
                ],
            },
        )
        assert out[0] == {"id": a, "success": True, "errors": []}
        assert out[1]["success"] is False
        assert out[1]["errors"][0]["statusCode"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        assert running.records["Account"][b]["Total_MRR__c"] is None
        too_many = [{"attributes": {"type": "Account"}, "Name": str(i)} for i in range(201)]
        with pytest.raises(SalesforceError):
            sf.restful("composite/sobjects", method="POST", json={"records": too_many})
        assert running.calls("POST", "composite/sobjects") == 1


def test_limits_header_and_budget_reserve() -> None:
    with start_salesforce_server(api_budget=10) as running:
        sf = _client(running, api_reserve=3)
        limits = sf.limits()
        assert limits["DailyApiRequests"]["Max"] == 10
        assert sf.api_usage["api-usage"].used == 1
        sent = 1
        with pytest.raises(ApiBudgetExhaustedError) as info:
            for _ in range(20):
                sf.query("SELECT Id FROM Account")
                sent += 1
        assert sent == 7  # 10 - 7 used = 3 left = the reserve: no more calls go out
        assert running.org.api_used == 7
        assert "SALESFORCE_API_RESERVE" in str(info.value)
        assert running.session_id not in str(info.value)


def test_request_limit_exceeded_is_403() -> None:
    with start_salesforce_server(api_budget=1) as running:
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE would win over s.verify
        s.verify = str(running.ca_path)
        url = f"{running.instance_url}/services/data/v62.0/limits"
        headers = {"Authorization": f"Bearer {running.session_id}"}
        assert s.get(url, headers=headers).status_code == 200
        r = s.get(url, headers=headers)
        assert r.status_code == 403 and r.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        assert r.headers["Sforce-Limit-Info"] == "api-usage=1/1"
        bad = s.get(url, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_oauth_password_and_client_credentials(sf_server: RunningSalesforce) -> None:
    base = SalesforceSettings(instance_url=sf_server.instance_url, ca_bundle=sf_server.ca_path)
    pw = base.model_copy(
        update={
            "username": sf_server.username,
            "password": load_settings(
                env={"SALESFORCE_PASSWORD": sf_server.password}
            ).salesforce.password,
            "security_token": load_settings(
                env={"SALESFORCE_SECURITY_TOKEN": sf_server.security_token}
            ).salesforce.security_token,
            "client_id": sf_server.client_id,
            "client_secret": load_settings(
                env={"SALESFORCE_CLIENT_SECRET": sf_server.client_secret}
            ).salesforce.client_secret,
        }
    )
    org = make_salesforce(pw).query("SELECT IsSandbox FROM Organization")
    assert org["records"][0]["IsSandbox"] is True
    cc = pw.model_copy(update={"username": None, "password": None})
    assert make_salesforce(cc).query("SELECT COUNT() FROM Organization")["totalSize"] == 1
    wrong = cc.model_copy(
        update={
            "client_secret": load_settings(
                env={"SALESFORCE_CLIENT_SECRET": "bad-secret"}
            ).salesforce.client_secret
        }
    )
    with pytest.raises(SalesforceExtractError) as info:
        make_salesforce(wrong)
    assert "invalid_grant" in str(info.value) and "bad-secret" not in str(info.value)


def test_bulk2_ingest_upsert_with_failed_results() -> None:
    def no_negative(obj: str, rec: Any) -> str | None:
        mrr = rec.get("Total_MRR__c")
        return "MRR cannot be negative" if mrr is not None and mrr < 0 else None

    with start_salesforce_server(rules=[no_negative]) as running:
        sf = _client(running)
        out = sf.bulk2.Account.upsert(
            records=[
                {"Stripe_Customer_Id__c": "cus_1", "Name": "One", "Total_MRR__c": "10"},
                {"Stripe_Customer_Id__c": "cus_2", "Name": "Two", "Total_MRR__c": "-1"},
            ],
            external_id_field="Stripe_Customer_Id__c",
            wait=0.05,  # type: ignore[arg-type]
        )
        assert out[0]["numberRecordsProcessed"] == 2 and out[0]["numberRecordsFailed"] == 1
        job_id = str(out[0]["job_id"])
        failed = sf.bulk2.Account.get_failed_records(job_id)
        assert "FIELD_CUSTOM_VALIDATION_EXCEPTION:MRR cannot be negative" in failed
        ok = sf.bulk2.Account.get_successful_records(job_id)
        assert ok.splitlines()[0].startswith('"sf__Id","sf__Created"') and "cus_1" in ok
        (acc,) = [r for r in running.records["Account"].values()]
        assert acc["Name"] == "One" and acc["Total_MRR__c"] == 10.0


def test_batch_size_header_and_total_size_on_every_page(sf_server: RunningSalesforce) -> None:
    sf_server.seed("User", [{"Name": f"U{i}", "IsActive": True} for i in range(250)])
    sf = _client(sf_server)
    sf.headers["Sforce-Query-Options"] = "batchSize=50"  # below 200: Salesforce uses 200
    try:
        first = sf.query("SELECT Id FROM User WHERE Name LIKE 'U%'")
        second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    finally:
        del sf.headers["Sforce-Query-Options"]
    assert len(first["records"]) == 200 and len(second["records"]) == 50
    assert first["totalSize"] == second["totalSize"] == 250 and second["done"] is True


def test_collection_delete_reports_each_record(sf_server: RunningSalesforce) -> None:
    (a,) = sf_server.seed("Account", [{"Name": "ToDelete"}])
    sf = _client(sf_server)
    out = sf.restful(
        "composite/sobjects", method="DELETE", params={"ids": f"{a},001999999999999AAA"}
    )
    assert out[0] == {"id": a, "success": True, "errors": []}
    assert out[1]["success"] is False and out[1]["errors"][0]["statusCode"] == "NOT_FOUND"
    assert sf_server.records["Account"][a]["IsDeleted"] is True


def test_deleting_an_account_deletes_its_tasks(sf_server: RunningSalesforce) -> None:
    a, b = sf_server.seed("Account", [{"Name": "Gone"}, {"Name": "Stays"}])
    t1, t2 = sf_server.seed("Task", [{"WhatId": a, "Subject": "x"}, {"WhatId": b}])
    _client(sf_server).Account.delete(a)
    assert sf_server.records["Task"][t1]["IsDeleted"] is True
    assert sf_server.records["Task"][t2]["IsDeleted"] is False


def test_list_settings_from_environment() -> None:
    s = load_settings(env={"SALESFORCE_LINK_METADATA_KEYS": "crm_id, sfid"}).salesforce
    assert s.link_metadata_keys == ("crm_id", "sfid")
