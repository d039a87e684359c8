"""`churn model`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from churn.cli.state import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
