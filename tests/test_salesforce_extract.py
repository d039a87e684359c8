from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from churn.errors import ApiBudgetExhaustedError
from churn.pipelines.salesforce.extract import (
    build_soql,
    extract_salesforce,
    page_frame,
    parse_sf_datetime,
    streams,
)
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings, load_settings
from churn.warehouse import connect


def _settings(running: RunningSalesforce, db: Path, **sf: object) -> Settings:
    s = load_settings(env={**running.settings_env(), "CHURN_DB": str(db)})
    return s.with_overrides(salesforce=sf) if sf else s


#: Seconds a wait may take before the test fails: a guard against a hang, not a speed check.
HANG = 600.0


def _distinct_stamps() -> Callable[[], datetime]:
    """The org's clock, one millisecond on at least at every reading: a record changed
    after a run has a later SystemModstamp than what that run read, without sleeping for
    the wall clock to move (it need not, on a fast machine, within one millisecond)."""
    last = [datetime(2000, 1, 1)]  # noqa: DTZ001 (naive UTC, as the org's clock)
    lock = threading.Lock()

    def clock() -> datetime:
        with lock:
            now = datetime.now(UTC).replace(tzinfo=None)
            last[0] = max(now, last[0] + timedelta(milliseconds=1))
            return last[0]

    return clock


def _hold_at(
    nth: int, contains: str, reached: threading.Event, release: threading.Event
) -> Callable[[str, str], None]:
    """A stand-in request hook holding the ``nth`` request whose path has ``contains``."""
    seen = [0]

    def hook(method: str, path: str) -> None:
        if contains in path:
            seen[0] += 1
            if seen[0] == nth:
                reached.set()
                release.wait(HANG)

    return hook


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return con.execute(sql).fetchall()


def test_build_soql_formats_the_cursor_and_task_filter() -> None:
    s = Settings()
    task = next(x for x in streams(s, multi_currency=False) if x.name == "task")
    q = build_soql(task, datetime(2024, 1, 2, 3, 4, 5, 678000))  # noqa: DTZ001
    assert "Churn_Episode_Key__c != null AND SystemModstamp >= 2024-01-02T03:04:05+00:00" in q
    assert q.endswith("ORDER BY SystemModstamp, Id")
    bad = s.with_overrides(salesforce={"account_stripe_customer_field": "X__c FROM User--"})
    with pytest.raises(Exception, match="SALESFORCE_ACCOUNT_STRIPE_CUSTOMER_FIELD"):
        streams(bad, multi_currency=True)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        # the REST API's form ("2024-01-01T00:00:00.000+0000") and Bulk API 2.0's CSV ("Z")
        ("2024-01-02T03:04:05.678+0000", datetime(2024, 1, 2, 3, 4, 5, 678000)),  # noqa: DTZ001
        ("2024-01-02T03:04:05.678Z", datetime(2024, 1, 2, 3, 4, 5, 678000)),  # noqa: DTZ001
        # an offset other than UTC is moved to UTC, across the day
        ("2024-01-01T23:30:00.000-0800", datetime(2024, 1, 2, 7, 30)),  # noqa: DTZ001
        ("2024-01-02T05:00:00.000+05:30", datetime(2024, 1, 1, 23, 30)),  # noqa: DTZ001
    ],
)
def test_salesforce_datetimes_are_read_as_naive_utc(text: str, utc: datetime) -> None:
    assert parse_sf_datetime(text) == utc


@pytest.mark.parametrize("text", ["2024-01-02T03:04:05.678", "2024-01-02", "yesterday"])
def test_a_datetime_without_its_offset_is_refused(text: str) -> None:
    """Read as the machine's local time, it would be off by the machine's zone."""
    with pytest.raises(ValueError):
        parse_sf_datetime(text)


