"""`churn doctor`: check the Salesforce org before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from churn.cli.state import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("doctor")
    def doctor_command() -> None:
        """Check the Salesforce org: login, API version, fields, permission set, Task
        picklists, API budget; one line each. Exit 0 when all are ok, 2 otherwise."""
        from churn.cli.state import guarded
        from churn.errors import ConfigError
        from churn.pipelines.salesforce.doctor import run_doctor

        checks = guarded(lambda: run_doctor(state.settings))
        for check in checks:
            typer.echo(check.line())
        problems = sum(1 for c in checks if not c.ok)
        if problems:
            typer.echo(f"{problems} problem{'s' if problems > 1 else ''}; nothing was written")
            raise typer.Exit(ConfigError.exit_code)
        typer.echo("all checks ok; nothing was written")
