"""Serving a world loads every one of its Salesforce records under the world's own Id."""

from __future__ import annotations

from pathlib import Path

import requests

from churn.sandbox.demo import serve_world
from churn.sandbox.world import World


def test_every_record_of_the_world_is_served_under_its_own_id(
    small_world: tuple[World, Path],
) -> None:
    """The stand-in seeds a record under a fresh Id and then moves it to the world's. With
    the world's Ids written as a real org writes them (as the fresh ones are), a world Id
    could be the fresh Id of a record not moved yet, which was then overwritten: the demo's
    org held 1,653 of the world's 1,666 Accounts. And a record created later through the
    API must not take a world Id."""
    world, folder = small_world
    with serve_world(folder) as box:
        sf = box.salesforce
        assert sf is not None
        for sobject in ("Account", "Contact", "Opportunity"):
            want = {r["Id"]: r.get("Name") or r.get("LastName") for r in world.salesforce[sobject]}
            served = sf.records[sobject]
            assert set(want) <= set(served), sobject
            assert {i: served[i].get("Name") or served[i].get("LastName") for i in want} == want
        version = sf.settings_env()["SALESFORCE_API_VERSION"]
        created = requests.post(
            f"{sf.instance_url}/services/data/v{version}/sobjects/Account",
            json={"Name": "Created through the API"},
            headers={"Authorization": f"Bearer {sf.session_id}"},
            verify=str(sf.ca_path),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        new_id = created.json()["id"]
        assert new_id not in {r["Id"] for r in world.salesforce["Account"]}
        assert len(sf.records["Account"]) == len(world.salesforce["Account"]) + 1