def test_page_frame_has_one_row_per_record_with_its_own_stamp() -> None:
    """Records share stamps on a page (a data load, the push): each keeps its own."""
    fetched = datetime(2024, 2, 1)  # noqa: DTZ001
    records = [
        {"attributes": {"type": "Account"}, "Id": "001A", "Name": "Ä", "IsDeleted": False,
         "SystemModstamp": "2024-01-02T03:04:05.000+0000"},
        {"attributes": {"type": "Account"}, "Id": "001B", "Name": None, "IsDeleted": True,
         "SystemModstamp": "2024-01-02T03:04:06.000+0000"},
        {"attributes": {"type": "Account"}, "Id": "001C", "Name": "C",
         "SystemModstamp": "2024-01-02T03:04:05.000+0000"},
    ]  # fmt: skip
    frame = page_frame(records, fetched)
    assert frame.rows() == [
        ("001A", '{"Id": "001A", "Name": "\\u00c4", "IsDeleted": false, "SystemModstamp":'
         ' "2024-01-02T03:04:05.000+0000"}', datetime(2024, 1, 2, 3, 4, 5), False, fetched),  # noqa: DTZ001
        ("001B", '{"Id": "001B", "Name": null, "IsDeleted": true, "SystemModstamp":'
         ' "2024-01-02T03:04:06.000+0000"}', datetime(2024, 1, 2, 3, 4, 6), True, fetched),  # noqa: DTZ001
        ("001C", '{"Id": "001C", "Name": "C", "SystemModstamp": "2024-01-02T03:04:05.000+0000"}',
         datetime(2024, 1, 2, 3, 4, 5), False, fetched),  # noqa: DTZ001
    ]  # fmt: skip
    assert page_frame([], fetched).columns == [
        "id",
        "payload",
        "system_modstamp",
        "is_deleted",
        "fetched_at",
    ]


@pytest.mark.slow
def test_insert_update_delete_and_typed_core(tmp_path: Path) -> None:
    with start_salesforce_server(clock=_distinct_stamps()) as running:
        (user,) = running.seed(
            "User", [{"Name": "Ann Owner", "Email": "ann@x.io", "IsActive": True}]
        )
        acme, globex = running.seed(
            "Account",
            [
                {
                    "Name": "Acme",
                    "Website": "https://www.Acme.io/about",
                    "OwnerId": user,
                    "Stripe_Customer_Id__c": "cus_1",
                    "CurrencyIsoCode": "EUR",
                },
                {"Name": "Globex", "Website": "globex.com"},
            ],
        )
        running.seed(
            "Opportunity",
            [
                {
                    "AccountId": acme,
                    "Name": "Renewal",
                    "StageName": "Prospecting",
                    "Amount": 1234.5,
                    "CloseDate": "2025-03-01",
                    "IsClosed": False,
                    "IsWon": False,
                }
            ],
        )
        running.seed("Contact", [{"AccountId": acme, "LastName": "Doe", "Email": "d@acme.io"}])
        running.seed(
            "Task", [{"Subject": "ours", "Churn_Episode_Key__c": "ep1"}, {"Subject": "not ours"}]
        )
        running.seed(
            "CurrencyType",
            [
                {
                    "IsoCode": "EUR",
                    "ConversionRate": 0.9,
                    "DecimalPlaces": 2,
                    "IsActive": True,
                    "IsCorporate": False,
                }
            ],
        )
        settings = _settings(running, tmp_path / "w.duckdb")
        con = connect(settings.db)
        first = extract_salesforce(settings, con, progress=False)
        assert first.multi_currency and first.counts["account"] == 2 and first.counts["task"] == 1
        assert first.api_calls == running.org.api_used
        # the daily budget left, as the last answer's Sforce-Limit-Info said (churn status)
        assert first.counts["api_remaining"] == running.org.api_max - running.org.api_used
        assert _rows(
            con,
            "SELECT name, website_domain, owner_id, stripe_customer_id, currency_iso_code FROM core_accounts ORDER BY name",
        ) == [("Acme", "acme.io", user, "cus_1", "EUR"), ("Globex", "globex.com", None, None, None)]
        opp = _rows(con, "SELECT amount, close_date, is_closed FROM core_opportunities")[0]
        assert str(opp[0]) == "1234.50" and str(opp[1]) == "2025-03-01" and opp[2] is False
        assert _rows(
            con,
            "SELECT iso_code, CAST(conversion_rate AS VARCHAR), is_corporate FROM core_currency_rates ORDER BY 1",
        ) == [("EUR", "0.900000000", False), ("USD", "1.000000000", True)]
        assert _rows(con, "SELECT json_extract_string(payload, '$.Subject') FROM raw_sf_task") == [
            ("ours",)
        ]
        running.update("Account", acme, {"Name": "Acme Corp"})
        running.delete("Account", globex)
        extract_salesforce(settings, con, progress=False)
        assert _rows(con, "SELECT name, is_deleted FROM core_accounts ORDER BY name") == [
            ("Acme Corp", False),
            ("Globex", True),
        ]
        assert _rows(con, "SELECT count(*) FROM raw_sf_account") == [(2,)]


