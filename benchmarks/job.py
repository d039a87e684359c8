"""One `churn run` in its own process, for `make bench`: prints its figures as JSON.

The settings come from the environment (the stand-ins' addresses as `churn sandbox serve`
prints them, ``CHURN_DB``). Besides each step's time, calls and counts, it reads the
process's peak resident memory (``VmHWM``) as each step starts, so the Stripe extract's
own peak is the high-water mark when the next step begins. Where the Salesforce extract
runs beside Stripe's (an incremental run), both start together: their peak and CPU are
the Salesforce step's figures, and the Stripe step's read about zero.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any


def vm_hwm_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    from churn.job.run import DEFAULT_STEPS, run_job
    from churn.settings import load_settings

    settings = load_settings(env=dict(os.environ))
    # --steps stripe,salesforce: only those steps (the backfill's Stripe part alone).
    names = sys.argv[sys.argv.index("--steps") + 1].split(",") if "--steps" in sys.argv else None
    steps = [s for s in DEFAULT_STEPS if names is None or s.name in names]
    marks: list[tuple[str, float, float, float]] = []

    def cpu() -> float:
        # this process's CPU seconds (all threads): on a loaded machine, beside the wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def on_step(name: str) -> None:
        marks.append((name, time.perf_counter(), vm_hwm_mb(), cpu()))

    t0 = time.perf_counter()
    result = run_job(settings, steps=steps, on_step=on_step)
    wall = time.perf_counter() - t0
    peaks: dict[str, float] = {}
    cpus: dict[str, float] = {}
    names = [m[0] for m in marks]
    for i, name in enumerate(names):
        # the high-water mark when the next step starts (or at the end) covers this step
        peaks[name] = marks[i + 1][2] if i + 1 < len(marks) else vm_hwm_mb()
        cpus[name] = (marks[i + 1][3] if i + 1 < len(marks) else cpu()) - marks[i][3]
    out: dict[str, Any] = {
        "status": result.status,
        "seconds": round(wall, 2),
        "api_calls": result.api_calls,
        "peak_rss_mb": round(vm_hwm_mb(), 0),
        "steps": [
            {
                "name": s.name,
                "status": s.status,
                "seconds": round(s.seconds, 2),
                "api_calls": s.api_calls,
                "counts": s.counts,
                "peak_rss_mb": round(peaks.get(s.name, 0.0), 0),
                "cpu_seconds": round(cpus.get(s.name, 0.0), 1),
            }
            for s in result.steps
        ],
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
