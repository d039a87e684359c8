"""`churn extract`: a group; each source adds its own subcommand below."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from churn.pipelines.commands import guarded

if TYPE_CHECKING:
    from churn.pipelines.commands import CliState

extract_app = typer.Typer(help="Land a source in the warehouse.", no_args_is_help=True)


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    app.add_typer(extract_app, name="extract")
    _register_stripe(state)


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
            from churn.pipelines import warehouse
            from churn.pipelines.stripe_extract import extract_stripe

            settings = state.settings
            con = warehouse.connect(settings.db)
            try:
                extract_stripe(settings, con, reconcile=reconcile, full=full, progress=progress)
            finally:
                con.close()

        guarded(run)