@pytest.mark.slow
def test_same_systemmodstamp_across_page_boundary_both_land(tmp_path: Path) -> None:
    stamp = [datetime(2024, 5, 1, 12, 0, 0)]  # noqa: DTZ001
    with start_salesforce_server(batch_size=200, clock=lambda: stamp[0]) as running:
        running.seed("Contact", [{"LastName": f"C{i}"} for i in range(200)])
        settings = _settings(running, tmp_path / "w.duckdb", lookback_seconds=0)
        con = connect(settings.db)
        extract_salesforce(settings, con, progress=False)
        # Two more rows sharing the cursor's exact stamp, ordered after the first page.
        running.seed("Contact", [{"LastName": "late-1"}, {"LastName": "late-2"}])
        extract_salesforce(settings, con, progress=False)
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(202,)]


@pytest.mark.slow
def test_budget_exhausted_mid_extract_then_next_run_finishes(tmp_path: Path) -> None:
    with start_salesforce_server(batch_size=200, api_budget=10_000) as running:
        running.seed("Contact", [{"LastName": f"C{i:04d}"} for i in range(1000)])
        settings = _settings(running, tmp_path / "w.duckdb", api_reserve=9_994)
        con = connect(settings.db)
        # 6 calls allowed: describe Account, describe User (the first run asks which
        # fields User has), a page each for User, Account, Opportunity, then Contact's
        # first page.
        with pytest.raises(ApiBudgetExhaustedError, match="SALESFORCE_API_RESERVE"):
            extract_salesforce(settings, con, progress=False)
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(200,)]
        running.set_api_budget(20_000, used=0)  # a new day: plenty above the reserve
        extract_salesforce(settings, con, progress=False)
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(1000,)]


