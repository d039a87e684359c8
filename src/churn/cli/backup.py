"""`churn backup PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from churn.cli.state import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("backup")
    def backup_command(
        path: Annotated[Path, typer.Argument(help="Where the copy goes (must not exist).")],
    ) -> None:
        """A consistent copy of the warehouse, taken under the run lock (push_state lives
        there: keep the copy off the warehouse's disk)."""
        from churn.cli.state import guarded
        from churn.job.backup import backup

        written = guarded(lambda: backup(state.settings, path))
        typer.echo(f"backup written to {written}")
