"""`churn dashboard`: the customer-success dashboard on the read copy of ``CHURN_DB``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState
    from churn.settings import Settings

out = Console(stderr=True)


def ensure_read_copy(settings: Settings) -> str:
    """Publish the read copy when there is none yet (a warehouse from before the job
    published one), under the job's lock so no run writes meanwhile; says what it did."""
    from churn import warehouse
    from churn.errors import WarehouseError
    from churn.job.run import lock_path_for, run_lock

    copy = warehouse.read_copy_path(settings.db)
    if copy.exists():
        return f"reading {copy}"
    if not settings.db.exists():
        raise WarehouseError(f"no warehouse {settings.db}: run `churn run` (or `make demo`) first")
    with run_lock(lock_path_for(settings)):
        warehouse.connect(settings.db).close()  # migrated, checkpointed and closed
        warehouse.publish_read_copy(settings.db, spare=settings.run.read_copy_spare)
    return f"published {copy} from {settings.db}"


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("dashboard")
    def dashboard_cmd(
        port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8501,
        address: Annotated[
            str,
            typer.Option(
                "--address",
                help="Address to bind (loopback by default: the pages hold customer data;"
                " put a reverse proxy with the company's login in front to share it).",
            ),
        ] = "127.0.0.1",
    ) -> None:
        """Start the Streamlit dashboard on the read copy the job publishes after each run."""
        from churn.dashboard.server import serve

        settings = state.settings
        out.print(guarded(lambda: ensure_read_copy(settings)))
        out.print(f"dashboard on http://{address}:{port} (Ctrl-C stops it)")
        serve(settings.db, address, port)