@pytest.mark.slow
def test_kill_at_random_points_then_rerun_equals_clean_run(tmp_path: Path) -> None:
    def snapshot(db: Path) -> list[tuple[object, ...]]:
        # Everything but fetch/update times: core and raw rows, and the cursors (not the
        # time of the last deletion reconcile, a clock reading like fetched_at).
        with duckdb.connect(str(db)) as con:
            return con.execute(
                "SELECT 'core', contact_id, name, CAST(system_modstamp AS VARCHAR), is_deleted"
                " FROM core_contacts"
                " UNION ALL SELECT 'raw', id, CAST(payload AS VARCHAR),"
                " CAST(system_modstamp AS VARCHAR), is_deleted FROM raw_sf_contact"
                " UNION ALL SELECT 'cursor', stream, NULL, CAST(cursor_ts AS VARCHAR), NULL"
                " FROM sync_state WHERE stream <> 'salesforce.reconcile' ORDER BY 1, 2"
            ).fetchall()

    with start_salesforce_server(batch_size=200) as running:
        running.seed("Contact", [{"LastName": f"C{i:05d}"} for i in range(3000)])
        clean = tmp_path / "clean.duckdb"
        env = {**os.environ, **running.settings_env(), "PYTHONPATH": "src"}
        cmd = [sys.executable, "-m", "churn", "extract", "salesforce"]
        subprocess.run(cmd, env={**env, "CHURN_DB": str(clean)}, check=True, capture_output=True)
        killed = tmp_path / "killed.duckdb"
        partial = []
        for nth in sorted(random.Random(7).sample(range(6, 18), 2)):
            # SIGKILL once the run has sent its nth query call: mid-extract, not during
            # imports. The org holds that call until the process is dead, so the kill lands
            # there however loaded the machine is (no polling, no deadline).
            reached, release = threading.Event(), threading.Event()
            running.org.on_request = _hold_at(nth, "/query", reached, release)
            proc = subprocess.Popen(
                cmd,
                env={**env, "CHURN_DB": str(killed)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert reached.wait(HANG), f"the extract never sent query call {nth}"
                proc.send_signal(signal.SIGKILL)
                proc.wait(HANG)
            finally:
                running.org.on_request = None
                release.set()
            partial.append(sum(1 for row in snapshot(killed) if row[0] == "core"))
        assert any(0 < n < 3000 for n in partial), partial
        subprocess.run(cmd, env={**env, "CHURN_DB": str(killed)}, check=True, capture_output=True)
        assert snapshot(killed) == snapshot(clean)
        assert sum(1 for row in snapshot(clean) if row[0] == "core") == 3000


@pytest.mark.slow
def test_bulk_query_above_threshold_lands_everything(tmp_path: Path) -> None:
    with start_salesforce_server() as running:
        running.seed(
            "Contact", [{"LastName": f"C{i:04d}", "Email": f"c{i}@x.io"} for i in range(450)]
        )
        (gone,) = running.seed("Contact", [{"LastName": "Gone"}])
        running.delete("Contact", gone)
        settings = _settings(running, tmp_path / "w.duckdb", bulk_threshold=100, bulk_page_size=200)
        con = connect(settings.db)
        result = extract_salesforce(settings, con, progress=False)
        assert result.counts["contact"] == 451
        assert running.calls("POST", "/jobs/query") == 1  # only Contact is above the threshold
        assert running.calls("GET", "/results") == 3  # 451 rows, 200 per results page
        assert _rows(con, "SELECT count(*), count(*) FILTER (is_deleted) FROM core_contacts") == [
            (451, 1)
        ]
        assert _rows(con, "SELECT email FROM core_contacts WHERE name = 'C0007'") == [("c7@x.io",)]


@pytest.mark.slow
def test_cli_exits_3_when_the_budget_runs_out(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    with start_salesforce_server(api_budget=505) as running:  # default reserve 500
        env = {**running.settings_env(), "CHURN_DB": str(tmp_path / "w.duckdb")}
        result = CliRunner().invoke(app, ["extract", "salesforce"], env=env)
        assert result.exit_code == 3, result.output
        assert "SALESFORCE_API_RESERVE" in result.output
        assert running.session_id not in result.output


@pytest.mark.slow
def test_same_stamp_split_by_a_budget_stop_lands_on_resume(tmp_path: Path) -> None:
    stamp = datetime(2024, 5, 1, 12, 0, 0)  # noqa: DTZ001
    with start_salesforce_server(batch_size=200, clock=lambda: stamp, api_budget=10_000) as running:
        running.seed("Contact", [{"LastName": f"C{i:03d}"} for i in range(201)])
        # 6 calls: two describes (Account; User, on the first run), User, Account,
        # Opportunity, Contact's first page.
        settings = _settings(running, tmp_path / "w.duckdb", lookback_seconds=0, api_reserve=9_994)
        con = connect(settings.db)
        with pytest.raises(ApiBudgetExhaustedError):
            extract_salesforce(settings, con, progress=False)
        # Stopped after page 1 (200 rows): the cursor is that page's last stamp, which the
        # 201st row shares.
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(200,)]
        assert _rows(
            con, "SELECT cursor_ts FROM sync_state WHERE stream = 'salesforce.contact'"
        ) == [(stamp,)]
        running.set_api_budget(20_000, used=0)
        extract_salesforce(settings, con, progress=False)
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(201,)]


@pytest.mark.slow
def test_an_incremental_run_costs_one_call_per_stream(tmp_path: Path) -> None:
    """No COUNT() beside each stream's query: the first page's totalSize tells the size."""
    with start_salesforce_server() as running:
        running.seed("Contact", [{"LastName": f"C{i}"} for i in range(3)])
        settings = _settings(running, tmp_path / "w.duckdb")
        con = connect(settings.db)
        first = extract_salesforce(settings, con, progress=False)
        running.seed("Contact", [{"LastName": "new"}])
        again = extract_salesforce(settings, con, progress=False)
        streams = len([k for k in again.counts if k != "api_remaining"])  # a gauge
        assert again.api_calls == 1 + streams  # describe + one page each
        # The first run is also the first deletion reconcile: one Id listing per stream
        # whose records can be deleted (all but CurrencyType), and the describes that ask
        # whether the org has DatedConversionRate and which fields User has (again only
        # with each reconcile).
        listed = [k for k in first.counts if k.startswith("reconcile_deleted_")]
        assert first.api_calls == 3 + streams + len(listed) and len(listed) == streams - 1
        assert again.counts["contact"] >= 1
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(4,)]


