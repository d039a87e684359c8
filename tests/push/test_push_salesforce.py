"""The push over HTTP against a loopback Salesforce stand-in (issue 5, "Must hold")."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from push_world import AS_OF, KillPush, World

from churn.errors import ApiBudgetExhaustedError, ProductionSafetyError
from churn.pipelines.push.sync import PushResult, push
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings
from faults import tally

pytestmark = pytest.mark.slow

OWNER = "005000000000000OWN"
EXT = "Churn_Episode_Key__c"
WRITES = ("PATCH", "POST", "PUT", "DELETE")


FALLBACK = "005000000000FALLBK"


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    # The owners the Tasks name are Users of the org: a real org refuses an OwnerId that
    # is not one (INVALID_CROSS_REFERENCE_KEY), and so does the stand-in.
    users = [
        {"Id": OWNER, "Name": "Owner", "IsActive": True},
        {"Id": FALLBACK, "Name": "Fallback", "IsActive": True},
    ]
    with start_salesforce_server(seed={"User": users}) as running:
        yield running


def _settings(sf: RunningSalesforce, db: Path, **push_settings: object) -> Settings:
    return Settings().with_overrides(
        db=db,
        push={"fallback_owner_id": FALLBACK, **push_settings},
        salesforce={
            "instance_url": sf.instance_url,
            "session_id": sf.session_id,
            "ca_bundle": sf.ca_path,
            "api_reserve": 0,
        },
    )


def _seed(world: World, sf: RunningSalesforce, n: int, **health: object) -> list[str]:
    ids = sf.seed("Account", [{"Name": f"Account {i}", "OwnerId": OWNER} for i in range(n)])
    world.accounts(ids, owner=OWNER)
    world.users({OWNER: True})
    world.health([{"account_id": a, **health} for a in ids])
    return ids


def _push(world: World, sf: RunningSalesforce, db: Path, **push_settings: object) -> PushResult:
    return push(_settings(sf, db, **push_settings), world.con)


def _writes(sf: RunningSalesforce) -> int:
    return sum(1 for m, _ in sf.request_log if m in WRITES)


def _account(sf: RunningSalesforce, rid: str) -> dict[str, Any]:
    return sf.records["Account"][rid]


def _tasks(sf: RunningSalesforce) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for task in sf.records.get("Task", {}).values():
        out.setdefault(task[EXT], []).append(task)
    return out


def test_second_run_with_nothing_changed_makes_no_write_call(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 3, payment_health="At Risk", total_mrr=123450)
    world.signals([{"account_id": ids[0], "episode_key": "payment_failure:in_1"}])
    first = _push(world, sf, db_path)
    assert first.counts["update_account"] == 3 and first.counts["create_task"] == 1
    assert _account(sf, ids[0])["Payment_Health__c"] == "At Risk"
    assert _account(sf, ids[0])["Total_MRR__c"] == 1234.5
    assert _account(sf, ids[0])["Next_Renewal_Date__c"] == "2026-12-31"
    assert _account(sf, ids[0])["Stripe_Customer_Id__c"] == "cus_" + ids[0][-4:]
    writes, requests = _writes(sf), len(sf.request_log)
    second = _push(world, sf, db_path)
    assert second.counts == {"planned": 0} and second.api_calls == 0
    assert _writes(sf) == writes and len(sf.request_log) == requests


@pytest.mark.parametrize("n", [1, 200, 401])
def test_n_changed_accounts_take_ceil_n_over_200_collection_calls(
    world: World, sf: RunningSalesforce, db_path: Path, n: int
) -> None:
    ids = _seed(world, sf, n)
    result = _push(world, sf, db_path)
    collection_calls = sum(
        1 for m, p in sf.request_log if m == "PATCH" and p.endswith("/composite/sobjects")
    )
    assert collection_calls == math.ceil(n / 200)
    assert result.counts["update_account"] == n
    assert result.api_calls == collection_calls + 1  # and the Organization query
    assert all(_account(sf, a)["Payment_Health__c"] == "Healthy" for a in ids)
    # Only the changed field goes next time, in one call for every Account.
    world.health([{"account_id": a, "payment_health": "At Risk"} for a in ids])
    again = _push(world, sf, db_path)
    assert again.counts["update_account"] == n
    assert {tuple(c.fields) for c in again.plan.changes} == {("Payment_Health__c",)}
    assert again.api_calls == math.ceil(n / 200) + 1


def test_budget_running_out_stops_the_push_and_the_next_run_completes(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 5)
    sf.set_api_budget(4, used=0)  # the Organization query and three collections of one
    with pytest.raises(ApiBudgetExhaustedError) as stopped:
        _push(world, sf, db_path, collection_size=1)
    assert stopped.value.exit_code != 0
    done = [a for a in ids if _account(sf, a)["Payment_Health__c"] is not None]
    assert len(done) == 3
    assert world.con.execute("SELECT count(*) FROM push_state").fetchone() == (3,)
    status = world.con.execute("SELECT status FROM run_log WHERE command = 'push'").fetchone()
    assert status == ("failed",)
    sf.set_api_budget(100, used=0)  # a new day
    resumed = _push(world, sf, db_path, collection_size=1)
    assert resumed.counts["update_account"] == 2
    assert all(_account(sf, a)["Payment_Health__c"] == "Healthy" for a in ids)


def test_recovered_payment_closes_its_task(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 1)
    world.signals(
        [{"account_id": ids[0], "episode_key": "payment_failure:in_9", "reason": "in_9 failed"}]
    )
    _push(world, sf, db_path)
    [task] = sf.records["Task"].values()
    assert task["Status"] == "Not Started" and task["WhatId"] == ids[0]
    assert task["OwnerId"] == OWNER and task["Subject"].startswith("Payment failed")
    later = AS_OF + timedelta(days=1)
    world.health([{"account_id": ids[0]}], as_of=later)
    world.signals([], as_of=later)  # the latest scoring has no signal at all
    result = _push(world, sf, db_path)
    assert result.counts["close_task"] == 1
    closed = _tasks(sf)["payment_failure:in_9"]
    assert len(closed) == 1 and closed[0]["Status"] == "Completed"
    assert "the invoice was paid" in closed[0]["Description"]
    assert len(sf.records["Task"]) == 1
    assert _push(world, sf, db_path).counts == {"planned": 0}


def test_inactive_owner_gets_the_fallback(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 2)
    world.con.execute(
        "UPDATE core_accounts SET owner_id = '005000000000000OLD' WHERE account_id = ?", [ids[1]]
    )
    world.users({"005000000000000OLD": False})
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    _push(world, sf, db_path)
    owners = {t[EXT]: t["OwnerId"] for t in sf.records["Task"].values()}
    assert owners == {f"pf:{ids[0]}": OWNER, f"pf:{ids[1]}": "005000000000FALLBK"}


def test_rejected_records_are_reported_and_do_not_stop_the_rest(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 4)
    message = "Payment Health cannot change while the Account is in legal review"
    sf.add_rule(lambda obj, rec: message if rec["Id"] == ids[1] else None)
    sf.delete("Account", ids[2])
    result = _push(world, sf, db_path)
    rejected = {r.record_key: (r.error_code, r.message) for r in result.rejected}
    assert rejected == {
        ids[1]: ("FIELD_CUSTOM_VALIDATION_EXCEPTION", message),
        ids[2]: ("ENTITY_IS_DELETED", "entity is deleted"),
    }
    assert _account(sf, ids[0])["Payment_Health__c"] == "Healthy"
    assert _account(sf, ids[3])["Payment_Health__c"] == "Healthy"
    logged = world.con.execute(
        "SELECT record_key, error_message FROM push_log WHERE NOT success ORDER BY record_key"
    ).fetchall()
    assert logged == [(ids[1], message), (ids[2], "entity is deleted")]
    # Retried next run, with the error kept in the plan; accepted ones are not resent.
    sf.org.rules.clear()
    retry = _push(world, sf, db_path)
    assert {c.record_key: c.last_error for c in retry.plan.changes} == {
        ids[1]: f"FIELD_CUSTOM_VALIDATION_EXCEPTION: {message}",
        ids[2]: "ENTITY_IS_DELETED: entity is deleted",
    }
    assert _account(sf, ids[1])["Payment_Health__c"] == "Healthy"


@pytest.mark.faults
def test_kill_during_apply_then_rerun_no_duplicate_task_no_lost_update(
    world: World, sf: RunningSalesforce, db_path: Path, kill_push: KillPush
) -> None:
    ids = _seed(world, sf, 6, payment_health="Failed")
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    world.con.close()
    # Killed while the org holds the second Task call (two records a call).
    kill_push(sf, "Task", nth=4)
    assert 2 <= len(sf.records["Task"]) < 6
    from churn import warehouse

    con = warehouse.connect(db_path)
    try:
        rerun = push(_settings(sf, db_path), con)
        assert rerun.rejected == []
        by_key = _tasks(sf)
        assert sorted(by_key) == sorted(f"pf:{a}" for a in ids)
        duplicates = sum(len(tasks) - 1 for tasks in by_key.values())
        tally.record(kills=1, runs_healed=1, duplicates=duplicates)
        assert all(len(tasks) == 1 for tasks in by_key.values())  # no duplicate Task
        assert all(_account(sf, a)["Payment_Health__c"] == "Failed" for a in ids)
        state = con.execute("SELECT count(*) FROM push_state").fetchone()
        assert state == (12,)  # six Accounts, six Tasks: nothing lost
        assert push(_settings(sf, db_path), con).counts == {"planned": 0}
    finally:
        con.close()


def test_test_mode_data_never_reaches_a_production_org(world: World, db_path: Path) -> None:
    with start_salesforce_server(is_sandbox=False) as sf:
        ids = _seed(world, sf, 2)
        world.con.execute(
            "INSERT INTO core_customers (customer_id, livemode) VALUES ('cus_t', false)"
        )
        with pytest.raises(ProductionSafetyError, match=r"IsSandbox"):
            _push(world, sf, db_path)
        assert _writes(sf) == 0
        assert all(_account(sf, a)["Payment_Health__c"] is None for a in ids)
        allowed = _push(world, sf, db_path, allow_test_data_in_production=True)
        assert allowed.counts["update_account"] == 2


def test_dry_run_contacts_nothing(world: World, sf: RunningSalesforce, db_path: Path) -> None:
    _seed(world, sf, 3)
    result = push(_settings(sf, db_path), world.con, dry_run=True)
    assert result.counts["planned_update_account"] == 3
    assert sf.request_log == []


def test_above_the_bulk_threshold_bulk_api_2_carries_the_push(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 5, payment_health="At Risk")
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    message = "Accounts in legal review are read-only"
    sf.add_rule(lambda obj, rec: message if rec.get("Id") == ids[3] else None)
    result = _push(world, sf, db_path, bulk_threshold=3)
    assert sf.calls("PATCH", "/composite/sobjects") == 0
    assert sorted(j["operation"] for j in sf.org.jobs.values()) == ["update", "upsert"]
    assert result.counts["update_account"] == 4 and result.counts["create_task"] == 5
    assert [(r.record_key, r.error_code, r.message) for r in result.rejected] == [
        (ids[3], "FIELD_CUSTOM_VALIDATION_EXCEPTION", message)
    ]
    assert _account(sf, ids[0])["Payment_Health__c"] == "At Risk"
    assert sorted(_tasks(sf)) == sorted(f"pf:{a}" for a in ids)
    transports = world.con.execute("SELECT DISTINCT transport FROM push_log").fetchall()
    assert transports == [("bulk2",)]
    sf.org.rules.clear()
    retry = _push(world, sf, db_path, bulk_threshold=3)
    assert [c.record_key for c in retry.plan.changes] == [ids[3]]
    assert retry.counts["update_account"] == 1


def test_cli_ends_non_zero_when_the_budget_runs_out_then_completes(
    world: World, sf: RunningSalesforce, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    ids = _seed(world, sf, 4)
    world.con.close()
    for name, value in sf.settings_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CHURN_PUSH__COLLECTION_SIZE", "1")
    monkeypatch.setenv("SALESFORCE_API_RESERVE", "0")
    sf.set_api_budget(3, used=0)
    out = CliRunner().invoke(app, ["--db", str(db_path), "push"])
    assert out.exit_code == 3, out.output
    assert "daily API budget" in out.output
    sf.set_api_budget(100, used=0)
    out = CliRunner().invoke(app, ["--db", str(db_path), "push"])
    assert out.exit_code == 0, out.output
    assert "update_account 2" in out.output
    assert all(_account(sf, a)["Payment_Health__c"] == "Healthy" for a in ids)


def test_salesforce_unreachable_is_a_push_error_naming_the_request(
    world: World, db_path: Path, tmp_path: Path
) -> None:
    import shutil

    from churn.errors import PushError

    with start_salesforce_server() as gone:
        _seed(world, gone, 1)
        ca = Path(shutil.copy(gone.ca_path, tmp_path / "ca.pem"))
        # No retries: their backoff (tested in test_salesforce_retries) would only add time.
        settings = _settings(gone, db_path).with_overrides(
            salesforce={"ca_bundle": ca, "max_retries": 0}
        )
    # The server is shut down: nothing listens on its port any more.
    with pytest.raises(PushError, match="Organization LIMIT 1: no answer from Salesforce"):
        push(settings, world.con)
    assert world.con.execute("SELECT count(*) FROM push_state").fetchone() == (0,)


@pytest.mark.parametrize("bulk_threshold", [2_000, 1])
def test_a_task_deleted_in_salesforce_is_not_recreated_by_an_update_or_a_close(
    world: World, sf: RunningSalesforce, db_path: Path, bulk_threshold: int
) -> None:
    """A CSM deletes the service's Task (or it goes with its Account): escalating or closing
    the episode later must not upsert a new, partial Task (no WhatId) into the org."""
    ids = _seed(world, sf, 1)
    keys = ("payment_failure:in_1", "payment_failure:in_2", "payment_failure:in_3")
    world.signals([{"account_id": ids[0], "episode_key": k} for k in keys])
    _push(world, sf, db_path, bulk_threshold=bulk_threshold)
    tasks = {t[EXT]: t["Id"] for t in sf.records["Task"].values()}
    sf.delete("Task", tasks[keys[0]])  # will escalate
    sf.delete("Task", tasks[keys[1]])  # will resolve
    later = AS_OF + timedelta(days=2)  # past 24 h: the open ones escalate
    world.health([{"account_id": ids[0]}], as_of=later)
    world.signals(
        [{"account_id": ids[0], "episode_key": k} for k in (keys[0], keys[2])], as_of=later
    )
    result = _push(world, sf, db_path, bulk_threshold=bulk_threshold)
    assert result.rejected == []
    assert result.counts["task_deleted_in_salesforce"] == 2
    live = [t for t in sf.records["Task"].values() if not t["IsDeleted"]]
    assert [t[EXT] for t in live] == [keys[2]]  # nothing recreated
    assert live[0]["Subject"].startswith("Escalation")  # the live one still escalates
    assert len(sf.records["Task"]) == 3
    status = dict(
        world.con.execute(
            "SELECT record_key, status FROM push_state WHERE sobject = 'Task'"
        ).fetchall()
    )
    assert status == {keys[0]: "deleted", keys[1]: "deleted", keys[2]: "open"}
    logged = world.con.execute(
        "SELECT count(*) FROM push_log WHERE error_code = 'ENTITY_IS_DELETED'"
    ).fetchone()
    assert logged == (2,)
    # Not retried: the deletion is the CSM's answer.
    assert _push(world, sf, db_path, bulk_threshold=bulk_threshold).counts == {"planned": 0}


def test_budget_running_out_inside_a_bulk_job_is_a_budget_stop(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 3)

    def spend_the_day(sobject: str, record: Mapping[str, Any]) -> None:
        sf.org.api_max = sf.org.api_used  # the org's last call went on this job
        return None

    sf.add_rule(spend_the_day)
    with pytest.raises(ApiBudgetExhaustedError):
        _push(world, sf, db_path, bulk_threshold=1)
    sf.org.rules.clear()
    sf.set_api_budget(100, used=0)  # a new day
    resumed = _push(world, sf, db_path, bulk_threshold=1)
    assert resumed.counts["update_account"] == 3 and resumed.rejected == []
    assert all(_account(sf, a)["Payment_Health__c"] == "Healthy" for a in ids)


def test_an_account_deleted_with_its_task_leaves_no_orphan_task(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _seed(world, sf, 2)
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    _push(world, sf, db_path)
    sf.delete("Account", ids[0])  # Salesforce deletes its Tasks with it
    world.con.execute("UPDATE core_accounts SET is_deleted = true WHERE account_id = ?", [ids[0]])
    later = AS_OF + timedelta(hours=1)
    world.health([{"account_id": ids[1]}], as_of=later)
    world.signals([{"account_id": ids[1], "episode_key": f"pf:{ids[1]}"}], as_of=later)
    result = _push(world, sf, db_path)
    assert result.counts.get("task_deleted_in_salesforce") == 1 and result.rejected == []
    live = [t[EXT] for t in sf.records["Task"].values() if not t["IsDeleted"]]
    assert live == [f"pf:{ids[1]}"]
