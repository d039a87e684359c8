"""The pure pieces of writing what Salesforce accepts: leaving blocked fields out, the
backoff's waits, and Bulk API 2.0's ``sf__Error`` (issue 15)."""

from __future__ import annotations

from churn.pipelines.push.apply import _bulk_error
from churn.pipelines.push.plan import (
    Change,
    idempotency_key,
    runs_to_wait,
    strip_blocked,
    without_fields,
)


def _change(fields: dict[str, object], key_field: str = "Id") -> Change:
    return Change(
        sobject="Account" if key_field == "Id" else "Task",
        record_key="001000000000001AAA",
        key_field=key_field,
        action="update_account",
        fields=fields,
        state={k: str(v) for k, v in fields.items()},
        status=None,
        idempotency_key=idempotency_key("Account", "001000000000001AAA", "update_account", fields),
    )


def test_a_change_without_a_blocked_field_keeps_the_rest_with_its_own_key() -> None:
    change = _change({"Payment_Health__c": "At Risk", "Churn_Top_Reason__c": "Late"})
    kept = without_fields(change, {"Churn_Top_Reason__c"})
    assert kept is not None and dict(kept.fields) == {"Payment_Health__c": "At Risk"}
    assert "Churn_Top_Reason__c" not in kept.state  # never claimed as held
    assert kept.idempotency_key != change.idempotency_key
    assert without_fields(change, {"Other__c"}) is change
    assert without_fields(_change({"Churn_Top_Reason__c": "x"}), {"Churn_Top_Reason__c"}) is None


def test_a_task_keeps_its_external_id_and_goes_only_with_something_else() -> None:
    ext = "Churn_Episode_Key__c"
    task = _change({ext: "pf:1", "Priority": "Urgent"}, key_field=ext)
    assert without_fields(task, {"Priority", ext}) is None
    both = _change({ext: "pf:1", "Priority": "Urgent", "Subject": "s"}, key_field=ext)
    kept = without_fields(both, {"Priority"})
    assert kept is not None and set(kept.fields) == {ext, "Subject"}


def test_strip_blocked_counts_what_each_field_costs() -> None:
    changes = [
        _change({"Payment_Health__c": "At Risk", "Churn_Top_Reason__c": "Late"}),
        _change({"Churn_Top_Reason__c": "Late"}),
        _change({"Payment_Health__c": "Healthy"}),
    ]
    kept, cost = strip_blocked(changes, [("Account", "Churn_Top_Reason__c")])
    assert [dict(c.fields) for c in kept] == [
        {"Payment_Health__c": "At Risk"},
        {"Payment_Health__c": "Healthy"},
    ]
    assert cost == {("Account", "Churn_Top_Reason__c"): 2}


def test_backoff_doubles_in_runs_and_is_bounded() -> None:
    assert [runs_to_wait(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 16]
    assert runs_to_wait(40) == 64


def test_bulk_error_gives_code_message_and_fields() -> None:
    """``sf__Error``: "Error code and message" (Get Job Failed Record Results), as
    ``CODE:message:fields``, the message holding colons of its own."""
    text = (
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:Payment_Health__c: bad value for restricted"
        " picklist field: At Risk:Payment_Health__c --"
    )
    code, message, fields = _bulk_error(text)
    assert code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert message == "Payment_Health__c: bad value for restricted picklist field: At Risk"
    assert fields == ("Payment_Health__c",)
    assert _bulk_error("ENTITY_IS_DELETED:entity is deleted:--") == (
        "ENTITY_IS_DELETED",
        "entity is deleted",
        (),
    )
    assert _bulk_error("garbled") == ("UNKNOWN", "garbled", ())
