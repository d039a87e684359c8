"""The Salesforce fault suite's world: a stand-in org with its Users and Accounts, a
warehouse scored for them (the push tests' ``World``), and what the org holds, compared
between a faulted run followed by a clean one and a fault-free run."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from churn import warehouse
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "push"))
from push_world import MART_DDL, World

OWNER = "005000000000000OWN"
FALLBACK = "005000000000FALLBK"
EXT = "Churn_Episode_Key__c"
#: What a Task is, for the comparison (not its Id, timestamps or deleted flag).
TASK_FIELDS = ("WhatId", "OwnerId", "Subject", "Status", "Priority", "ActivityDate")


@dataclass
class Org:
    sf: RunningSalesforce
    world: World
    db: Path
    accounts: list[str]

    def settings(self, **push: object) -> Settings:
        return Settings().with_overrides(
            db=self.db,
            push={"fallback_owner_id": FALLBACK, **push},
            salesforce={
                "instance_url": self.sf.instance_url,
                "session_id": self.sf.session_id,
                "ca_bundle": self.sf.ca_path,
                "api_reserve": 0,
            },
        )

    def oauth_settings(self, flow: str, **push: object) -> Settings:
        """Settings that log in (client credentials, or the password flow)."""
        login: dict[str, object] = {
            "instance_url": self.sf.instance_url,
            "client_id": self.sf.client_id,
            "client_secret": self.sf.client_secret,
            "ca_bundle": self.sf.ca_path,
            "api_reserve": 0,
        }
        if flow == "password":
            login |= {
                "username": self.sf.username,
                "password": self.sf.password,
                "security_token": self.sf.security_token,
            }
        return Settings().with_overrides(
            db=self.db, push={"fallback_owner_id": FALLBACK, **push}, salesforce=login
        )


@contextmanager
def org(tmp: Path, name: str, n: int = 6, **health: object) -> Iterator[Org]:
    """A stand-in with ``n`` Accounts (half At Risk, each with a failed-payment episode on
    the odd ones) and a warehouse scored for them."""
    users = [
        {"Id": OWNER, "Name": "Owner", "IsActive": True},
        {"Id": FALLBACK, "Name": "Fallback", "IsActive": True},
    ]
    with start_salesforce_server(seed={"User": users}) as sf:
        db = tmp / f"{name}.duckdb"
        con = warehouse.connect(db)
        try:
            w = World(con)
            con.execute(MART_DDL)
            ids = sf.seed("Account", [{"Name": f"Account {i}", "OwnerId": OWNER} for i in range(n)])
            w.accounts(ids, owner=OWNER)
            w.users({OWNER: True})
            w.health(
                [
                    {
                        "account_id": a,
                        "payment_health": "At Risk" if i % 2 else "Healthy",
                        "risk_score": 70 if i % 2 else 10,
                        "top_reasons": ["Payment failed twice"] if i % 2 else [],
                        **health,
                    }
                    for i, a in enumerate(ids)
                ]
            )
            w.signals(
                [
                    {"account_id": a, "episode_key": f"payment_failure:in_{i}"}
                    for i, a in enumerate(ids)
                    if i % 2
                ]
            )
            yield Org(sf, w, db, ids)
        finally:
            con.close()


def held(sf: RunningSalesforce) -> dict[str, Any]:
    """What the org holds that the push writes: owned Account fields by Account name, live
    Tasks by episode key (a list: more than one is a duplicate)."""
    accounts = {}
    for rec in sf.records.get("Account", {}).values():
        if rec["IsDeleted"]:
            continue
        accounts[rec["Name"]] = {k: v for k, v in rec.items() if k.endswith("__c")}
    tasks: dict[str, list[dict[str, Any]]] = {}
    for rec in sf.records.get("Task", {}).values():
        if rec["IsDeleted"]:
            continue
        what = sf.records["Account"].get(rec["WhatId"], {}).get("Name")
        tasks.setdefault(rec[EXT], []).append(
            {**{k: rec.get(k) for k in TASK_FIELDS}, "WhatId": what}
        )
    return {"Account": accounts, "Task": tasks}


def lost_and_duplicated(expected: Mapping[str, Any], got: Mapping[str, Any]) -> tuple[int, int]:
    """Records that should have landed and did not (or differ), and duplicate Tasks."""
    lost = sum(
        1 for name, fields in expected["Account"].items() if got["Account"].get(name) != fields
    )
    for key, tasks in expected["Task"].items():
        found = got["Task"].get(key, [])
        if not found or found[0] != tasks[0]:
            lost += 1
    duplicates = sum(len(t) - 1 for t in got["Task"].values() if len(t) > 1)
    return lost, duplicates


def run_log(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT status, api_calls FROM run_log WHERE command = 'push' ORDER BY started_at"
    ).fetchall()
