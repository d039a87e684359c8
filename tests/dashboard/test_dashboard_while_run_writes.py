"""The dashboard keeps working while `churn run` writes: a real run in another process,
held open mid-run (its scores written, its push not yet done, the warehouse locked for
writing), while every page renders from the read copy; it shows the previous run, never
half of this one, and the finished run's copy replaces it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import pytest
from dash_world import PAGES_DIR, Dash
from streamlit.testing.v1 import AppTest

from churn.dashboard import queries as q
from churn.dashboard.pages import PAGES

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dashboard")]

# The job's own steps with one more just before the push (after scoring): it opens a write
# transaction, says so, and waits for a line on stdin. Everything else is `churn run`.
HELD_RUN = textwrap.dedent(
    """
    import sys
    from churn.job.run import DEFAULT_STEPS, Step, run_job
    from churn.settings import load_settings

    def hold(settings, con, dry_run):
        con.execute("BEGIN TRANSACTION")
        con.execute("UPDATE run_log SET error = error WHERE status = 'running'")
        print("holding", flush=True)
        sys.stdin.readline()
        con.execute("COMMIT")

    push = [s.name for s in DEFAULT_STEPS].index("push")
    steps = [*DEFAULT_STEPS[:push], Step("hold", hold), *DEFAULT_STEPS[push:]]
    result = run_job(load_settings(), steps=steps)
    print("status", result.status, flush=True)
    """
)


def latest(dash: Dash) -> object:
    con = dash.read()
    try:
        return q.latest_as_of(con)
    finally:
        con.close()


def render_all() -> None:
    for file, title, _path, _icon in PAGES:
        at = AppTest.from_file(str(PAGES_DIR / file), default_timeout=300)
        at.run()
        assert not at.exception, (title, [e.value for e in at.exception])
        assert not at.error, (title, [e.value for e in at.error])
        assert at.title[0].value == title


def test_pages_load_while_churn_run_writes(page_env: Dash) -> None:
    before = latest(page_env)
    run = subprocess.Popen(
        [sys.executable, "-c", HELD_RUN],
        env=page_env.env() | {"PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert run.stdin is not None and run.stdout is not None
    try:
        assert run.stdout.readline().strip() == "holding"
        # A writer holds the warehouse: opening it, even read-only, is a lock error...
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(page_env.db), read_only=True)
        # ...while every page renders from the read copy, as of the previous run.
        render_all()
        assert latest(page_env) == before
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.stdout.readline().split() == ["status", "success"]
        assert run.wait(timeout=300) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # The finished run published its copy: the pages now show it.
    after = latest(page_env)
    assert isinstance(after, type(before)) and after > before  # type: ignore[operator]
    render_all()
