"""From the warehouse through the real scoring to Salesforce: a failed payment opens a Task,
its recovery closes it (the marts as engineer "signals" writes them)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from churn.job.scoring import score
from churn.pipelines.push.sync import push
from churn.sandbox.salesforce.server import start_salesforce_server
from churn.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_world import GOLDEN, load_case, seed

EXT = "Churn_Episode_Key__c"
OWNER = "005000000000000OWN"


@pytest.mark.slow
def test_failed_payment_opens_a_task_and_its_recovery_closes_it(
    con: duckdb.DuckDBPyConnection, db_path: Path
) -> None:
    case = load_case(GOLDEN / "payment_failure" / "hard_decline.json")
    with start_salesforce_server() as sf:
        # The Task's owner is a User of the org (a real org refuses an OwnerId that is not).
        sf.seed("User", [{"Id": OWNER, "Name": "Owner", "IsActive": True}])
        [account] = sf.seed("Account", [{"Name": "Acme", "OwnerId": OWNER}])
        seed(con, case["tables"])
        seed(
            con,
            {
                "core_account_links": [{"customer_id": "c1", "account_id": account}],
                "core_accounts": [{"account_id": account, "name": "Acme", "owner_id": OWNER}],
                "core_users": [{"user_id": OWNER, "name": "Owner", "is_active": True}],
            },
        )
        settings = Settings().with_overrides(
            db=db_path,
            salesforce={
                "instance_url": sf.instance_url,
                "session_id": sf.session_id,
                "ca_bundle": sf.ca_path,
            },
        )
        score(settings, con, as_of=case["as_of_dt"])
        first = push(settings, con)
        assert first.rejected == []
        pushed = sf.records["Account"][account]
        assert pushed["Payment_Health__c"] == "Failed"
        assert pushed["Total_MRR__c"] == 10.0  # 1000 cents a month
        tasks = {t[EXT]: t for t in sf.records["Task"].values()}
        task = tasks["payment_failure:in1"]  # and a Task for each other signal of the case
        assert task["OwnerId"] == OWNER
        assert task["Status"] == "Not Started" and task["Priority"] == "High"
        # the subject reads as a sentence (amount, no id); the episode's ids are in the body.
        # The ladder's clock starts at the failure (2026-02-01), not at this first push: 14
        # days on, the CSM reaches out (issue 18; before, this first push said "Payment
        # failed", as if the failure had just happened).
        assert task["Subject"].startswith(
            "CSM outreach: payment still failing: The $10 invoice is unpaid"
        )
        assert "payment_failure:in1" in task["Description"]
        [case] = [c for c in sf.records["Case"].values() if not c["IsDeleted"]]
        assert (case["Churn_Case_Key__c"], case["AccountId"]) == ("payment_failure:in1", account)
        assert "2026-02-01 00:00 UTC: the card was reported stolen" in case["Description"]

        paid_at = datetime(2026, 2, 16, tzinfo=UTC).replace(tzinfo=None)
        con.execute(
            "UPDATE core_invoices SET status = 'paid', amount_paid = 1000, "
            "amount_remaining = 0, paid_at = ? WHERE invoice_id = 'in1'",
            [paid_at],
        )
        con.execute(
            "INSERT INTO core_charges (charge_id, customer_id, invoice_id, amount, currency, "
            "status, paid, created_at) VALUES ('ch2', 'c1', 'in1', 1000, 'usd', 'succeeded', "
            "true, ?)",
            [paid_at],
        )
        score(settings, con, as_of=datetime(2026, 2, 17, tzinfo=UTC).replace(tzinfo=None))
        second = push(settings, con)
        assert second.counts.get("close_task") == 1
        closed = next(t for t in sf.records["Task"].values() if t[EXT] == "payment_failure:in1")
        assert len(sf.records["Task"]) >= len(tasks)  # updated in place, never duplicated
        assert closed["Id"] == task["Id"] and closed["Status"] == "Completed"
        assert "the invoice was paid" in closed["Description"]
        assert second.counts.get("close_case") == 1  # closed in the same push as the Task
        assert sf.records["Case"][case["Id"]]["Status"] == "Closed"
        assert sf.records["Account"][account]["Payment_Health__c"] != "Failed"
