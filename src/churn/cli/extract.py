"""`churn extract`: a group; each source adds its own subcommand below."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState

extract_app = typer.Typer(help="Land a source in the warehouse.", no_args_is_help=True)


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    app.add_typer(extract_app, name="extract")
    _register_stripe(state)
    register_salesforce(app, state)


def _register_stripe(state: CliState) -> None:
    @extract_app.command("stripe")
    def stripe_command(
        reconcile: Annotated[
            bool,
            typer.Option("--reconcile", help="Re-list the mutable streams and land what differs."),
        ] = False,
        full: Annotated[
            bool, typer.Option("--full", help="List every stream again (a new backfill).")
        ] = False,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Progress bars and a summary.")
        ] = True,
    ) -> None:
        """Land Stripe: backfill on the first run, then /v1/events (and reconciliation)."""

        def run() -> None:
            from churn import warehouse
            from churn.pipelines.stripe.extract import extract_stripe

            settings = state.settings
            con = warehouse.connect(
                settings.db,
                memory_limit=settings.run.duckdb_memory_limit,
                threads=settings.run.duckdb_threads,
            )
            try:
                extract_stripe(settings, con, reconcile=reconcile, full=full, progress=progress)
            finally:
                con.close()

        guarded(run)


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
    def extract_salesforce_cmd(
        reconcile: Annotated[
            bool,
            typer.Option(
                "--reconcile", help="Also list live Ids and mark records purged for good."
            ),
        ] = False,
    ) -> None:
        """Extract Accounts, Opportunities, Contacts, Users, Tasks and currency rates."""
        from churn.cli.state import guarded
        from churn.pipelines.salesforce.extract import extract_salesforce
        from churn.warehouse import connect

        def go() -> None:
            con = connect(state.settings.db)
            try:
                result = extract_salesforce(state.settings, con, reconcile=reconcile)
            finally:
                con.close()
            counts = ", ".join(f"{k}={v}" for k, v in result.counts.items())
            typer.echo(f"salesforce: {counts}; api calls {result.api_calls}")

        guarded(go)

    @group.command("usage")
    def extract_usage_cmd() -> None:
        """Load active seats per account per day from the usage feed."""
        from churn.cli.state import guarded
        from churn.pipelines.usage import load_usage
        from churn.warehouse import connect

        def go() -> None:
            con = connect(state.settings.db)
            try:
                result = load_usage(state.settings, con)
            finally:
                con.close()
            typer.echo("usage: " + ", ".join(f"{k}={v}" for k, v in result.counts.items()))
            for note in result.notes:
                typer.echo(note)

        guarded(go)
