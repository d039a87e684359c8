"""Stripe webhooks in: the receiver (verify, spool, 2xx) and the spool it writes.

``receiver`` is the Starlette application (``make_app``) and its checks (``verify``);
``spool`` is the SQLite (WAL) file that takes each verified event once, durable before the
answer (the package exports the spool only: the receiver imports the Stripe SDK, which
the job layer reaches only at call time). The worker that drains the spool into the warehouse is :mod:`churn.job.webhook`.
May import :mod:`churn.pipelines.stripe`, settings and errors; never job, cli or sandbox.
"""

from __future__ import annotations

from churn.pipelines.webhook.spool import (
    DONE,
    FAILED,
    IGNORED,
    PENDING,
    Spool,
    SpooledEvent,
    spool_path_for,
)

__all__ = ["DONE", "FAILED", "IGNORED", "PENDING", "Spool", "SpooledEvent", "spool_path_for"]
