"""`churn push`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from churn.cli.state import CliState
    from churn.pipelines.push.sync import PushResult


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("push")
    def push_command(
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print and store the plan; write nothing.")
        ] = False,
        retry_blocked: Annotated[
            bool,
            typer.Option(
                "--retry-blocked",
                help="Send fields blocked by an earlier refusal again (after fixing the org).",
            ),
        ] = False,
    ) -> None:
        """Push Account health fields and Tasks to Salesforce.

        Exit 4 (degraded) when records were written without fields Salesforce refuses."""
        from churn import warehouse
        from churn.cli.state import guarded
        from churn.pipelines.push.sync import push

        def run() -> PushResult:
            con = warehouse.connect(state.settings.db)
            try:
                return push(state.settings, con, dry_run=dry_run, retry_blocked=retry_blocked)
            finally:
                con.close()

        result = guarded(run)
        _report(result)
        if result.degraded:
            from churn.errors import DEGRADED_EXIT_CODE

            raise typer.Exit(DEGRADED_EXIT_CODE)


def _report(result: PushResult) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if result.dry_run:
        table = Table(title=f"push plan {result.run_id} (dry run: nothing written)")
        for column in ("object", "record", "action", "fields", "last error"):
            table.add_column(column, overflow="fold")
        for change in result.plan.changes:
            fields = ", ".join(f"{k}={v}" for k, v in change.fields.items())
            table.add_row(
                change.sobject, change.record_key, change.action, fields, change.last_error or ""
            )
        out.print(table)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    out.print(f"push {result.run_id}: {summary}; {result.api_calls} API calls", highlight=False)
    label = "degraded" if result.degraded else "note"
    for note in result.notes:
        out.print(f"[yellow]{label}[/] {note}", highlight=False)
    for rejection in result.rejected:
        out.print(
            f"[yellow]rejected[/] {rejection.sobject} {rejection.record_key}: "
            f"{rejection.error_code}: {rejection.message}",
            highlight=False,
        )
