"""`churn score`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState
    from churn.job.scoring import ScoreResult


def _parse_as_of(value: str | None) -> datetime:
    from churn.warehouse import utcnow

    if value is None:
        return utcnow().replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"--as-of {value!r} is not an ISO date or datetime") from None
    if parsed.tzinfo is not None:
        from datetime import UTC

        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def summary(result: ScoreResult, top: int = 10) -> Table:
    """The accounts most at risk, with their top reason."""
    table = Table(title=f"Churn risk as of {result.as_of.isoformat(sep=' ')}")
    for col in ("Account", "Risk", "Payment health", "Known churn", "MRR", "Top reason"):
        table.add_column(col)
    # The worklist's order: expected MRR at risk (the whole MRR for Failed or known churn).
    rows = result.health.sort(
        ["expected_mrr_at_risk_minor", "known_churn", "risk_score"],
        descending=True,
        nulls_last=True,
    ).head(top)
    for r in rows.iter_rows(named=True):
        reasons = r["top_reasons"] or []
        mrr = r["total_mrr_minor"]
        table.add_row(
            r["account_id"], str(r["risk_score"]), r["payment_health"],
            "yes" if r["known_churn"] else "", "" if mrr is None else f"{mrr} {r['reporting_currency']} minor",
            reasons[0] if reasons else "",
        )  # fmt: skip
    return table


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""

    @app.command("score")
    def score_cmd(
        as_of: Annotated[
            str | None,
            typer.Option("--as-of", help="Score as of this UTC date/datetime (default: now)."),
        ] = None,
        top: Annotated[int, typer.Option("--top", help="Accounts to show.")] = 10,
    ) -> None:
        """Score every account and write signal_events, account_health, mrr_movements."""
        from churn.job.scoring import score
        from churn.warehouse import connect

        when = _parse_as_of(as_of)

        def run() -> ScoreResult:
            con = connect(state.settings.db)
            try:
                return score(state.settings, con, as_of=when, incremental=False)
            finally:
                con.close()

        result = guarded(run)
        out = Console()
        out.print(summary(result, top))
        known = result.health.filter(result.health["known_churn"])
        if known.height:
            # scheduled cancellations are certain, not predicted: reported apart
            mrr = known["total_mrr_minor"].sum()
            currency = known["reporting_currency"][0]
            out.print(f"Known churn (scheduled cancellations): {known.height} accounts, "
                      f"{mrr} {currency} minor units of MRR")  # fmt: skip
        out.print(", ".join(f"{k}: {v}" for k, v in result.counts.items()))
        for note in result.notes:
            out.print(f"[yellow]note:[/] {note}")
