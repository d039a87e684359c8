"""`churn links`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from churn.cli.state import CliState


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("links")
    def links_cmd() -> None:
        """Link Stripe customers to Salesforce Accounts and show how."""
        from rich.console import Console
        from rich.table import Table

        from churn.cli.state import guarded
        from churn.pipelines.links import link_customers
        from churn.warehouse import connect

        def go() -> None:
            con = connect(state.settings.db)
            try:
                report = link_customers(state.settings, con)
            finally:
                con.close()
            out = Console()
            summary = Table(title="Customer → Account links")
            summary.add_column("method")
            summary.add_column("customers", justify="right")
            for method, n in report.counts.items():
                summary.add_row(method, str(n))
            out.print(summary)
            for title, method in (("Unmatched", "unmatched"), ("Conflicts", "conflict")):
                rows = report.links.filter(report.links["method"] == method)
                if rows.height:
                    table = Table(title=title)
                    table.add_column("customer")
                    table.add_column("detail")
                    for row in rows.iter_rows(named=True):
                        table.add_row(row["customer_id"], row["detail"] or "")
                    out.print(table)
            if report.shared_accounts.height:
                table = Table(title="Accounts with several customers")
                table.add_column("account")
                table.add_column("customers")
                for row in report.shared_accounts.iter_rows(named=True):
                    table.add_row(row["account_id"], ", ".join(row["customers"]))
                out.print(table)

        guarded(go)
