"""Issue 17: multi-currency orgs. A Currency field holds an amount in its record's
currency: Salesforce, "Multiple currencies": "Currency fields on a record are displayed in
the record's currency" (CurrencyIsoCode). Before, ``Total_MRR__c`` got the reporting-currency
amount on every Account, so an EUR Account showed dollars labelled euros, and the
reporting-currency figure had no field of its own.
"""

from __future__ import annotations

from decimal import Decimal

from push_world import World, account_id

from churn.pipelines.push.plan import ACCOUNT
from churn.pipelines.push.sync import build_plan
from churn.settings import Settings


def _world(world: World) -> None:
    eur, usd, jpy_no_rate = account_id(1), account_id(2), account_id(3)
    world.accounts([eur, usd, jpy_no_rate])
    for account, code in ((eur, "EUR"), (usd, "USD"), (jpy_no_rate, "JPY")):
        world.con.execute(
            "UPDATE core_accounts SET currency_iso_code = ? WHERE account_id = ?", [code, account]
        )
    world.con.execute(
        "INSERT INTO core_currency_rates (iso_code, conversion_rate, is_corporate, is_active)"
        " VALUES ('USD', 1, true, true), ('EUR', 0.9, false, true)"
    )
    world.health([{"account_id": a, "total_mrr": 123450} for a in (eur, usd, jpy_no_rate)])
    world.con.execute("UPDATE account_health SET expected_mrr_at_risk_minor = 10000")


def _fields(world: World) -> dict[str, dict[str, object]]:
    plan = build_plan(Settings(), world.con)
    return {c.record_key: dict(c.fields) for c in plan.changes if c.sobject == ACCOUNT}


def test_currency_fields_are_in_each_accounts_own_currency(world: World) -> None:
    _world(world)
    fields = _fields(world)
    eur, usd, jpy = (fields[account_id(i)] for i in (1, 2, 3))
    # 1,234.50 USD at 0.9 EUR per USD; 100.00 USD at risk.
    assert eur["Total_MRR__c"] == Decimal("1111.05")
    assert eur["MRR_At_Risk__c"] == Decimal("90.00")
    assert usd["Total_MRR__c"] == Decimal("1234.50")
    assert usd["MRR_At_Risk__c"] == Decimal("100.00")
    # No rate for the Account's currency: unknown, so left alone (never dollars as yen).
    assert "Total_MRR__c" not in jpy and "MRR_At_Risk__c" not in jpy


def test_the_reporting_currency_figure_has_its_own_field(world: World) -> None:
    _world(world)
    fields = _fields(world)
    for i in (1, 2, 3):
        assert fields[account_id(i)]["Total_MRR_Corporate__c"] == Decimal("1234.50")


def test_a_single_currency_org_is_unchanged(world: World) -> None:
    world.accounts([account_id(1)])
    world.health([{"account_id": account_id(1), "total_mrr": 123450}])
    fields = _fields(world)[account_id(1)]
    assert fields["Total_MRR__c"] == Decimal("1234.50")
    assert fields["Total_MRR_Corporate__c"] == Decimal("1234.50")
