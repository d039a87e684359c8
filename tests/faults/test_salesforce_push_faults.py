"""The push under what a real org answers (issue 15): a field it refuses, a row another
transaction holds, a Task's Account deleted. Each faulted run is followed by a clean one,
and the org then holds what a fault-free run leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from churn.errors import DEGRADED_EXIT_CODE
from churn.pipelines.push.sync import push
from faults import tally
from faults.sf_world import held, lost_and_duplicated, org

pytestmark = [pytest.mark.faults, pytest.mark.slow]

READ_ONLY = "Churn_Top_Reason__c"
WRITES = ("PATCH", "POST", "PUT", "DELETE")


def _fault_free(tmp_path: Path) -> dict[str, object]:
    with org(tmp_path, "clean") as clean:
        push(clean.settings(), clean.world.con)
        return held(clean.sf)


def _writes(sf: object) -> int:
    return sum(1 for m, _ in sf.request_log if m in WRITES)  # type: ignore[attr-defined]


def test_a_read_only_field_costs_only_itself_then_heals_when_made_writable(
    tmp_path: Path,
) -> None:
    """Making ``Churn_Top_Reason__c`` read-only for the integration user: Salesforce
    refuses the record, INVALID_FIELD_FOR_INSERT_UPDATE ("Unable to create/update fields:
    ... Please check the security settings of this field"), naming the field in
    ``fields``. Before: the whole Account was rejected (no health field at all), run after
    run, with exit 0. Now the record is resent at once without it, the field is blocked
    (with Salesforce's message), the run is degraded (exit 4) and names the field and the
    Accounts it cost; later runs leave it out (no doomed resend) until describe shows it
    writable again."""
    expected = _fault_free(tmp_path)
    with org(tmp_path, "faulted") as o:
        o.sf.set_field("Account", READ_ONLY, updateable=False)
        first = push(o.settings(), o.world.con)
        assert first.degraded and first.rejected == []
        [blocked] = first.blocked
        assert (blocked.name, blocked.error_code) == (READ_ONLY, "INVALID_FIELD_FOR_INSERT_UPDATE")
        at_risk = [a for i, a in enumerate(o.accounts) if i % 2]
        assert blocked.records == len(at_risk)  # the Accounts with a top reason to write
        assert any(READ_ONLY in n and f"{len(at_risk)} Accounts" in n for n in first.notes)
        for i, account in enumerate(o.accounts):  # every other field landed
            rec = o.sf.records["Account"][account]
            assert rec["Payment_Health__c"] == ("At Risk" if i % 2 else "Healthy")
            assert rec[READ_ONLY] is None
        stored = o.world.con.execute(
            "SELECT field, error_code, error_message FROM push_blocked_fields"
        ).fetchall()
        assert (
            stored == [(READ_ONLY, "INVALID_FIELD_FOR_INSERT_UPDATE", blocked.message)]
            and "Unable to create/update fields" in blocked.message
        )
        status = o.world.con.execute("SELECT status FROM run_log WHERE command = 'push'").fetchall()
        assert status == [("degraded",)]
        # The next run: the field stays out, nothing is resent (one describe, no write).
        writes = _writes(o.sf)
        second = push(o.settings(), o.world.con)
        assert second.plan.changes == () and _writes(o.sf) == writes
        assert second.api_calls == 1  # the describe that finds it still read-only
        assert [b.name for b in second.blocked] == [READ_ONLY] and second.degraded
        # The admin fixes field-level security: describe shows it, the field goes again.
        o.sf.set_field("Account", READ_ONLY, updateable=True)
        healed = push(o.settings(), o.world.con)
        assert not healed.degraded and healed.counts["update_account"] == len(at_risk)
        assert o.world.con.execute("SELECT count(*) FROM push_blocked_fields").fetchone() == (0,)
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)


def test_a_restricted_picklist_without_the_value_through_bulk_then_retry_blocked(
    tmp_path: Path,
) -> None:
    """A restricted picklist missing "At Risk": Bulk API 2.0's failedResults row has
    ``sf__Error`` "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:...:Payment_Health__c" ("Error
    code and message", Salesforce's Get Job Failed Record Results). Before: those Accounts
    got nothing, every run. Now they are resent without the field in the same run, and
    ``--retry-blocked`` sends it again once the value is back."""
    expected = _fault_free(tmp_path)
    with org(tmp_path, "faulted") as o:
        o.sf.set_field(
            "Account",
            "Payment_Health__c",
            picklist_values=("Failed", "No Payment Method", "Healthy"),
        )
        first = push(o.settings(bulk_threshold=1), o.world.con)
        [blocked] = first.blocked
        assert blocked.name == "Payment_Health__c" and blocked.refused_values == ["At Risk"]
        assert first.rejected == [] and first.degraded
        transports = o.world.con.execute(
            "SELECT DISTINCT transport FROM push_log WHERE NOT success"
        ).fetchall()
        assert transports == [("bulk2",)]
        at_risk = [a for i, a in enumerate(o.accounts) if i % 2]
        for account in at_risk:
            rec = o.sf.records["Account"][account]
            assert rec["Payment_Health__c"] is None and rec["Churn_Risk__c"] == 70
        o.sf.set_field(
            "Account",
            "Payment_Health__c",
            picklist_values=("Failed", "At Risk", "No Payment Method", "Healthy"),
        )
        healed = push(o.settings(bulk_threshold=1), o.world.con, retry_blocked=True)
        assert not healed.degraded and healed.rejected == []
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)


def test_locked_rows_are_resent_within_the_run(tmp_path: Path) -> None:
    """UNABLE_TO_LOCK_ROW ("unable to obtain exclusive access to this record"): another
    transaction holds the row; retried within the run, with a backoff through the injected
    sleeper (no real wait). Before: rejected, retried only next run."""
    expected = _fault_free(tmp_path)
    waits: list[float] = []
    with org(tmp_path, "faulted") as o:
        o.sf.lock_rows(o.accounts[:2], times=2)
        result = push(o.settings(), o.world.con, sleep=waits.append)
        assert result.rejected == [] and not result.degraded
        assert waits == [1.0, 2.0]
        assert result.counts["resent_after_row_lock"] == 4
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=2, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)


def test_a_task_on_a_deleted_account_is_refused_and_backed_off(tmp_path: Path) -> None:
    """An Account deleted in Salesforce after the extract: its update and its Task's
    WhatId are refused (ENTITY_IS_DELETED); the stand-in used to accept the Task, an
    orphan. The same rejection is not resent every run: next run, then after 2 runs, 4...
    (shown in the plan as ``runs_to_wait``)."""
    with org(tmp_path, "faulted", n=2) as o:
        gone = o.accounts[1]  # the At Risk one, with a Task
        o.sf.delete("Account", gone)
        first = push(o.settings(), o.world.con)
        codes = {(r.sobject, r.error_code) for r in first.rejected}
        assert codes == {("Account", "ENTITY_IS_DELETED"), ("Task", "ENTITY_IS_DELETED")}
        assert "Task" not in o.sf.records or all(
            t["WhatId"] != gone for t in o.sf.records["Task"].values()
        )
        sent = [push(o.settings(), o.world.con) for _ in range(4)]
        planned = [len(r.plan.changes) for r in sent]
        deferred = [r.counts.get("deferred_backoff", 0) for r in sent]
        # Run 2 resends (first failure: next run); run 3 waits one run; run 4 resends;
        # runs 5 waits (two more runs after the third failure).
        assert planned == [2, 0, 2, 0] and deferred == [0, 2, 0, 2]
        waits = o.world.con.execute(
            "SELECT DISTINCT runs_to_wait FROM push_plan WHERE runs_to_wait IS NOT NULL"
        ).fetchall()
        assert waits and all(w[0] >= 1 for w in waits)
        orphans = [t for t in o.sf.records.get("Task", {}).values() if t["WhatId"] == gone]
    tally.record(faults_injected=1, runs_healed=1, rows_lost=0, duplicates=len(orphans))
    assert orphans == []


def test_cli_push_exits_4_when_degraded(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    with org(tmp_path, "faulted") as o:
        o.sf.set_field("Account", READ_ONLY, updateable=False)
        env = {
            "CHURN_DB": str(o.db),
            "SALESFORCE_INSTANCE_URL": o.sf.instance_url,
            "SALESFORCE_SESSION_ID": o.sf.session_id,
            "SALESFORCE_CA_BUNDLE": str(o.sf.ca_path),
            "SALESFORCE_API_RESERVE": "0",
            "CHURN_PUSH__FALLBACK_OWNER_ID": "005000000000FALLBK",
        }
        o.world.con.close()
        result = CliRunner().invoke(app, ["push"], env=env)
        assert result.exit_code == DEGRADED_EXIT_CODE, result.output
        assert READ_ONLY in result.output and "degraded" in result.output
    tally.record(faults_injected=1)


def test_churn_run_ends_degraded_naming_the_field_and_what_it_cost(tmp_path: Path) -> None:
    """The job's push step wrote without a refused field: the run is ``degraded`` (exit
    4, not 0), and its notes (the summary's "Needs attention", ``run_log.notes``) name the
    field and how many Accounts it cost."""
    from churn.job.run import Step, _push, run_job
    from churn.job.summary import notes_table

    with org(tmp_path, "faulted") as o:
        o.sf.set_field("Account", READ_ONLY, updateable=False)
        settings = o.settings()
        o.world.con.close()
        result = run_job(settings, steps=(Step("push", _push),))
        assert result.status == "degraded" and result.exit_code == DEGRADED_EXIT_CODE
        [note] = result.notes["push"]
        assert READ_ONLY in note and "3 Accounts" in note
        assert notes_table(result) is not None
    tally.record(faults_injected=1)


def test_field_level_security_from_the_shipped_permission_set(tmp_path: Path) -> None:
    """The stand-in takes field-level security from the permission set this project
    deploys: with it, every owned field is writable and the push is clean; with a copy
    that makes ``Churn_Top_Reason__c`` not editable (an admin's change), the push writes
    the rest and blocks that field (degraded)."""
    from churn.pipelines.push.sync import push as run_push
    from churn.sandbox.salesforce.server import shipped_permission_set

    shipped = shipped_permission_set()
    assert shipped is not None
    expected = _fault_free(tmp_path)
    with org(tmp_path, "shipped") as o:
        o.sf.apply_permission_set(shipped.read_text(encoding="utf-8"))
        result = run_push(o.settings(), o.world.con)
        assert not result.degraded and result.rejected == []
        lost, dups = lost_and_duplicated(expected, held(o.sf))
        assert (lost, dups) == (0, 0)
    narrowed = shipped.read_text(encoding="utf-8").replace(
        f"<editable>true</editable><field>Account.{READ_ONLY}</field>",
        f"<editable>false</editable><field>Account.{READ_ONLY}</field>",
    )
    assert narrowed != shipped.read_text(encoding="utf-8")
    with org(tmp_path, "narrowed") as o:
        o.sf.apply_permission_set(narrowed)
        result = run_push(o.settings(), o.world.con)
        assert [b.name for b in result.blocked] == [READ_ONLY] and result.rejected == []
        o.sf.apply_permission_set(shipped.read_text(encoding="utf-8"))  # the admin fixes it
        healed = run_push(o.settings(), o.world.con)
        assert not healed.degraded
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)


def test_a_row_locked_longer_than_the_retries_is_rejected_then_lands_next_run(
    tmp_path: Path,
) -> None:
    """The resends of a locked row are bounded (3, after 1, 2, 4 s): a row still locked
    is reported like any rejection, and the next run (the first retry is not backed off)
    lands it."""
    expected = _fault_free(tmp_path)
    waits: list[float] = []
    with org(tmp_path, "faulted") as o:
        o.sf.lock_rows(o.accounts[:1], times=10)
        first = push(o.settings(), o.world.con, sleep=waits.append)
        assert waits == [1.0, 2.0, 4.0]
        assert [(r.record_key, r.error_code) for r in first.rejected] == [
            (o.accounts[0], "UNABLE_TO_LOCK_ROW")
        ]
        o.sf.org.locked.clear()  # the other transaction committed
        second = push(o.settings(), o.world.con, sleep=waits.append)
        assert second.rejected == [] and second.counts["update_account"] == 1
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)
