"""Issue 17: the README's Going live steps, followed literally on the sandbox.

Every ``churn`` line of the section's ``sh`` blocks runs, in order, against a world served
on loopback (the sandbox stands in for the org and Stripe: its variables replace the
secrets the README has you set). ``sf``, ``cd`` and ``systemctl`` lines are for a real org
and host: on the sandbox the stand-in already declares the metadata, so they are no-ops
and skipped. Before: no doctor, no backup, no close-open-tasks; the section's steps
could not be run as written.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churn import warehouse
from churn.cli import app
from churn.sandbox.demo import ensure_world, serve_world

README = Path(__file__).resolve().parents[2] / "README.md"
SKIPPED = ("cd ", "sf ", "systemctl ")


def going_live_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Going live\n") : text.index("## The job:")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    unknown = [line for line in lines if not line.startswith(("churn ", *SKIPPED))]
    assert not unknown, f"lines the test cannot follow: {unknown}"
    return [line for line in lines if line.startswith("churn ")]


def test_the_section_names_the_steps_in_order() -> None:
    assert going_live_commands() == [
        "churn doctor",
        "churn run --dry-run",
        "churn backup /srv/churn/backups/churn-before-first-push.duckdb",
        "churn run",
        "churn push --close-open-tasks --dry-run",
        "churn push --close-open-tasks",
    ]
    text = README.read_text()
    assert "sf project deploy validate --source-dir force-app --target-org prod" in text
    assert "sf project deploy start --source-dir force-app --target-org prod" in text


@pytest.mark.slow
def test_going_live_followed_literally_on_the_sandbox(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ensure_world(tmp_path / "worlds", 60, 3)
    db = tmp_path / "srv" / "data" / "churn.duckdb"
    with serve_world(folder) as box:
        env = {**box.env(), "CHURN_DB": str(db), "CHURN_PUSH__MAX_NEW_TASKS_PER_RUN": "3"}
        outputs: dict[str, str] = {}
        for line in going_live_commands():
            args = shlex.split(line.replace("/srv/churn", str(tmp_path / "srv")))[1:]
            result = CliRunner().invoke(app, args, env=env)
            assert result.exit_code == 0, f"{line}: exit {result.exit_code}\n{result.output}"
            outputs[line] = result.output
            if line == "churn run":
                tasks = [t for t in box.salesforce.records.get("Task", {}).values()
                         if t.get("Churn_Episode_Key__c")]  # fmt: skip
                assert 0 < len(tasks) <= 3  # the first run's cap
        assert "problem" not in outputs["churn doctor"]
        assert (tmp_path / "srv/backups/churn-before-first-push.duckdb").exists()
        assert "close task" in outputs["churn push --close-open-tasks --dry-run"]
        records = box.salesforce.records
        mine = [t for t in records["Task"].values() if t.get("Churn_Episode_Key__c")]
        assert mine and all(t["Status"] == "Completed" for t in mine)
        assert any(a.get("Payment_Health__c") for a in records["Account"].values())
    con = warehouse.connect(db, read_only=True)
    try:
        runs = con.execute(
            "SELECT command, status FROM run_log WHERE command LIKE 'run%' ORDER BY started_at"
        ).fetchall()
        created = con.execute(
            "SELECT count(*) FROM push_log WHERE action = 'create_task'"
        ).fetchone()
        [(dry_counts,)] = con.execute(
            "SELECT counts FROM run_log WHERE command = 'run --dry-run'"
        ).fetchall()
    finally:
        con.close()
    assert runs == [("run --dry-run", "success"), ("run", "success")]
    assert created is not None and created[0] <= 3
    # The cap bit: more episodes than that were planned, and said so before any write.
    assert json.loads(dry_counts)["push"].get("deferred_tasks", 0) > 0
    assert "more new Tasks left for later runs (the cap); about" in caplog.text
