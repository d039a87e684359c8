"""`churn webhook serve | work | status`."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState

out = Console()


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    hook = typer.Typer(help="Stripe webhooks: the receiver and the worker that drains it.")
    app.add_typer(hook, name="webhook")

    @hook.command("serve")
    def serve_cmd(
        host: Annotated[
            str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).")
        ] = None,
        port: Annotated[int | None, typer.Option("--port", help="Port (default 8765).")] = None,
        worker: Annotated[
            bool | None,
            typer.Option("--worker/--no-worker", help="Drain the spool in this process too."),
        ] = None,
    ) -> None:
        """Receive Stripe webhooks on POST /stripe/webhook until Ctrl-C or SIGTERM."""
        from churn.job.webhook import serve

        overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        settings = state.settings.with_overrides(webhook=overrides) if overrides else state.settings

        def listening(url: str) -> None:
            # After the bind: the port is the one chosen (--port 0), and a reader of this
            # line (a supervisor, a test) may deliver at once.
            out.print(f"churn webhook: listening on {url}", highlight=False, soft_wrap=True)

        guarded(lambda: serve(settings, worker=worker, on_listening=listening))

    @hook.command("work")
    def work_cmd(
        once: Annotated[
            bool, typer.Option("--once", help="Drain what is pending, then exit.")
        ] = False,
    ) -> None:
        """Drain the spool into the warehouse and Salesforce in micro-batches."""
        from churn.job.webhook import open_spool, work

        settings = state.settings
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        totals = guarded(lambda: work(settings, open_spool(settings), stop, once=once))
        out.print(
            f"webhook worker: {totals.batches} batches, {totals.events} events"
            f" ({totals.landed} new), {totals.api_calls} Salesforce calls,"
            f" {totals.failures} failed batches",
            highlight=False,
        )

    @hook.command("status")
    def status_cmd() -> None:
        """The spool's counters: accepted, duplicates, refusals by reason, pending, done."""
        from churn.job.webhook import open_spool

        counters = guarded(lambda: open_spool(state.settings).counters())
        for name, n in sorted(counters.items()):
            out.print(f"{name}: {n:,}", highlight=False)