@pytest.mark.slow
def test_records_purged_from_the_recycle_bin_are_found_by_the_reconcile(tmp_path: Path) -> None:
    """queryAll shows a deletion only while the record is in the recycle bin; a purged one
    is found on the reconcile's cadence by listing live Ids, and marked deleted."""
    with start_salesforce_server() as running:
        kept, purged = running.seed("Account", [{"Name": "Kept"}, {"Name": "Purged"}])
        settings = _settings(running, tmp_path / "w.duckdb", reconcile_every_hours=24)
        con = connect(settings.db)
        first = extract_salesforce(settings, con, progress=False)
        assert first.counts["reconcile_deleted_account"] == 0  # never reconciled: due
        with running.org.lock:  # purged: gone without a trace, not even IsDeleted
            del running.org.records["Account"][purged]
        second = extract_salesforce(settings, con, progress=False)
        assert "reconcile_deleted_account" not in second.counts  # not due for a day
        assert _rows(con, "SELECT count(*) FROM core_accounts WHERE is_deleted") == [(0,)]
        third = extract_salesforce(settings, con, progress=False, reconcile=True)
        assert third.counts["reconcile_deleted_account"] == 1
        assert _rows(con, "SELECT account_id, is_deleted FROM core_accounts ORDER BY name") == [
            (kept, False),
            (purged, True),
        ]
        raw = con.execute("SELECT is_deleted FROM raw_sf_account WHERE id = ?", [purged])
        assert raw.fetchall() == [(True,)]
        con.close()


@pytest.mark.slow
def test_a_burst_of_records_is_not_reread_by_every_later_run(tmp_path: Path) -> None:
    """A data load (or our own push) stamps many records within the lookback window of
    the cursor. The lookback must not re-read them on every run for ever: a later run,
    started well after the burst, begins at the watermark the org's clock gave."""
    clock = [datetime(2026, 3, 1, 9, 0, 0)]  # noqa: DTZ001
    with start_salesforce_server(batch_size=200, clock=lambda: clock[0]) as running:
        running.seed("Contact", [{"LastName": f"C{i}"} for i in range(50)])
        settings = _settings(running, tmp_path / "w.duckdb", lookback_seconds=300)
        con = connect(settings.db)
        clock[0] += timedelta(seconds=30)  # the first read: right after the load
        assert extract_salesforce(settings, con, progress=False).counts["contact"] == 50
        # Still within the lookback of the burst: it is read again (late commits).
        clock[0] += timedelta(seconds=60)
        assert extract_salesforce(settings, con, progress=False).counts["contact"] == 50
        # The next scheduled run starts from the last read's watermark (still before the
        # burst) and is the last to re-read it: its own start is well past the burst.
        clock[0] += timedelta(minutes=15)
        assert extract_salesforce(settings, con, progress=False).counts["contact"] == 50
        for _ in range(3):  # from then on, nothing: not re-read for ever
            clock[0] += timedelta(minutes=15)
            assert extract_salesforce(settings, con, progress=False).counts["contact"] == 0
        running.seed("Contact", [{"LastName": "new"}])
        assert extract_salesforce(settings, con, progress=False).counts["contact"] == 1
        assert _rows(con, "SELECT count(*) FROM core_contacts") == [(51,)]
        con.close()


