"""Issue 17, a gentle first run: the Salesforce extract reads back every owned Account field,
so the push compares against what Salesforce holds.

README (Push): "a hand edit of an owned field is put back". Before, it held for one field
of nine (``Stripe_Customer_Id__c``, the only owned field the extract read): a hand edit of
any other was never seen, and a first run (or a run after ``push_state`` was lost)
rewrote every Account whatever it already held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from push_world import AS_OF, MART_DDL, RENEWAL

from churn import warehouse
from churn.fields import ACCOUNT_FIELDS, AccountField, Currency, Date, Number, Picklist, Text
from churn.pipelines.push.plan import ACCOUNT
from churn.pipelines.push.sync import push
from churn.pipelines.salesforce.extract import extract_salesforce
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings

pytestmark = pytest.mark.slow

fields = pytest.mark.parametrize("spec", ACCOUNT_FIELDS, ids=[f.name for f in ACCOUNT_FIELDS])


class Clock:
    """The stand-in's clock (SystemModstamp), moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sf(clock: Clock) -> Iterator[RunningSalesforce]:
    with start_salesforce_server(clock=clock, multi_currency=False) as running:
        yield running


def _settings(sf: RunningSalesforce, db: Path) -> Settings:
    return Settings().with_overrides(
        db=db,
        salesforce={
            "instance_url": sf.instance_url,
            "session_id": sf.session_id,
            "ca_bundle": sf.ca_path,
            "api_reserve": 0,
        },
    )


def _health(con: duckdb.DuckDBPyConnection, account: str) -> None:
    """An account_health row with a value for every owned field."""
    con.execute(MART_DDL)
    con.execute(
        "INSERT INTO account_health (account_id, as_of, payment_health, risk_score, known_churn,"
        " reporting_currency, total_mrr_minor, mrr_at_risk_minor, next_renewal_at,"
        " days_since_last_payment, subscription_count, top_reasons, stripe_customer_ids)"
        " VALUES (?, ?, 'At Risk', 42, false, 'USD', 123450, 2500, ?, 5, 2, ?, ?)",
        [account, AS_OF, RENEWAL, json.dumps(["Card expires soon"]), json.dumps(["cus_1"])],
    )
    columns = {r[0] for r in con.execute("DESCRIBE account_health").fetchall()}
    if "expected_mrr_at_risk_minor" in columns:
        con.execute("UPDATE account_health SET expected_mrr_at_risk_minor = 2500")


def _hand_edit(spec: AccountField) -> Any:
    """A value a person might type, different from the pushed one."""
    t = spec.type
    if isinstance(t, Picklist):
        return t.values[-1]
    if isinstance(t, Date):
        return "2020-01-01"
    if isinstance(t, Currency):
        return 1.0
    if isinstance(t, Number):
        return 7
    assert isinstance(t, Text)
    return "edited by hand"


def _first_push(sf: RunningSalesforce, con: duckdb.DuckDBPyConnection, settings: Settings) -> str:
    [account] = sf.seed("Account", [{"Name": "Acme"}])
    extract_salesforce(settings, con, progress=False)
    _health(con, account)
    first = push(settings, con)
    assert first.counts["update_account"] == 1
    return account


@fields
def test_a_hand_edit_of_an_owned_field_is_put_back(
    spec: AccountField, sf: RunningSalesforce, clock: Clock, db_path: Path
) -> None:
    settings = _settings(sf, db_path)
    con = warehouse.connect(db_path)
    try:
        account = _first_push(sf, con, settings)
        pushed = sf.records["Account"][account][spec.api_name]
        edited = _hand_edit(spec)
        assert edited != pushed
        clock.now = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        sf.update("Account", account, {spec.api_name: edited})
        extract_salesforce(settings, con, progress=False)
        again = push(settings, con)
        [change] = [c for c in again.plan.changes if c.sobject == ACCOUNT]
        assert set(change.fields) == {spec.api_name}
        assert sf.records["Account"][account][spec.api_name] == pushed
    finally:
        con.close()


def test_values_salesforce_already_holds_are_not_rewritten(
    sf: RunningSalesforce, db_path: Path
) -> None:
    """A first run against Accounts that already hold the values (here: push_state lost
    after a push) writes nothing."""
    settings = _settings(sf, db_path)
    con = warehouse.connect(db_path)
    try:
        _first_push(sf, con, settings)
        con.execute("DELETE FROM push_state")
        extract_salesforce(settings, con, progress=False)
        writes = sum(1 for m, _ in sf.request_log if m in ("PATCH", "POST"))
        again = push(settings, con)
        assert again.counts.get("update_account", 0) == 0
        assert sum(1 for m, _ in sf.request_log if m in ("PATCH", "POST")) == writes
    finally:
        con.close()
