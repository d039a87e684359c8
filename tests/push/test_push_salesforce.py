"""The push over HTTP against a loopback Salesforce stand-in (issue 5, "Must hold")."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from push_world import AS_OF, World, account_id
from sf_standin import RunningStandin, standin

from churn.errors import ApiBudgetExhaustedError, ProductionSafetyError
from churn.pipelines.push import PushResult, push
from churn.settings import Settings

pytestmark = pytest.mark.slow

OWNER = "005000000000000OWN"
EXT = "Churn_Episode_Key__c"


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[RunningStandin]:
    with standin(tmp_path) as running:
        yield running


def _settings(db: Path, **push_settings: object) -> Settings:
    return Settings().with_overrides(
        db=db,
        push={"fallback_owner_id": "005000000000FALLBK", **push_settings},
        salesforce={"api_reserve": 0},
    )


def _seed(world: World, sf: RunningStandin, n: int, **health: object) -> list[str]:
    ids = [account_id(i) for i in range(n)]
    world.accounts(ids, owner=OWNER)
    world.users({OWNER: True})
    for a in ids:
        sf.org.accounts[a] = {"Id": a, "Name": f"Account {a}", "OwnerId": OWNER}
    world.health([{"account_id": a, **health} for a in ids])
    return ids


def _push(world: World, sf: RunningStandin, db: Path, **push_settings: object) -> PushResult:
    return push(_settings(db, **push_settings), world.con, salesforce=sf.client())


def test_second_run_with_nothing_changed_makes_no_write_call(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 3, payment_health="At Risk", total_mrr=123450)
    world.signals([{"account_id": ids[0], "episode_key": "payment_failure:in_1"}])
    first = _push(world, sf, db_path)
    assert first.counts["update_account"] == 3 and first.counts["create_task"] == 1
    assert sf.org.accounts[ids[0]]["Payment_Health__c"] == "At Risk"
    assert sf.org.accounts[ids[0]]["Total_MRR__c"] == 1234.5
    assert sf.org.accounts[ids[0]]["Next_Renewal_Date__c"] == "2026-12-31"
    assert sf.org.accounts[ids[0]]["Stripe_Customer_Id__c"] == "cus_0000"
    writes, requests = sf.org.writes(), len(sf.org.requests)
    second = _push(world, sf, db_path)
    assert second.counts == {"planned": 0} and second.api_calls == 0
    assert sf.org.writes() == writes and len(sf.org.requests) == requests


@pytest.mark.parametrize("n", [1, 200, 401])
def test_n_changed_accounts_take_ceil_n_over_200_collection_calls(
    world: World, sf: RunningStandin, db_path: Path, n: int
) -> None:
    ids = _seed(world, sf, n)
    result = _push(world, sf, db_path)
    collection_calls = sum(
        1 for m, p in sf.org.requests if m == "PATCH" and p.endswith("/composite/sobjects")
    )
    assert collection_calls == math.ceil(n / 200)
    assert result.counts["update_account"] == n
    assert result.api_calls == collection_calls + 1  # and the Organization query
    assert all(sf.org.accounts[a]["Payment_Health__c"] == "Healthy" for a in ids)
    # Only the changed field goes next time, in one call for every Account.
    world.health([{"account_id": a, "payment_health": "At Risk"} for a in ids])
    again = _push(world, sf, db_path)
    assert again.counts["update_account"] == n
    assert {tuple(c.fields) for c in again.plan.changes} == {("Payment_Health__c",)}
    assert again.api_calls == math.ceil(n / 200) + 1


def test_budget_running_out_stops_the_push_and_the_next_run_completes(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 5)
    sf.org.daily_limit = 4  # the Organization query and three collections of one
    with pytest.raises(ApiBudgetExhaustedError) as stopped:
        _push(world, sf, db_path, collection_size=1)
    assert stopped.value.exit_code != 0
    done = [a for a in ids if "Payment_Health__c" in sf.org.accounts[a]]
    assert len(done) == 3
    assert world.con.execute("SELECT count(*) FROM push_state").fetchone() == (3,)
    status = world.con.execute("SELECT status FROM run_log WHERE command = 'push'").fetchone()
    assert status == ("failed",)
    sf.org.used, sf.org.daily_limit = 0, 100  # a new day
    resumed = _push(world, sf, db_path, collection_size=1)
    assert resumed.counts["update_account"] == 2
    assert all(sf.org.accounts[a]["Payment_Health__c"] == "Healthy" for a in ids)


def test_recovered_payment_closes_its_task(world: World, sf: RunningStandin, db_path: Path) -> None:
    ids = _seed(world, sf, 1)
    world.signals(
        [{"account_id": ids[0], "episode_key": "payment_failure:in_9", "reason": "in_9 failed"}]
    )
    _push(world, sf, db_path)
    [task] = sf.org.tasks.values()
    assert task["Status"] == "Not Started" and task["WhatId"] == ids[0]
    assert task["OwnerId"] == OWNER and task["Subject"].startswith("Payment failed")
    later = AS_OF + timedelta(days=1)
    world.health([{"account_id": ids[0]}], as_of=later)
    world.signals([], as_of=later)  # the latest scoring has no signal at all
    result = _push(world, sf, db_path)
    assert result.counts["close_task"] == 1
    closed = sf.org.tasks_by_key(EXT)["payment_failure:in_9"]
    assert len(closed) == 1 and closed[0]["Status"] == "Completed"
    assert "the invoice was paid" in closed[0]["Description"]
    assert len(sf.org.tasks) == 1
    assert _push(world, sf, db_path).counts == {"planned": 0}


def test_inactive_owner_gets_the_fallback(world: World, sf: RunningStandin, db_path: Path) -> None:
    ids = _seed(world, sf, 2)
    world.con.execute(
        "UPDATE core_accounts SET owner_id = '005000000000000OLD' WHERE account_id = ?", [ids[1]]
    )
    world.users({"005000000000000OLD": False})
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    _push(world, sf, db_path)
    owners = {t[EXT]: t["OwnerId"] for t in sf.org.tasks.values()}
    assert owners == {f"pf:{ids[0]}": OWNER, f"pf:{ids[1]}": "005000000000FALLBK"}


def test_rejected_records_are_reported_and_do_not_stop_the_rest(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 4)
    message = "Payment Health cannot change while the Account is in legal review"
    sf.org.rules.append(lambda obj, rec: message if rec["Id"] == ids[1] else None)
    sf.org.deleted.add(ids[2])
    del sf.org.accounts[ids[2]]
    result = _push(world, sf, db_path)
    rejected = {r.record_key: (r.error_code, r.message) for r in result.rejected}
    assert rejected == {
        ids[1]: ("FIELD_CUSTOM_VALIDATION_EXCEPTION", message),
        ids[2]: ("ENTITY_IS_DELETED", "entity is deleted"),
    }
    assert sf.org.accounts[ids[0]]["Payment_Health__c"] == "Healthy"
    assert sf.org.accounts[ids[3]]["Payment_Health__c"] == "Healthy"
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
    assert sf.org.accounts[ids[1]]["Payment_Health__c"] == "Healthy"


def test_kill_during_apply_then_rerun_no_duplicate_task_no_lost_update(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 6, payment_health="Failed")
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    world.con.close()
    sf.org.write_delay = 0.4
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", str(Path(__file__).parent)])}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "push_driver.py"),
            str(db_path),
            sf.instance_url,
            str(sf.ca_path),
            "2",
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 30
    # Kill once Salesforce has applied some Tasks: the call landed, its commit did not.
    while len(sf.org.tasks) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= len(sf.org.tasks) < 6
    sf.org.write_delay = 0.0
    from churn.pipelines import warehouse

    con = warehouse.connect(db_path)
    try:
        rerun = push(_settings(db_path), con, salesforce=sf.client())
        assert rerun.rejected == []
        by_key = sf.org.tasks_by_key(EXT)
        assert sorted(by_key) == sorted(f"pf:{a}" for a in ids)
        assert all(len(tasks) == 1 for tasks in by_key.values())  # no duplicate Task
        assert all(sf.org.accounts[a]["Payment_Health__c"] == "Failed" for a in ids)
        state = con.execute("SELECT count(*) FROM push_state").fetchone()
        assert state == (12,)  # six Accounts, six Tasks: nothing lost
        assert push(_settings(db_path), con, salesforce=sf.client()).counts == {"planned": 0}
    finally:
        con.close()


def test_test_mode_data_never_reaches_a_production_org(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 2)
    world.con.execute("INSERT INTO core_customers (customer_id, livemode) VALUES ('cus_t', false)")
    sf.org.is_sandbox = False
    with pytest.raises(ProductionSafetyError, match=r"IsSandbox"):
        _push(world, sf, db_path)
    assert sf.org.writes() == 0
    assert all("Payment_Health__c" not in sf.org.accounts[a] for a in ids)
    sf.org.is_sandbox = True
    assert _push(world, sf, db_path).counts["update_account"] == 2


def test_dry_run_contacts_nothing(world: World, sf: RunningStandin, db_path: Path) -> None:
    _seed(world, sf, 3)
    result = push(_settings(db_path), world.con, dry_run=True, salesforce=sf.client())
    assert result.counts["planned_update_account"] == 3
    assert sf.org.requests == []


def test_above_the_bulk_threshold_bulk_api_2_carries_the_push(
    world: World, sf: RunningStandin, db_path: Path
) -> None:
    ids = _seed(world, sf, 5, payment_health="At Risk")
    world.signals([{"account_id": a, "episode_key": f"pf:{a}"} for a in ids])
    message = "Accounts in legal review are read-only"
    sf.org.rules.append(lambda obj, rec: message if rec.get("Id") == ids[3] else None)
    result = _push(world, sf, db_path, bulk_threshold=3)
    assert sf.org.calls("PATCH", "/composite/sobjects") == 0
    assert sorted(j["operation"] for j in sf.org.jobs.values()) == ["update", "upsert"]
    assert result.counts["update_account"] == 4 and result.counts["create_task"] == 5
    assert [(r.record_key, r.error_code, r.message) for r in result.rejected] == [
        (ids[3], "FIELD_CUSTOM_VALIDATION_EXCEPTION", message)
    ]
    assert sf.org.accounts[ids[0]]["Payment_Health__c"] == "At Risk"
    assert sorted(sf.org.tasks_by_key(EXT)) == sorted(f"pf:{a}" for a in ids)
    transports = world.con.execute("SELECT DISTINCT transport FROM push_log").fetchall()
    assert transports == [("bulk2",)]
    sf.org.rules.clear()
    retry = _push(world, sf, db_path, bulk_threshold=3)
    assert [c.record_key for c in retry.plan.changes] == [ids[3]]
    assert retry.counts["update_account"] == 1


def test_cli_ends_non_zero_when_the_budget_runs_out_then_completes(
    world: World, sf: RunningStandin, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn.pipelines import push as push_module
    from churn.pipelines.cli import app

    ids = _seed(world, sf, 4)
    world.con.close()
    # The CLI's client factory, pointed at the stand-in (the factory itself is tested by
    # engineer "salesforce"); everything else is the real command.
    monkeypatch.setattr(push_module, "_default_connect", lambda settings: sf.client)
    monkeypatch.setenv("CHURN_PUSH__COLLECTION_SIZE", "1")
    monkeypatch.setenv("SALESFORCE_API_RESERVE", "0")
    sf.org.daily_limit = 3
    out = CliRunner().invoke(app, ["--db", str(db_path), "push"])
    assert out.exit_code == 3, out.output
    assert "daily API budget" in out.output
    sf.org.used, sf.org.daily_limit = 0, 100
    out = CliRunner().invoke(app, ["--db", str(db_path), "push"])
    assert out.exit_code == 0, out.output
    assert "update_account 2" in out.output
    assert all(sf.org.accounts[a]["Payment_Health__c"] == "Healthy" for a in ids)


def test_salesforce_unreachable_is_a_push_error_naming_the_request(
    world: World, tmp_path: Path, db_path: Path
) -> None:
    from churn.errors import PushError

    with standin(tmp_path) as gone:
        client = gone.client()
        _seed(world, gone, 1)
    # The server is shut down: nothing listens on its port any more.
    with pytest.raises(PushError, match="Organization LIMIT 1: no answer from Salesforce"):
        push(_settings(db_path), world.con, salesforce=client)
    assert world.con.execute("SELECT count(*) FROM push_state").fetchone() == (0,)
