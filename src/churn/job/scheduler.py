"""`churn schedule --every 15m`: the job on a cadence, stopping cleanly on SIGTERM/SIGINT.

A signal during a step lets that step finish (its data and cursor commit together) and
skips the rest; a signal while waiting ends the wait at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from churn.errors import ConfigError, LockHeldError
from churn.job.run import JobResult, run_job
from churn.settings import Settings, every_seconds


def parse_every(text: str) -> float:
    """'15m' -> 900.0 seconds; the setting run.every or --every."""
    try:
        return every_seconds(text)
    except ValueError:
        raise ConfigError(
            f"run.every / --every must look like 30s, 15m, 1h or 1d, not {text[:20]!r}"
        ) from None


def schedule(
    settings: Settings,
    *,
    every_seconds: float,
    dry_run: bool = False,
    max_runs: int | None = None,
    on_result: Callable[[JobResult | None, str | None], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the job every ``every_seconds`` until stopped; returns how many runs started."""
    stop = stop or threading.Event()

    def _handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _handle)
    runs = 0
    try:
        while not stop.is_set():
            runs += 1
            try:
                result = run_job(settings, dry_run=dry_run, should_stop=stop.is_set)
                if on_result:
                    on_result(result, None)
            except LockHeldError as exc:
                # Another run (manual or overlapping) is busy: skip this tick, not an error.
                if on_result:
                    on_result(None, str(exc))
            if max_runs is not None and runs >= max_runs:
                break
            stop.wait(every_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return runs