@pytest.mark.slow
def test_dated_conversion_rates_where_the_org_has_them(tmp_path: Path) -> None:
    """Advanced currency management: DatedConversionRate is read (IsoCode, ConversionRate,
    StartDate, NextStartDate); CurrencyType rates are kept as seen, a version per change.
    Without it (describe answers NOT_FOUND, as the object "is not available ... if the
    organization doesn't have advanced currency management enabled") nothing else changes."""
    with start_salesforce_server(advanced_currency=True, clock=_distinct_stamps()) as running:
        running.seed("DatedConversionRate", [
            {"IsoCode": "EUR", "ConversionRate": 0.9, "StartDate": "2026-01-01"},
            {"IsoCode": "EUR", "ConversionRate": 0.95, "StartDate": "2026-02-01"},
        ])  # fmt: skip
        (eur,) = running.seed("CurrencyType", [
            {"IsoCode": "EUR", "ConversionRate": 0.9, "DecimalPlaces": 2, "IsActive": True,
             "IsCorporate": False},
        ])  # fmt: skip
        settings = _settings(running, tmp_path / "w.duckdb")
        con = connect(settings.db)
        first = extract_salesforce(settings, con, progress=False)
        assert first.counts["datedconversionrate"] == 2
        assert _rows(
            con,
            "SELECT iso_code, CAST(conversion_rate AS VARCHAR), CAST(start_date AS VARCHAR),"
            " CAST(next_start_date AS VARCHAR) FROM core_dated_conversion_rates ORDER BY 3",
        ) == [
            ("EUR", "0.900000000", "2026-01-01", "2026-02-01"),
            ("EUR", "0.950000000", "2026-02-01", None),
        ]
        running.update("CurrencyType", eur, {"ConversionRate": 0.97})
        extract_salesforce(settings, con, progress=False)
        assert _rows(
            con,
            "SELECT iso_code, CAST(conversion_rate AS VARCHAR) FROM core_currency_rate_versions"
            " ORDER BY iso_code, seen_from",
        ) == [("EUR", "0.900000000"), ("EUR", "0.970000000"), ("USD", "1.000000000")]
    with start_salesforce_server() as plain:
        settings = _settings(plain, tmp_path / "p.duckdb")
        con = connect(settings.db)
        result = extract_salesforce(settings, con, progress=False)
        assert "datedconversionrate" not in result.counts and result.multi_currency


def test_account_contact_roles_are_read_only_when_a_billing_role_is_configured(
    tmp_path: Path,
) -> None:
    """AccountContactRole ("Represents the role that a Contact plays on an Account":
    AccountId, ContactId, Role, a picklist, IsPrimary; Salesforce Object Reference) lands
    in core_account_contact_roles when push.billing_contact_roles names a role (the push's
    fallback for the billing contact); without one, no call reads it."""
    with start_salesforce_server(clock=_distinct_stamps()) as running:
        (acme,) = running.seed("Account", [{"Name": "Acme"}])
        (fin,) = running.seed("Contact", [{"AccountId": acme, "LastName": "Fin"}])
        running.seed(
            "AccountContactRole",
            [{"AccountId": acme, "ContactId": fin, "Role": "Billing Contact", "IsPrimary": True}],
        )
        plain = _settings(running, tmp_path / "plain.duckdb")
        con = connect(plain.db)
        without = extract_salesforce(plain, con, progress=False)
        assert "accountcontactrole" not in without.counts  # not read: no query for it
        con.close()
        roles = plain.with_overrides(
            db=tmp_path / "roles.duckdb", push={"billing_contact_roles": ["Billing Contact"]}
        )
        con = connect(roles.db)
        result = extract_salesforce(roles, con, progress=False)
        assert result.counts["accountcontactrole"] == 1
        assert _rows(
            con,
            "SELECT account_id, contact_id, role, is_primary, is_deleted"
            " FROM core_account_contact_roles",
        ) == [(acme, fin, "Billing Contact", True, False)]
        con.close()
