"""The Salesforce extract and the push under session expiry, Bulk API 2.0's CSV, and an
object without IsDeleted (issue 15). Each faulted run is followed by a clean one whose
warehouse (or org) equals a fault-free run's."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner, Result

from churn import warehouse
from churn.cli import app
from churn.errors import ConfigError
from churn.job.run import Step, _salesforce, run_job
from churn.pipelines.push.sync import push
from churn.pipelines.salesforce.client import BudgetedSession, make_salesforce
from churn.pipelines.salesforce.extract import extract_salesforce
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings, load_settings
from faults import tally
from faults.sf_world import held, lost_and_duplicated, org

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NAMES = ["Zürich Versicherungs AG", "Société Générale", "Ørsted A/S", "Plain Co"]
TOKEN = "/services/oauth2/token"


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    users = [{"Id": "005000000000000OWN", "Name": "Jürgen Groß", "IsActive": True}]
    with start_salesforce_server(seed={"User": users}) as running:
        running.seed(
            "Account",
            [
                {"Name": n, "Website": f"https://{i}.example", "OwnerId": "005000000000000OWN"}
                for i, n in enumerate(NAMES)
            ],
        )
        running.seed("Contact", [{"LastName": f"Müller {i}"} for i in range(5)])
        yield running


def _work(counts: dict[str, int]) -> dict[str, int]:
    """The rows landed, without the budget left (a gauge: a faulted run spent more calls)."""
    return {k: v for k, v in counts.items() if k != "api_remaining"}


def _session(sf: RunningSalesforce, db: Path, **extra: object) -> Settings:
    s = load_settings(env={**sf.settings_env(), "CHURN_DB": str(db)})
    return s.with_overrides(salesforce={"api_reserve": 0, **extra})


def _oauth(sf: RunningSalesforce, db: Path, flow: str, **extra: object) -> Settings:
    login: dict[str, object] = {
        "instance_url": sf.instance_url,
        "session_id": None,
        "client_id": sf.client_id,
        "client_secret": sf.client_secret,
        "ca_bundle": sf.ca_path,
        "api_reserve": 0,
        **extra,
    }
    if flow == "password":
        login |= {"username": sf.username, "password": sf.password}
        login["security_token"] = sf.security_token
    return Settings().with_overrides(db=db, salesforce=login)


def _core(db: Path) -> dict[str, Any]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            t: sorted(
                map(repr, con.execute(f"SELECT * EXCLUDE (system_modstamp) FROM {t}").fetchall())
            )
            for t in ("core_accounts", "core_users", "core_contacts")
        }


def _extract(settings: Settings) -> Any:
    con = warehouse.connect(settings.db)
    try:
        return extract_salesforce(settings, con, progress=False)
    finally:
        con.close()


def test_bulk_results_are_utf8_and_bulk_queries_have_no_order_by(
    sf: RunningSalesforce, tmp_path: Path
) -> None:
    """Bulk API 2.0 query results come as ``text/csv`` with no charset, where requests
    guesses ISO-8859-1 ("Zürich" landed as "ZÃ¼rich"); Salesforce's CSV is UTF-8 ("Files
    must be in UTF-8 format"). And "Use of ORDER BY in a Bulk 2.0 query disables
    PKChunking for the query ... and potentially results in query timeouts" (Troubleshooting
    Query Timeouts): the Bulk queries carry none. Users have no IsDeleted: the User stream
    selects only what describe lists (before: INVALID_FIELD, the extract failed)."""
    rest = _extract(_session(sf, tmp_path / "rest.duckdb"))
    bulk = _extract(_session(sf, tmp_path / "bulk.duckdb", bulk_threshold=1))
    assert rest.counts["account"] == bulk.counts["account"] == len(NAMES)
    with duckdb.connect(str(tmp_path / "bulk.duckdb"), read_only=True) as con:
        names = sorted(r[0] for r in con.execute("SELECT name FROM core_accounts").fetchall())
        users = con.execute("SELECT name, is_active, is_deleted FROM core_users").fetchall()
    assert names == sorted(NAMES)
    assert _core(tmp_path / "bulk.duckdb") == _core(tmp_path / "rest.duckdb")
    assert users == [("Jürgen Groß", True, False)]
    assert sf.org.bulk_queries and not any("ORDER BY" in q for q in sf.org.bulk_queries)
    lost = sum(1 for n in NAMES if n not in names)
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost)


@pytest.mark.parametrize("flow", ["client_credentials", "password"])
def test_an_expired_session_logs_in_once_more_and_the_extract_completes(
    sf: RunningSalesforce, tmp_path: Path, flow: str
) -> None:
    """ "When your session expires, the exception code INVALID_SESSION_ID is returned. If
    this happens, you must invoke the login() call again" (Salesforce). Before: the run
    failed (and exit 3 as if the budget were spent)."""
    clean = _extract(_oauth(sf, tmp_path / "clean.duckdb", flow))
    logins = sf.calls(contains=TOKEN)
    sf.expire_sessions(after_requests=3)  # mid-extract
    faulted = _extract(_oauth(sf, tmp_path / "faulted.duckdb", flow))
    assert sf.calls(contains=TOKEN) == logins + 2  # the login, and one re-login
    assert _work(faulted.counts) == _work(clean.counts)
    # Every call is counted: the refused one, the re-login and the resend too.
    assert faulted.api_calls == clean.api_calls + 2
    assert _core(tmp_path / "faulted.duckdb") == _core(tmp_path / "clean.duckdb")
    tally.record(faults_injected=1, runs_healed=1)


def test_an_expired_fixed_session_is_a_configuration_error_with_its_calls(
    sf: RunningSalesforce, tmp_path: Path
) -> None:
    """A fixed SALESFORCE_SESSION_ID cannot be renewed: its expiry is a configuration
    error (exit 2, one line naming the variable), and the failed step reports the API
    calls it made (before: 0)."""
    settings = _session(sf, tmp_path / "w.duckdb")
    # The session check at the start (one request, outside the step), then two answered.
    sf.expire_sessions(after_requests=3)
    result = run_job(settings, steps=(Step("salesforce", _salesforce),))
    [step] = result.steps
    assert step.status == "failed" and step.exit_code == ConfigError.exit_code
    assert "SALESFORCE_SESSION_ID has expired" in (step.error or "")
    assert step.api_calls == 3  # two answered, the third refused 401
    with duckdb.connect(str(settings.db), read_only=True) as con:
        [(calls,)] = con.execute("SELECT api_calls FROM run_log").fetchall()
    assert json.loads(calls) == {"salesforce": 3}
    env = {**sf.settings_env(), "CHURN_DB": str(tmp_path / "cli.duckdb")}
    out = CliRunner().invoke(app, ["extract", "salesforce"], env=env)
    assert out.exit_code == 2, out.output
    assert "SALESFORCE_SESSION_ID has expired" in out.output
    assert "Traceback" not in out.output and sf.session_id not in out.output
    tally.record(faults_injected=2)


class _CountingStripe:
    """A Stripe stand-in that answers every list empty and counts the requests it got."""

    def __init__(self) -> None:
        paths: list[str] = []
        self.paths = paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path.split("?", 1)[0])
                body = b'{"object": "list", "data": [], "has_more": false}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_stripe() -> Iterator[_CountingStripe]:
    stand_in = _CountingStripe()
    try:
        yield stand_in
    finally:
        stand_in.close()


def _churn_run(sf: RunningSalesforce, counting_stripe: _CountingStripe, tmp_path: Path) -> Result:
    """`churn run` against the Salesforce stand-in and the counting Stripe, no retries."""
    env = {
        **sf.settings_env(),
        "CHURN_DB": str(tmp_path / "w.duckdb"),
        "STRIPE_API_KEY": "sk_test_churn_tests",
        "STRIPE_API_BASE": counting_stripe.base,
        "STRIPE_MAX_RETRIES": "0",
    }
    return CliRunner().invoke(app, ["run"], env=env)


def test_churn_run_with_an_expired_fixed_session_exits_2_before_any_stripe_call(
    sf: RunningSalesforce, counting_stripe: _CountingStripe, tmp_path: Path
) -> None:
    """ "When your session expires, the exception code INVALID_SESSION_ID is returned. If
    this happens, you must invoke the login() call again" (Salesforce's API guide): with a
    fixed SALESFORCE_SESSION_ID there is no login to invoke, so `churn run` cannot succeed
    until the setting changes. Issue 15: it is a settings problem, exit 2 with one line,
    found by the credentials check at the start, before the Stripe extract spends calls.
    Before: the Stripe extract ran first, then the Salesforce step failed (exit 3)."""
    sf.expire_sessions()  # every session issued so far has timed out
    out = _churn_run(sf, counting_stripe, tmp_path)
    assert out.exit_code == 2, out.output
    assert "SALESFORCE_SESSION_ID has expired" in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output
    assert "Traceback" not in out.output and sf.session_id not in out.output
    assert counting_stripe.paths == []  # no Stripe call spent
    tally.record(faults_injected=1)


def test_a_fixed_session_that_expires_mid_run_exits_2(
    sf: RunningSalesforce, counting_stripe: _CountingStripe, tmp_path: Path
) -> None:
    """The session answers the check at the start, then expires during the Salesforce
    extract: the Stripe step landed, the Salesforce step failed on a setting. The run
    exits 2 (settings), not 3 (partial, as if the next run could heal it without a change):
    no rerun succeeds until SALESFORCE_SESSION_ID is replaced."""
    sf.expire_sessions(after_requests=3)  # the check at the start, then two of the extract
    out = _churn_run(sf, counting_stripe, tmp_path)
    assert out.exit_code == 2, out.output
    # the summary's table wraps the step's error over lines
    assert "ConfigError" in out.output and "SALESFORCE_SESSION_ID" in out.output
    assert "Traceback" not in out.output and sf.session_id not in out.output
    assert counting_stripe.paths  # the Stripe step ran
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        [(status,)] = con.execute("SELECT status FROM run_log WHERE command = 'run'").fetchall()
    assert status == "partial"  # what landed is recorded as it is
    tally.record(faults_injected=1)


@pytest.mark.parametrize("flow", ["client_credentials", "password"])
def test_the_push_logs_in_again_when_its_session_expires(tmp_path: Path, flow: str) -> None:
    with org(tmp_path, "clean") as clean:
        push(clean.settings(), clean.world.con)
        expected: Mapping[str, Any] = held(clean.sf)
    with org(tmp_path, "faulted") as o:
        settings = o.oauth_settings(flow)
        o.sf.expire_sessions(after_requests=2)  # the login, the safety query, then expired
        result = push(settings, o.world.con)
        assert result.rejected == [] and o.sf.calls(contains=TOKEN) == 2
        lost, dups = lost_and_duplicated(expected, held(o.sf))
    tally.record(faults_injected=1, runs_healed=1, rows_lost=lost, duplicates=dups)
    assert (lost, dups) == (0, 0)


@pytest.mark.parametrize("bulk", [False, True])
def test_answers_cut_short_are_asked_for_again(
    sf: RunningSalesforce, tmp_path: Path, bulk: bool
) -> None:
    """HTTP 200 with half a body (a JSON page; a Bulk API 2.0 CSV page with fewer rows
    than its ``Sforce-NumberOfRecords``): asked for again within the run, through the
    session's backoff (an injected sleeper: no real wait). Before: a JSONDecodeError
    failed the stream (REST), and a cut Bulk page landed only the rows it had."""
    extra: dict[str, object] = {"bulk_threshold": 1} if bulk else {}
    clean = _extract(_session(sf, tmp_path / "clean.duckdb", **extra))
    waits: list[float] = []
    settings = _session(sf, tmp_path / "faulted.duckdb", **extra)
    session = BudgetedSession(0, sleep=waits.append)
    client = make_salesforce(settings.salesforce, session)
    cuts = 2 if bulk else 3
    sf.truncate_next(cuts, csv_only=bulk)
    con = warehouse.connect(settings.db)
    try:
        faulted = extract_salesforce(settings, con, progress=False, sf=client)
    finally:
        con.close()
    assert sf.org.truncate == 0 and len(waits) == cuts
    assert _work(faulted.counts) == _work(clean.counts)
    assert _core(tmp_path / "faulted.duckdb") == _core(tmp_path / "clean.duckdb")
    tally.record(faults_injected=cuts, runs_healed=1)
