"""`churn run` and `churn schedule`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState
    from churn.job.run import JobResult
    from churn.settings import Settings

out = Console()


#: ``--format``: the summary as a table, or the (dry run's) full plan as CSV or JSON on
#: stdout, the summary then going to stderr.
FORMATS = ("table", "csv", "json")


def _print_summary(result: JobResult, settings: Settings, fmt: str = "table") -> None:
    import sys

    from churn import warehouse
    from churn.job import summary
    from churn.pipelines.push.report import find_plan, plan_lines, write_plan

    try:
        con = warehouse.connect(settings.db, read_only=True)
    except Exception:  # the summary is best effort; the run_log row is the record
        con = None
    try:
        console = out if fmt == "table" else Console(stderr=True)
        console.print(summary.render(result, con, settings))
        if fmt != "table" and con is not None:
            start, end = summary.run_window(con, result.run_id)
            plan_id = find_plan(con, since=start, until=end) if start is not None else None
            lines = plan_lines(con, settings, plan_id) if plan_id else []
            write_plan(lines, fmt, sys.stdout)
    finally:
        if con is not None:
            con.close()


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("run")
    def run_cmd(
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="Plan the push, store and print it; write nothing."),
        ] = False,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="table, or csv / json: the whole planned push on stdout (the summary "
                "on stderr).",
                show_default=True,
            ),
        ] = "table",
        as_of: Annotated[
            str | None,
            typer.Option(
                "--as-of",
                help="Score as of this ISO date or date-time (UTC) instead of now "
                "(or run.as_of); an older back-fill is not pushed.",
            ),
        ] = None,
    ) -> None:
        """Extract (Stripe, Salesforce, usage), link, score and push, as one locked job.

        Exit codes: 0 success; 1 failed; 2 settings; 3 partial (some steps landed, or the API
        budget stopped one; 0 with run.partial_is_success); 75 another run holds the lock.
        """
        from churn.job.run import run_job

        if fmt not in FORMATS:
            raise typer.BadParameter(", ".join(FORMATS), param_hint="--format")
        settings = state.settings
        if as_of is not None:
            settings = guarded(lambda: settings.with_overrides(run={"as_of": as_of}))
        with out.status("churn run") as status:
            result = guarded(
                lambda: run_job(
                    settings, dry_run=dry_run, on_step=lambda n: status.update(f"churn run: {n}")
                )
            )
        _print_summary(result, settings, fmt)
        raise typer.Exit(result.exit_code)

    @app.command("schedule")
    def schedule_cmd(
        every: Annotated[
            str | None, typer.Option("--every", help="Cadence such as 15m (or run.every).")
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Plan each push and store it; write nothing.")
        ] = False,
        max_runs: Annotated[int | None, typer.Option("--max-runs", hidden=True)] = None,
    ) -> None:
        """Run the job on a cadence until SIGTERM/SIGINT (the current step finishes first)."""
        from churn.job.scheduler import parse_every, schedule

        settings = state.settings
        seconds = guarded(lambda: parse_every(every or settings.run.every))

        def report(result: JobResult | None, skipped: str | None) -> None:
            if result is None:
                out.print(f"[yellow]skipped:[/] {skipped}")
            else:
                out.print(f"{result.run_id}: {result.status} in {result.seconds:.1f}s")

        guarded(
            lambda: schedule(
                settings,
                every_seconds=seconds,
                dry_run=dry_run,
                max_runs=max_runs,
                on_result=report,
            )
        )
