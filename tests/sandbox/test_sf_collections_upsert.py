from __future__ import annotations

from churn.pipelines.salesforce.client import make_salesforce
from churn.sandbox.salesforce.server import start_salesforce_server
from churn.settings import load_settings


def test_collections_upsert_by_external_id_creates_then_updates() -> None:
    """PATCH composite/sobjects/Task/Churn_Episode_Key__c, as the push sends Tasks."""
    with start_salesforce_server() as sf:
        client = make_salesforce(load_settings(env=sf.settings_env()).salesforce)
        path = "composite/sobjects/Task/Churn_Episode_Key__c"
        rec = {"attributes": {"type": "Task"}, "Churn_Episode_Key__c": "ep-1", "Subject": "a"}
        first = client.restful(path, method="PATCH", json={"allOrNone": False, "records": [rec]})
        second = client.restful(
            path, method="PATCH", json={"allOrNone": False, "records": [{**rec, "Subject": "b"}]}
        )
        assert first[0]["success"] and first[0]["created"] is True
        assert second[0]["success"] and second[0]["created"] is False
        assert second[0]["id"] == first[0]["id"]
        tasks = [t for t in sf.records["Task"].values() if t["Churn_Episode_Key__c"] == "ep-1"]
        assert len(tasks) == 1 and tasks[0]["Subject"] == "b"
