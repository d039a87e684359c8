"""`churn export`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("export")
    def export(
        out: Annotated[Path, typer.Argument(help="Folder for the Parquet datasets.")],
        since: Annotated[
            str | None,
            typer.Option(help="Only snapshots scored as of this ISO date or later."),
        ] = None,
    ) -> None:
        """Write the marts as Parquet partitioned by as_of, for BigQuery, Snowflake, Spark or Trino."""
        from churn.warehouse.export import export_marts

        since_at = None
        if since is not None:
            try:
                since_at = datetime.fromisoformat(since).replace(tzinfo=None)
            except ValueError:
                raise typer.BadParameter(f"--since {since!r} is not an ISO date") from None
        settings = state.settings
        result = guarded(lambda: export_marts(settings.db, out, since=since_at))
        table = Table(title=f"Exported to {result.out}")
        for col in ("Mart", "Snapshots", "Rows"):
            table.add_column(col)
        for mart, n in result.rows.items():
            table.add_row(mart, f"{result.snapshots[mart]:,}", f"{n:,}")
        Console().print(table)
