"""The environment of a `churn` process a fault test kills: the sandbox's settings."""

from __future__ import annotations

import os
from pathlib import Path

from churn.sandbox.demo import Sandbox
from faults import tally

SRC = Path(__file__).resolve().parents[2] / "src"


def sandbox_env(box: Sandbox, db: Path, **extra: str) -> dict[str, str]:
    """The shell's service variables dropped, ``box``'s stand-ins and ``db``, this
    checkout's source, ``extra`` on top; no fault tally (the child's kills are counted by
    the test that kills it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STRIPE_", "CHURN_", "SALESFORCE_"))
    }
    env.update(box.env())
    env.update(CHURN_DB=str(db), PYTHONPATH=str(SRC), **extra)
    env.pop(tally.ENV, None)
    return env
