"""`churn extract`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from churn.pipelines.commands import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    register_salesforce(app, state)


def _extract_group(app: typer.Typer) -> typer.Typer:
    """The `extract` sub-app, created by whichever command module registers first."""
    for group in app.registered_groups:
        if group.name == "extract" and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(help="Pull data from a source into the warehouse.", no_args_is_help=True)
    app.add_typer(sub, name="extract")
    return sub


def register_salesforce(app: typer.Typer, state: CliState) -> None:
    """`churn extract salesforce` and `churn extract usage`."""
    group = _extract_group(app)

    @group.command("salesforce")
    def extract_salesforce_cmd() -> None:
        """Extract Accounts, Opportunities, Contacts, Users, Tasks and currency rates."""
        from churn.pipelines.commands import guarded
        from churn.pipelines.salesforce_extract import extract_salesforce
        from churn.pipelines.warehouse import connect

        def go() -> None:
            con = connect(state.settings.db)
            try:
                result = extract_salesforce(state.settings, con)
            finally:
                con.close()
            counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
            typer.echo(f"salesforce: {counts}; api calls {result.api_calls}")

        guarded(go)

    @group.command("usage")
    def extract_usage_cmd() -> None:
        """Load active seats per account per day from the usage feed."""
        from churn.pipelines.commands import guarded
        from churn.pipelines.usage import load_usage
        from churn.pipelines.warehouse import connect

        def go() -> None:
            con = connect(state.settings.db)
            try:
                result = load_usage(state.settings, con)
            finally:
                con.close()
            typer.echo("usage: " + ", ".join(f"{k}={v}" for k, v in result.counts.items()))

        guarded(go)
