"""Operations (issue 17): the alert hook, timestamped and JSON logs, exit codes systemd can
tell apart, `churn status`, `--version`, flags without placeholders."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest
import typer
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.cli.logs import configure
from churn.errors import StripeExtractError
from churn.job.run import Step, run_job
from churn.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]
    answer = 204

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).answer)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": [], "answer": 204})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def _settings(tmp_path: Path, **env: str) -> Any:
    return load_settings(env={"CHURN_DB": str(tmp_path / "w.duckdb"), **env})


def _ok(counts: dict[str, int], calls: int = 0) -> Any:
    return lambda s, con, dry: SimpleNamespace(counts=counts, api_calls=calls)


def _fails(exc: Exception) -> Any:
    def run(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        raise exc

    return run


SECRET = "cus_SECRET acme@example.com"


def test_a_failed_run_posts_a_small_alert_without_customer_data(
    tmp_path: Path, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    settings = _settings(tmp_path, CHURN_ALERT__WEBHOOK_URL=url)
    steps = [Step("stripe", _fails(StripeExtractError(f"GET /v1/customers/{SECRET} 400")))]
    result = run_job(settings, steps=steps)
    assert result.status == "failed"
    [body] = handler.bodies
    assert body["event"] == "run_failed" and body["run_id"] == result.run_id
    assert (body["status"], body["exit_code"]) == ("failed", 1)
    assert (body["failed_step"], body["error_type"]) == ("stripe", "StripeExtractError")
    assert body["steps"] == {"stripe": "failed"} and body["rejections"] == 0
    assert "SECRET" not in json.dumps(body) and "example.com" not in json.dumps(body)


def test_partial_and_rejections_alert_a_clean_run_does_not(
    tmp_path: Path, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    settings = _settings(tmp_path, CHURN_ALERT__WEBHOOK_URL=url)
    run_job(settings, steps=[Step("stripe", _ok({"customer": 1}))])
    assert handler.bodies == []
    run_job(settings, steps=[Step("stripe", _ok({})), Step("push", _ok({"rejected": 2}))])
    assert [b["event"] for b in handler.bodies] == ["push_rejections"]
    assert handler.bodies[0]["rejections"] == 2
    partial = [Step("stripe", _fails(StripeExtractError("x"))), Step("salesforce", _ok({}))]
    run_job(settings, steps=partial)
    assert handler.bodies[-1]["event"] == "run_partial"
    assert handler.bodies[-1]["exit_code"] == 3


def test_a_degraded_run_alerts_as_degraded(
    tmp_path: Path, receiver: tuple[str, type[_Receiver]]
) -> None:
    """A push that wrote without a field Salesforce refuses ends the run degraded (exit 4):
    the alert says so, apart from a partial run."""
    url, handler = receiver
    settings = _settings(tmp_path, CHURN_ALERT__WEBHOOK_URL=url)

    def degraded_push(s: Any, con: duckdb.DuckDBPyConnection, dry: bool) -> Any:
        return SimpleNamespace(counts={"blocked_fields": 1}, api_calls=3, degraded=True)

    result = run_job(settings, steps=[Step("push", degraded_push)])
    assert (result.status, result.exit_code) == ("degraded", 4)
    [body] = handler.bodies
    assert (body["event"], body["exit_code"]) == ("run_degraded", 4)


def test_a_broken_receiver_is_logged_and_never_changes_the_run(
    tmp_path: Path, receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = receiver
    handler.answer = 500
    settings = _settings(tmp_path, CHURN_ALERT__WEBHOOK_URL=url + "?token=s3cr3t")
    with caplog.at_level(logging.WARNING, logger="churn"):
        result = run_job(settings, steps=[Step("stripe", _fails(StripeExtractError("x")))])
    assert result.status == "failed" and len(handler.bodies) == 1
    assert "alert not delivered: HTTPError (HTTP 500)" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_json_logs_are_one_object_per_line_with_the_run_and_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: no JSON logs, and the job logged nothing about its steps."""
    configure("json", "INFO")
    try:
        result = run_job(_settings(tmp_path), steps=[Step("stripe", _ok({"customer": 3}, 2))])
    finally:
        configure("text", "WARNING")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", x["ts"]) for x in lines)
    step = next(x for x in lines if x.get("step") == "stripe")
    assert step["run_id"] == result.run_id and step["counts"] == {"customer": 3}
    assert step["api_calls"] == 2 and step["status"] == "success"
    end = lines[-1]
    assert end["message"].startswith("run success") and end["exit_code"] == 0


def test_text_logs_carry_an_iso_utc_timestamp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("text", "INFO")
    try:
        run_job(_settings(tmp_path), steps=[Step("stripe", _ok({}))])
    finally:
        configure("text", "WARNING")
    err = capsys.readouterr().err.splitlines()
    assert err and all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING) churn\.", x) for x in err
    )


