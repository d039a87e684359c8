"""Transient Salesforce failures (502/503/504) are retried with backoff, within a bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from simple_salesforce.exceptions import SalesforceError

from churn.pipelines.salesforce.client import BudgetedSession, make_salesforce
from churn.pipelines.salesforce.extract import extract_salesforce
from churn.sandbox.salesforce.server import start_salesforce_server
from churn.settings import load_settings
from churn.warehouse import connect


def test_an_outage_is_retried_with_growing_waits() -> None:
    with start_salesforce_server() as running:
        running.seed("User", [{"Name": "Ann", "IsActive": True}])
        settings = load_settings(env=running.settings_env())
        waits: list[float] = []
        session = BudgetedSession(0, max_retries=3, sleep=waits.append)
        sf = make_salesforce(settings.salesforce, session)
        running.fail_next(2, status=503)
        assert sf.query("SELECT Id FROM User")["totalSize"] == 1
        assert waits == [0.5, 1.0] and session.retries == 2
        # The failed answers were calls too, and the budget header was read from them.
        assert session.calls == 3


def test_an_outage_longer_than_the_bound_fails_with_salesforces_answer() -> None:
    with start_salesforce_server() as running:
        settings = load_settings(env=running.settings_env())
        session = BudgetedSession(0, max_retries=2, sleep=lambda _s: None)
        sf = make_salesforce(settings.salesforce, session)
        running.fail_next(3, status=502)
        with pytest.raises(SalesforceError, match="SERVER_UNAVAILABLE"):
            sf.query("SELECT Id FROM User")
        assert session.retries == 2
        # The outage over, the next call goes through.
        assert sf.query("SELECT Id FROM User")["totalSize"] == 0


def test_extract_rides_out_an_outage(tmp_path: Path) -> None:
    with start_salesforce_server() as running:
        running.seed("Contact", [{"LastName": f"C{i}"} for i in range(5)])
        settings = load_settings(env={**running.settings_env(), "CHURN_DB": str(tmp_path / "w")})
        session = BudgetedSession(0, sleep=lambda _s: None)
        con = connect(settings.db)
        running.fail_next(3, status=503)
        extract_salesforce(
            settings, con, progress=False, sf=make_salesforce(settings.salesforce, session)
        )
        assert con.execute("SELECT count(*) FROM core_contacts").fetchall() == [(5,)]
        assert session.retries == 3
        con.close()
