"""Pure scoring: history tables and an explicit ``as_of`` in, rows of one schema out.

No network, no wall-clock reads, no writes (import boundaries checked by ``lint-imports``).
:data:`SIGNALS` is the one registry: every rule about a signal (its kind, default
weight, whether it makes Tasks, its resolution, its escalation ladder) is declared there
and nowhere else. ``churn.settings`` takes its defaults from it; the push its ladders.

To add a signal: write its module (``NAME`` and ``score(tables, as_of, settings)``
returning :func:`~churn.signals.schema.finish` rows), add its :class:`Signal` to :data:`SIGNALS` (``registry.py``), add
at least eight golden cases under ``tests/golden/signals/<name>/``.
"""

from __future__ import annotations

from churn.signals.facts import IN_FORCE_STATUSES, MRR_STATUSES
from churn.signals.registry import (
    SIGNALS,
    SIGNALS_BY_NAME,
    UNKNOWN_RESOLUTION,
    default_risk_weights,
    default_task_signals,
    names_of,
)
from churn.signals.schema import LADDERS, SIGNAL_SCHEMA, Kind, Ladder, Signal

__all__ = [
    "IN_FORCE_STATUSES",
    "LADDERS",
    "MRR_STATUSES",
    "SIGNALS",
    "SIGNALS_BY_NAME",
    "SIGNAL_SCHEMA",
    "UNKNOWN_RESOLUTION",
    "Kind",
    "Ladder",
    "Signal",
    "default_risk_weights",
    "default_task_signals",
    "names_of",
]
