"""`churn status`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import duckdb

    from churn.cli.state import CliState


def _open(db: Any) -> tuple[duckdb.DuckDBPyConnection, str | None]:
    """The warehouse read-only; while a run holds it, the read copy it last published."""
    import duckdb

    from churn import warehouse
    from churn.errors import WarehouseError

    try:
        return warehouse.connect(db, read_only=True), None
    except (duckdb.Error, OSError, WarehouseError):
        con = warehouse.connect_read_copy(db)
        return con, "the warehouse is in use by a run: showing the copy the last run published"


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("status")
    def status_cmd(
        fmt: Annotated[
            str, typer.Option("--format", help="table or json.", show_default=True)
        ] = "table",
        runs: Annotated[int, typer.Option("--runs", min=1, help="How many runs to list.")] = 10,
    ) -> None:
        """The last runs (status, duration, steps), each stream's freshness, API calls
        spent, open rejections. Reads only."""
        from churn import warehouse
        from churn.cli.state import guarded
        from churn.job.status import collect

        if fmt not in ("table", "json"):
            raise typer.BadParameter("table or json", param_hint="--format")
        settings = state.settings

        def read() -> tuple[dict[str, Any], str | None]:
            con, note = _open(settings.db)
            try:
                return collect(con, warehouse.utcnow(), runs=runs), note
            finally:
                con.close()

        report, note = guarded(read)
        if fmt == "json":
            typer.echo(json.dumps(report, indent=1))
            return
        _print(report, note)


def _print(report: dict[str, Any], note: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if note:
        out.print(f"[yellow]{note}[/]")
    t = Table(title="Last runs", title_justify="left")
    for col in ("started (UTC)", "command", "status", "seconds", "steps", "rejected"):
        t.add_column(col, no_wrap=col != "steps")
    colours = {"success": "green", "failed": "red", "running": "cyan"}
    for r in report["runs"]:
        steps = ", ".join(
            f"{name} {info['seconds']:.0f}s"
            + (f" ({info['error_type']})" if info["error_type"] else "")
            for name, info in r["steps"].items()
        )
        colour = colours.get(r["status"], "yellow")
        t.add_row(
            (r["started_at"] or "")[:16].replace("T", " "),
            r["command"],
            f"[{colour}]{r['status']}[/]",
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
            steps,
            str(r["rejections"]),
        )
    if not report["runs"]:
        t.add_row("(no run yet)", "", "", "", "", "")
    out.print(t)
    f = Table(title="Freshness (each stream)", title_justify="left")
    for col in ("stream", "synced (UTC)", "ago", "cursor: data up to (UTC)"):
        f.add_column(col)
    for s in report["streams"]:
        age = s["age_hours"]
        f.add_row(
            s["stream"],
            (s["updated_at"] or "")[:16].replace("T", " "),
            "" if age is None else (f"{age:.1f} h" if age < 48 else f"{age / 24:.0f} days"),
            (s["cursor_at"] or "")[:16].replace("T", " "),
        )
    out.print(f)
    api = report["api"]
    spent = api["calls_last_24h"]
    left = api["salesforce_remaining"]
    out.print(
        f"API calls by churn runs in the last 24 h: Stripe {spent['stripe']:,}, "
        f"Salesforce {spent['salesforce']:,}"
        + (f" ({left:,} left in the org's daily budget)" if left is not None else ""),
        highlight=False,
    )
    rej = report["rejections"]
    codes = ", ".join(f"{c} {n:,}" for c, n in rej["by_code"].items()) or "none"
    out.print(f"Records Salesforce rejected (latest answer): {codes}", highlight=False)
    out.print(f"Quarantined input rows: {report['quarantined']:,}", highlight=False)
