"""`churn sandbox serve`: a stop asked for while the world loads, and a world that cannot
load. Loading takes minutes at 100,000 accounts (the bench and CI stop the stand-in with
SIGTERM); both run in process against a stand-in of ``serve_world``."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from churn.cli import app
from churn.errors import SandboxError
from churn.sandbox import demo


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)
    gc.unfreeze()


def _serve(monkeypatch: pytest.MonkeyPatch, world: Any) -> Any:
    monkeypatch.setattr(demo, "serve_world", world)
    return CliRunner().invoke(app, ["sandbox", "serve", str(Path("unused-world"))])


def test_a_stop_while_the_world_loads_stops_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, SIGTERM only set the event the served world waits on: the load went on to
    the end (minutes at 100,000 accounts), printed its exports and only then stopped."""
    stopped = []

    @contextmanager
    def world(*_: Any, **__: Any) -> Iterator[Any]:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the stop arrives while loading
            for _n in range(1_000):  # what is left of the load
                sum(range(100))
            yield SimpleNamespace(env=lambda: {"STRIPE_API_BASE": "http://127.0.0.1:1"})
        finally:
            stopped.append(True)  # the stand-ins started so far are stopped

    result = _serve(monkeypatch, world)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped while loading the world" in result.output
    assert "export" not in result.output
    assert stopped == [True]


def test_a_stop_once_served_ends_the_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def world(*_: Any, **__: Any) -> Iterator[Any]:
        def env() -> dict[str, str]:
            os.kill(os.getpid(), signal.SIGTERM)  # served: the exports are being printed
            return {"STRIPE_API_BASE": "http://127.0.0.1:1"}

        yield SimpleNamespace(env=env)

    result = _serve(monkeypatch, world)
    assert result.exit_code == 0, result.output
    assert "export STRIPE_API_BASE=http://127.0.0.1:1" in result.output
    assert "stopped while loading" not in result.output


def test_a_world_that_cannot_load_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The world loads on entering ``serve_world``'s context, which was outside
    ``guarded``: its SandboxError escaped as a traceback."""

    @contextmanager
    def world(*_: Any, **__: Any) -> Iterator[Any]:
        raise SandboxError("cannot load the world's Salesforce records: bad row")
        yield  # pragma: no cover

    result = _serve(monkeypatch, world)
    assert result.exit_code == SandboxError.exit_code
    assert result.output.strip().splitlines() == [
        "error: cannot load the world's Salesforce records: bad row"
    ]
    assert result.exception is None or isinstance(result.exception, SystemExit)