def test_a_partial_run_is_not_success_unless_configured(tmp_path: Path) -> None:
    """Before: the README's unit had SuccessExitStatus=3 75, so a partial run (exit 3) was
    a success to systemd on every tick."""
    partial = [Step("stripe", _fails(StripeExtractError("x"))), Step("salesforce", _ok({}))]
    assert run_job(_settings(tmp_path), steps=partial).exit_code == 3
    accepted = _settings(tmp_path, CHURN_RUN__PARTIAL_IS_SUCCESS="true")
    result = run_job(accepted, steps=partial)
    assert result.status == "partial" and result.exit_code == 0
    readme = (ROOT / "README.md").read_text()
    statuses = re.findall(r"^SuccessExitStatus=(.*)$", readme, flags=re.M)
    assert statuses and all("3" not in s.split() for s in statuses)
    for code in ("0", "1", "2", "3", "75"):
        assert re.search(rf"^\s*\| `{code}` \|", readme, flags=re.M), f"exit code {code} table row"


def test_version_and_flags_without_placeholders() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"churn \d+\.\d+\.\d+\n", version.output)
    command = typer.main.get_command(app)

    def walk(cmd: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])

    paths = list(walk(command, []))
    assert len(paths) > 10
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0, path
        assert "<bool>" not in result.output, path


def _status_world(db: Path) -> None:
    con = warehouse.connect(db)
    now = warehouse.utcnow()
    con.execute(
        "INSERT INTO run_log (run_id, command, started_at, finished_at, status, counts,"
        " api_calls, durations, error) VALUES ('run_a', 'run', ?, ?, 'partial', ?, ?, ?, ?)",
        [
            now - timedelta(hours=2),
            now - timedelta(hours=2) + timedelta(seconds=42),
            json.dumps({"stripe": {"customer": 3}, "push": {"rejected": 1}}),
            json.dumps({"stripe": 12, "salesforce": 5, "push": 3}),
            json.dumps({"stripe": 30.0, "salesforce": 10.0, "push": 2.0}),
            "salesforce: SalesforceExtractError: query Account failed for 001A",
        ],
    )
    con.execute(
        "INSERT INTO sync_state (stream, cursor, cursor_ts, updated_at)"
        " VALUES ('stripe:events', 'evt_1', ?, ?)",
        [now - timedelta(hours=3), now - timedelta(hours=2)],
    )
    con.execute(
        "INSERT INTO push_log (run_id, idempotency_key, sobject, record_key, action, transport,"
        " success, error_code, error_message, logged_at) VALUES ('p', 'k', 'Account', '001A',"
        " 'update_account', 'collections', false, 'FIELD_CUSTOM_VALIDATION_EXCEPTION', 'x', ?)",
        [now - timedelta(hours=2)],
    )
    con.close()


def test_churn_status_shows_runs_freshness_budget_and_rejections(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _status_world(db)
    runner = CliRunner()
    result = runner.invoke(app, ["--db", str(db), "status", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [run] = report["runs"]
    assert run["status"] == "partial" and run["seconds"] == pytest.approx(42, abs=1)
    assert run["steps"]["salesforce"]["error_type"] == "SalesforceExtractError"
    assert run["rejections"] == 1
    assert report["streams"][0]["stream"] == "stripe:events"
    assert report["streams"][0]["age_hours"] == pytest.approx(2, abs=0.1)  # synced 2 h ago
    assert report["api"]["calls_last_24h"] == {"stripe": 12, "salesforce": 8}
    assert report["rejections"]["by_code"] == {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1}
    assert "001A" not in result.stdout, "no record ids, no error messages"
    table = runner.invoke(app, ["--db", str(db), "status"], env={"COLUMNS": "100"})
    assert table.exit_code == 0
    assert "partial" in table.output and "stripe:events" in table.output
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION 1" in table.output


def test_the_stripe_sdk_request_lines_only_with_verbose() -> None:
    """One INFO line per Stripe request (thousands a backfill) flooded `churn run`'s stderr
    once the SDK's logger was set to INFO; they show with -v only, and its DEBUG (response
    bodies: customer names and emails) never."""
    from churn.cli.logs import configure

    configure("text", "WARNING")
    assert not logging.getLogger("stripe").isEnabledFor(logging.INFO)
    configure("json", "INFO")
    assert not logging.getLogger("stripe").isEnabledFor(logging.INFO)
    configure("text", "DEBUG")
    stripe_log = logging.getLogger("stripe")
    assert stripe_log.isEnabledFor(logging.INFO) and not stripe_log.isEnabledFor(logging.DEBUG)
    assert logging.getLogger("urllib3").isEnabledFor(logging.DEBUG)  # -v: every request line
    configure("text", "WARNING")
    assert not logging.getLogger("urllib3").isEnabledFor(logging.INFO)


def test_the_salesforce_budget_left_is_a_gauge_not_a_headline() -> None:
    """The extract records the org's daily API budget left (for `churn status`); the
    run summary's step line shows work done, so a run that landed nothing still says so."""
    from churn.job.summary import headline_counts

    assert headline_counts({"api_remaining": 14_990}) == "nothing new"
    assert headline_counts({"account": 3, "api_remaining": 14_990}) == "account=3"
