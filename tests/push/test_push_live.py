"""Issue 17, going live: Task Status/Priority mapped in the settings and checked against the
org's picklists before the push writes; a cap on new Tasks in one run, the most urgent
first; the plan's API call estimate said before a first push.

Before: Status ``Not Started``/``Completed`` and Priority ``High``/``Normal``/``Low``
were hard-coded (an org with its own Task Status picklist rejected every Task), every
Task was created at once, and nothing estimated the calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from push_world import World

from churn.errors import ConfigError
from churn.pipelines.push.plan import estimate_calls
from churn.pipelines.push.sync import PushResult, push
from churn.sandbox.salesforce.schema import FieldDef
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings

OWNER = "005000000000000OWN"
EXT = "Churn_Episode_Key__c"
WRITES = ("PATCH", "POST", "PUT", "DELETE")


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server() as running:
        yield running


def _settings(sf: RunningSalesforce, db: Path, **push_settings: object) -> Settings:
    return Settings().with_overrides(
        db=db,
        push=push_settings,
        salesforce={
            "instance_url": sf.instance_url,
            "session_id": sf.session_id,
            "ca_bundle": sf.ca_path,
            "api_reserve": 0,
        },
    )


def _world(world: World, sf: RunningSalesforce, episodes: list[dict[str, Any]]) -> list[str]:
    # A real org refuses a Task whose OwnerId is no User: the owner exists in the org too.
    sf.seed("User", [{"Id": OWNER, "Name": "Owner", "IsActive": True}])
    ids = sf.seed("Account", [{"Name": f"Account {i}", "OwnerId": OWNER} for i in range(3)])
    world.accounts(ids, owner=OWNER)
    world.users({OWNER: True})
    world.health([{"account_id": a} for a in ids])
    world.signals([{"account_id": ids[i % 3], **e} for i, e in enumerate(episodes)])
    return ids


def _tasks(sf: RunningSalesforce) -> dict[str, dict[str, Any]]:
    return {t[EXT]: t for t in sf.records.get("Task", {}).values() if t.get(EXT)}


def test_task_status_and_priority_come_from_the_settings(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    sf.declare_field("Task", FieldDef("Status", "picklist", picklist_values=("Open", "Done")))
    sf.declare_field("Task", FieldDef("Priority", "picklist", picklist_values=("P1", "P2", "P3")))
    _world(world, sf, [{"episode_key": "payment_failure:in_1", "severity": "high"}])
    settings = _settings(
        sf,
        db_path,
        task_status_open="Open",
        task_status_closed="Done",
        task_priorities={"High": "P1", "Normal": "P2", "Low": "P3"},
    )
    push(settings, world.con)
    task = _tasks(sf)["payment_failure:in_1"]
    assert (task["Status"], task["Priority"]) == ("Open", "P1")
    world.signals([])  # the episode resolved: its Task is closed with the mapped value
    push(settings, world.con)
    assert _tasks(sf)["payment_failure:in_1"]["Status"] == "Done"


def test_the_push_refuses_values_the_orgs_picklist_lacks_before_writing(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    sf.declare_field("Task", FieldDef("Status", "picklist", picklist_values=("Open", "Done")))
    _world(world, sf, [{"episode_key": "payment_failure:in_1"}])
    with pytest.raises(ConfigError) as info:
        push(_settings(sf, db_path), world.con)
    message = str(info.value)
    assert "'Not Started' (CHURN_PUSH__TASK_STATUS_OPEN) is missing" in message
    assert "\n" not in message
    assert not [m for m, _ in sf.request_log if m in WRITES]


def test_new_tasks_are_capped_per_run_most_urgent_first(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    episodes = [
        {"episode_key": "e_low", "severity": "low", "score": 0.9},
        {"episode_key": "e_crit", "severity": "critical", "score": 0.5},
        {"episode_key": "e_high_a", "severity": "high", "score": 0.4},
        {"episode_key": "e_high_b", "severity": "high", "score": 0.7},
        {"episode_key": "e_medium", "severity": "medium", "score": 0.99},
    ]
    _world(world, sf, episodes)
    settings = _settings(sf, db_path, max_new_tasks_per_run=2)
    first = push(settings, world.con)
    assert set(_tasks(sf)) == {"e_crit", "e_high_b"}
    assert first.counts["create_task"] == 2 and first.counts["deferred_tasks"] == 3
    second = push(settings, world.con)
    assert set(_tasks(sf)) == {"e_crit", "e_high_b", "e_high_a", "e_medium"}
    assert second.counts["deferred_tasks"] == 1
    push(settings, world.con)
    assert len(_tasks(sf)) == 5
    assert Settings().push.max_new_tasks_per_run == 100  # a sane default cap


def test_a_first_push_says_its_plan_and_call_estimate_before_any_call(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    _world(world, sf, [{"episode_key": f"e{i}"} for i in range(4)])
    seen: list[tuple[str, int]] = []

    def before(result: PushResult) -> None:
        seen.append((result.announcement(), len(sf.request_log)))

    settings = _settings(sf, db_path, collection_size=2)
    result = push(settings, world.con, on_plan=before)
    [(line, requests_then)] = seen
    assert requests_then == 0
    assert line.startswith("first push: 4 create task, 3 update account;")
    # Organization + Task describe + 2 Account collections + 2 Task collections
    assert line.endswith("about 6 API calls")
    assert estimate_calls(result.plan, settings.push) == result.api_calls == 6
