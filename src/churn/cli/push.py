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
        close_open_tasks: Annotated[
            bool,
            typer.Option(
                "--close-open-tasks",
                help="Close every Task and Case the service has open (the way back); with"
                " --dry-run, list them.",
            ),
        ] = False,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="table (grouped, a few per action), or csv / json: every planned change "
                "on stdout.",
                show_default=True,
            ),
        ] = "table",
        limit: Annotated[
            int, typer.Option("--limit", min=1, help="Records shown per action in the table.")
        ] = 20,
    ) -> None:
        """Push Account health fields and Tasks to Salesforce.

        Exit 4 (degraded) when records were written without fields Salesforce refuses."""
        from churn import warehouse
        from churn.cli.state import guarded
        from churn.pipelines.push.sync import push

        def announce(planned: PushResult) -> None:
            if planned.plan.changes or planned.plan.deferred_tasks or planned.plan.deferred_cases:
                # stdout carries the plan itself with --format csv|json
                typer.echo(planned.announcement(), err=fmt != "table")

        def run() -> PushResult:
            con = warehouse.connect(
                state.settings.db,
                memory_limit=state.settings.run.duckdb_memory_limit,
                threads=state.settings.run.duckdb_threads,
            )
            try:
                return push(
                    state.settings,
                    con,
                    dry_run=dry_run,
                    retry_blocked=retry_blocked,
                    on_plan=announce,
                    close_open_tasks=close_open_tasks,
                )
            finally:
                con.close()

        if fmt not in ("table", "csv", "json"):
            raise typer.BadParameter("table, csv or json", param_hint="--format")
        result = guarded(run)
        _report(result, state, fmt, limit)
        if result.degraded:
            from churn.errors import DEGRADED_EXIT_CODE

            raise typer.Exit(DEGRADED_EXIT_CODE)


def _report(result: PushResult, state: CliState, fmt: str, limit: int) -> None:
    import sys

    from rich.console import Console

    from churn import warehouse
    from churn.job.summary import plan_table, shorten
    from churn.pipelines.push.report import plan_lines, write_plan

    out = Console(stderr=fmt != "table")
    settings = state.settings
    if result.plan.changes:
        con = warehouse.connect(settings.db, read_only=True)
        try:
            lines = plan_lines(con, settings, result.run_id)
        finally:
            con.close()
    else:
        lines = []
    if fmt != "table":
        write_plan(lines, fmt, sys.stdout)
    elif result.dry_run:
        title = f"push plan {result.run_id} (dry run: nothing written)"
        out.print(plan_table(lines, title, limit, "all of it: --format csv|json"))
    summary = ", ".join(f"{k} {v:,}" for k, v in sorted(result.counts.items()))
    out.print(f"push {result.run_id}: {summary}; {result.api_calls} API calls", highlight=False)
    label = "degraded" if result.degraded else "note"
    for note in result.notes:
        out.print(f"[yellow]{label}[/] {note}", highlight=False)
    out.print(f"rejected by Salesforce: {len(result.rejected):,}", highlight=False)
    names = {line.record: line.account for line in lines}
    for rejection in result.rejected[:limit]:
        name = names.get(rejection.record_key, rejection.record_key)
        out.print(
            f"[yellow]rejected[/] {rejection.sobject} {name}: "
            + shorten(f"{rejection.error_code}: {rejection.message}", 120),
            highlight=False,
        )
    if len(result.rejected) > limit:
        out.print(f"... and {len(result.rejected) - limit:,} more (push_log)", highlight=False)
