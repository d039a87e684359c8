from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import settings

from churn import warehouse
from faults import tally

# No deadline: a property test that takes 250 ms on a loaded 2-core CI machine is not a
# failure (one did, once). Derandomized: the same examples every run, so a red suite is
# reproducible and CI never meets an example the developers never saw.
settings.register_profile("churn", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("churn")


#: Variables the service reads (settings, credentials): a shell's own must not reach a
#: test (a real key in a developer's environment would be used; a CHURN_DB would be shared
#: by two suites run side by side). Tests set what they need explicitly.
SERVICE_PREFIXES = ("CHURN_", "STRIPE_", "SALESFORCE_")


def pytest_configure(config: pytest.Config) -> None:
    for name in [n for n in os.environ if n.startswith(SERVICE_PREFIXES) and n != tally.ENV]:
        del os.environ[name]
    # The controller picks the fault suite's totals directory; xdist workers, started
    # after this, inherit it through the environment. A session killed before its end
    # (SIGTERM from a timeout) leaves its directory: the next one removes it.
    if not hasattr(config, "workerinput") and tally.ENV not in os.environ:
        tally.sweep(Path(tempfile.gettempdir()))
        os.environ[tally.ENV] = _OWN_TALLY[0] = tally.new_directory()


#: The totals directory this session made (removed at its end; one given is left alone).
_OWN_TALLY: list[str] = [""]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_TALLY[0]:
        shutil.rmtree(_OWN_TALLY[0], ignore_errors=True)
        os.environ.pop(tally.ENV, None)
        _OWN_TALLY[0] = ""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    directory = os.environ.get(tally.ENV)
    if not directory or not any(Path(directory).glob("*.jsonl")):
        return
    sums = tally.totals(Path(directory))
    terminalreporter.section("fault suite totals")
    terminalreporter.write_line(
        "  ".join(f"{key.replace('_', ' ')}: {value:,}" for key, value in sums.items())
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "churn.duckdb"


@pytest.fixture
def con(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = warehouse.connect(db_path)
    yield connection
    connection.close()
