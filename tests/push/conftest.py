"""Fixtures of the push tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest
from push_world import MART_DDL, KillPush, World

from churn.sandbox.salesforce.server import RunningSalesforce

#: Seconds a wait may take before the test fails: a guard against a hang, not a speed check.
HANG = 600.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(con: duckdb.DuckDBPyConnection) -> World:
    w = World(con)
    w.con.execute(MART_DDL)
    return w


@pytest.fixture
def kill_push(db_path: Path) -> KillPush:
    """Run ``churn push`` on ``db_path`` in a process of its own against the stand-in ``sf``
    (two records a call) and SIGKILL it while the org holds the call carrying its ``nth``
    record of ``sobject``: the records before it applied, that call landed and its answer
    never comes, so the push cannot have committed it. The kill lands at that point
    whatever the machine's load (no sleeps, no polling). Returns once the held call has
    finished (its record applied, its answer to no one) and the org's rules are cleared,
    for the rerun. The warehouse must be closed by the caller first."""

    def kill(sf: RunningSalesforce, sobject: str, nth: int = 4) -> None:
        reached, release = threading.Event(), threading.Event()
        seen = [0]

        def hold(name: str, record: Mapping[str, Any]) -> None:
            if name == sobject:
                seen[0] += 1
                if seen[0] == nth:
                    reached.set()
                    release.wait(HANG)
            return None

        sf.add_rule(hold)
        env = {
            **os.environ,
            **sf.settings_env(),
            "PYTHONPATH": "src",
            "SALESFORCE_API_RESERVE": "0",
            "CHURN_PUSH__COLLECTION_SIZE": "2",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "churn", "--db", str(db_path), "push"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert reached.wait(HANG), f"the push never sent its record {nth} of {sobject}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=HANG)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=HANG)
        assert proc.returncode == -signal.SIGKILL
        with sf.org.lock:  # the held call holds the org until it has finished
            sf.org.rules.clear()

    return kill
