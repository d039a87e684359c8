"""The scheduled job: ``run_job`` runs the steps in order under one lock and records them.

``run`` holds the steps, the run lock and the ``run_log`` bookkeeping; ``scoring`` is the
scoring step (signals over the warehouse, written to the marts); ``scheduler`` repeats
the job; ``summary`` renders the one-screen summary; ``webhook`` is the webhook worker
(micro-batches from the spool under the same lock) and ``churn webhook serve``. May
import :mod:`churn.pipelines` (those that import an SDK at call time only),
:mod:`churn.signals` and :mod:`churn.warehouse`; never :mod:`churn.cli` or
:mod:`churn.sandbox`.
"""

from __future__ import annotations

from churn.job.run import DEFAULT_STEPS, JobResult, Step, StepOutcome, run_job, run_lock
from churn.job.scheduler import schedule
from churn.job.scoring import ScoreResult, score

__all__ = [
    "DEFAULT_STEPS",
    "JobResult",
    "ScoreResult",
    "Step",
    "StepOutcome",
    "run_job",
    "run_lock",
    "schedule",
    "score",
]
