"""The plan from the warehouse, and --dry-run: printed, stored, nothing sent."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from push_world import World, account_id
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.pipelines.push.sync import build_plan, push
from churn.settings import Settings


def _settings(db: Path) -> Settings:
    return Settings().with_overrides(db=db)


def test_plan_reads_the_latest_marts_and_skips_unlinked(world: World, db_path: Path) -> None:
    a, b = account_id(1), account_id(2)
    world.accounts([a, b])
    world.users({"005000000000000OWN": True})
    world.health(
        [
            {"account_id": a, "payment_health": "Failed", "total_mrr": 123450},
            {"account_id": b},
            {"account_id": "cus_unlinked"},
        ]
    )
    world.signals([{"account_id": a, "episode_key": "payment_failure:in_1"}])
    plan = build_plan(_settings(db_path), world.con)
    assert plan.counts() == {"update_account": 2, "create_task": 1}
    first = plan.changes[0]
    assert first.record_key == a
    assert str(first.fields["Total_MRR__c"]) == "1234.50"
    assert first.fields["Payment_Health__c"] == "Failed"


def test_a_guessed_link_is_never_written_back_as_the_stripe_customer_id(
    world: World, db_path: Path
) -> None:
    """Links by metadata or by the Account's own field are written; links guessed by email
    domain or name are not, else the next run would read them back as authoritative."""
    a, b = account_id(1), account_id(2)
    world.accounts([a, b])
    world.users({"005000000000000OWN": True})
    world.health(
        [
            {"account_id": a, "stripe_customer_ids": ["cus_meta", "cus_guess"]},
            {"account_id": b, "stripe_customer_ids": ["cus_only_guess"]},
        ]
    )
    world.con.executemany(
        "INSERT INTO core_account_links (customer_id, account_id, method, linked_at)"
        " VALUES (?, ?, ?, now())",
        [("cus_meta", a, "metadata"), ("cus_guess", a, "email_domain"),
         ("cus_only_guess", b, "name")],
    )  # fmt: skip
    fields = {c.record_key: c.fields for c in build_plan(_settings(db_path), world.con).changes}
    assert fields[a]["Stripe_Customer_Id__c"] == "cus_meta"
    assert "Stripe_Customer_Id__c" not in fields[b]
    assert fields[b]["Payment_Health__c"] == "Healthy"


def test_push_without_changes_needs_no_salesforce(world: World, db_path: Path) -> None:
    def never() -> None:
        raise AssertionError("no change: Salesforce must not be contacted")

    result = push(_settings(db_path), world.con, connect=never)  # type: ignore[arg-type]
    assert result.counts["planned"] == 0 and result.api_calls == 0


@pytest.mark.parametrize("invoke", ["library", "cli"])
def test_dry_run_prints_and_stores_the_plan_and_sends_nothing(
    world: World, db_path: Path, invoke: str
) -> None:
    a = account_id(7)
    world.accounts([a])
    world.health([{"account_id": a, "payment_health": "At Risk"}])
    if invoke == "library":

        def never() -> None:
            raise AssertionError("a dry run must not contact Salesforce")

        result = push(_settings(db_path), world.con, dry_run=True, connect=never)  # type: ignore[arg-type]
        assert result.counts["planned_update_account"] == 1
        con = world.con
    else:
        world.con.close()
        out = CliRunner().invoke(app, ["--db", str(db_path), "push", "--dry-run"])
        assert out.exit_code == 0, out.output
        assert "At Risk" in out.output and "update_account" in out.output
        con = warehouse.connect(db_path)
    rows = con.execute("SELECT record_key, action, dry_run, fields FROM push_plan").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(a, "update_account", True)]
    assert json.loads(rows[0][3])["Payment_Health__c"] == "At Risk"
    assert con.execute("SELECT count(*) FROM push_state").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM push_log").fetchone() == (0,)
    if invoke == "cli":
        con.close()


def test_test_mode_data_is_detected(world: World, db_path: Path) -> None:
    from churn.pipelines.push.sync import has_test_data

    settings = _settings(db_path)
    assert not has_test_data(settings, world.con)
    world.con.execute("INSERT INTO core_customers (customer_id, livemode) VALUES ('cus_t', false)")
    assert has_test_data(settings, world.con)
    assert isinstance(world.con, duckdb.DuckDBPyConnection)
