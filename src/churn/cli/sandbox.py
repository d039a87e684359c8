"""`churn sandbox`: generate a world, serve it on loopback, run the demo."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState

out = Console()


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    sandbox = typer.Typer(help="The synthetic world and its loopback Stripe and Salesforce.")
    app.add_typer(sandbox, name="sandbox")

    @sandbox.command("generate")
    def generate(
        out_dir: Annotated[Path, typer.Option("--out", help="World folder to write.")],
        accounts: Annotated[int, typer.Option("--accounts")] = 2_000,
        seed: Annotated[int, typer.Option("--seed")] = 42,
    ) -> None:
        """Write a seeded world folder (docs/world-format.md)."""
        import json

        from churn.sandbox.world import generate_world_to

        started = time.perf_counter()
        generate_world_to(out_dir, accounts, seed)
        counts = json.loads((out_dir / "world.json").read_text())["counts"]
        out.print(
            f"{accounts} accounts, {counts.get('event', 0)} events -> {out_dir} "
            f"in {time.perf_counter() - started:.1f}s"
        )

    @sandbox.command("serve")
    def serve(
        world: Annotated[Path, typer.Argument(help="A world folder.")],
        stripe_port: Annotated[int, typer.Option("--stripe-port")] = 0,
        salesforce_port: Annotated[int, typer.Option("--salesforce-port")] = 0,
        webhook: Annotated[
            list[str] | None,
            typer.Option("--webhook", help="Deliver Stripe webhooks to this URL (repeatable)."),
        ] = None,
        webhook_secret: Annotated[
            str | None,
            typer.Option("--webhook-secret", help="The endpoints' signing secret (default: new)."),
        ] = None,
        fail_payments_every: Annotated[
            float,
            typer.Option(
                "--fail-payments-every",
                help="Seconds between payment failures the world makes (each paid one period"
                " later); 0: none.",
            ),
        ] = 0.0,
        stripe_rate: Annotated[
            float,
            typer.Option("--stripe-rate", help="Stripe requests a second before 429 (0: none)."),
        ] = 0.0,
        stripe_endpoint_rate: Annotated[
            float,
            typer.Option(
                "--stripe-endpoint-rate", help="Stripe requests a second per endpoint (0: none)."
            ),
        ] = 0.0,
    ) -> None:
        """Serve a world on 127.0.0.1 until Ctrl-C; prints the env vars to point churn at it.

        ``--stripe-rate 100 --stripe-endpoint-rate 25`` enforce Stripe's documented live
        rate limits (429 past them).

        With ``--webhook URL``, the Stripe stand-in delivers the events it makes to the URL
        as Stripe does (signed, retried with backoff, sometimes twice or out of order) and
        prints ``STRIPE_WEBHOOK_SECRET``."""
        import secrets

        from churn.sandbox.demo import serve_world
        from churn.sandbox.stripe.webhooks import WebhookSender, fail_payment, pay_invoice

        stop = threading.Event()
        loading = threading.Event()
        loading.set()

        def on_term(*_: object) -> None:
            # Loading a world takes minutes at 100,000 accounts: a stop asked for then
            # stops it (the stand-ins started so far are stopped on the way out) instead
            # of being noticed once the world is served.
            stop.set()
            if loading.is_set():
                loading.clear()
                typer.echo("stopped while loading the world", err=True)
                raise typer.Exit(128 + signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
        with contextlib.ExitStack() as stack:
            # Entered inside guarded: the world loads on entering, and a world that cannot
            # be loaded is a one-line error, not a traceback.
            box = guarded(lambda: stack.enter_context(serve_world(
                world, stripe_port=stripe_port, sf_port=salesforce_port,
                stripe_rate=stripe_rate or None,
                stripe_endpoint_rate=stripe_endpoint_rate or None,
            )))  # fmt: skip
            loading.clear()
            # The loaded world lives as long as the server (5.8 GB of objects at 100,000
            # accounts): frozen out of the collector's reach, a full collection no longer
            # walks it. Each one took about 0.9 s there, every third Salesforce query of
            # an incremental run (0.12 s each with the freeze); the Stripe side's backfill
            # was the same either way (797 vs 802 s).
            gc.freeze()
            for k, v in box.env().items():
                print(f"export {k}={v}", flush=True)
            sender = None
            if webhook:
                secret = webhook_secret or "whsec_" + secrets.token_hex(16)
                sender = WebhookSender(seed=0, duplicate_rate=0.05, reorder_rate=0.1)
                for url in webhook:
                    sender.register(url, secret)
                sender.start()
                print(f"export STRIPE_WEBHOOK_SECRET={secret}", flush=True)
            try:
                with contextlib.suppress(KeyboardInterrupt):
                    if sender is None or fail_payments_every <= 0:
                        stop.wait()
                    else:
                        from churn.sandbox.stripe.webhooks import live_subscriptions

                        unpaid: list[str] = []
                        subs = iter(live_subscriptions(box.stripe.world))
                        while not stop.wait(fail_payments_every):
                            if unpaid:
                                sender.send(pay_invoice(box.stripe.world, unpaid.pop(0)))
                            sub = next(subs, None)
                            if sub is not None:
                                invoice, events = fail_payment(box.stripe.world, sub)
                                unpaid.append(invoice["id"])
                                sender.send(events)
            finally:
                if sender is not None:
                    sender.stop()

    @sandbox.command("demo")
    def demo(
        check: Annotated[bool, typer.Option("--check", help="Assert the result (CI).")] = False,
        accounts: Annotated[int, typer.Option("--accounts")] = 2_000,
        seed: Annotated[int, typer.Option("--seed")] = 42,
        data: Annotated[Path, typer.Option("--data", help="Cache and demo warehouse.")] = Path(
            "data"
        ),
    ) -> None:
        """Generate (cached) the default world, serve it, `churn run` twice, summarise."""
        from churn import warehouse
        from churn.job import summary
        from churn.sandbox.demo import run_demo

        started = time.perf_counter()
        with out.status("sandbox demo: generating / serving / running"):
            _box, report = guarded(lambda: run_demo(data, accounts=accounts, seed=seed))
        con = warehouse.connect(data / "demo.duckdb", read_only=True)
        try:
            out.print(summary.render(report.runs[0], con))
        finally:
            con.close()
        out.print(f"second run: {report.runs[1].status}, "
                  f"push {next((s.counts for s in report.runs[1].steps if s.name == 'push'), {})}")  # fmt: skip
        for name, passed, detail in report.checks:
            mark = "[green]ok[/]" if passed else "[red]FAIL[/]"
            out.print(f"{mark} {name}: {detail}")
        for k, v in report.figures.items():
            out.print(f"{k}: {v}")
        out.print(f"demo took {time.perf_counter() - started:.1f}s")
        if check and not report.ok:
            raise typer.Exit(1)
