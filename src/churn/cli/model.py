"""`churn model`: train, evaluate and show the churn-risk model.

Thin: parse options, call one library function (:mod:`churn.job.model`), print.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from churn.cli.state import guarded

if TYPE_CHECKING:
    from churn.cli.state import CliState
    from churn.signals.model.model import Evaluation

out = Console()

METRICS = (
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
    ("top_decile_lift", "Top-decile lift"),
    ("brier", "Brier"),
    ("base_rate_brier", "Base-rate Brier"),
    ("max_calibration_gap", "Worst decile gap"),
)


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _parse(value: str | None, option: str) -> datetime | None:
    from churn.cli.score import _parse_as_of

    if value is None:
        return None
    try:
        return _parse_as_of(value)
    except typer.BadParameter:
        raise typer.BadParameter(f"{option} {value!r} is not an ISO date or datetime") from None


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("")
    for name in columns:
        table.add_column(name.replace("_", " "), justify="right")
    for key, label in (("rows", "Accounts"), ("churners", "Churned")):
        table.add_row(label, *(_f(int(c.get(key, 0))) for c in columns.values()))
    table.add_row("Base rate", *(_f(c.get("base_rate")) for c in columns.values()))
    for key, label in METRICS:
        table.add_row(label, *(_f(c.get(key)) for c in columns.values()))
    return table


def calibration_rich(ev: Evaluation) -> Table:
    table = Table(title="Calibration by decile of predicted probability")
    for col in ("Decile", "Accounts", "Predicted", "Observed", "Baseline predicted", "Observed"):
        table.add_column(col, justify="right")
    model, base = ev.calibration["model"], ev.calibration["baseline"]
    for i in range(max(len(model), len(base))):
        m = model[i] if i < len(model) else {}
        b = base[i] if i < len(base) else {}
        table.add_row(
            str(i + 1),
            _f(int(m.get("rows", 0))),
            _f(m.get("predicted")),
            _f(m.get("observed")),
            _f(b.get("predicted")),
            _f(b.get("observed")),
        )
    return table


def print_evaluation(ev: Evaluation) -> None:
    out.print(
        f"Model {ev.model.version} ({ev.model.kind}), cutoff {ev.cutoff:%Y-%m-%d %H:%M}, "
        f"labels from the {ev.label_source}: churn in the next "
        f"{ev.model.card.get('horizon_days', 90)} days."
    )
    out.print(metrics_table("Evaluation at the cutoff", ev.overall))
    out.print(calibration_rich(ev))
    seg = Table(title="Per segment (model | baseline)")
    for col in ("Segment", "Accounts", "Churned", "ROC AUC", "PR AUC", "Lift", "Brier"):
        seg.add_column(col, justify="right")
    for name, figs in ev.segments.items():
        m, b = figs["model"], figs["baseline"]
        seg.add_row(
            name,
            _f(int(m["rows"])),
            _f(int(m["churners"])),
            f"{_f(m['roc_auc'])} | {_f(b['roc_auc'])}",
            f"{_f(m['pr_auc'])} | {_f(b['pr_auc'])}",
            f"{_f(m['top_decile_lift'])} | {_f(b['top_decile_lift'])}",
            f"{_f(m['brier'])} | {_f(b['brier'])}",
        )
    out.print(seg)
    out.print(
        f"Known churn (a cancellation scheduled at the cutoff), reported apart: "
        f"{ev.known_churn} accounts, {ev.known_churn_churned} of them churned in the horizon."
    )
    if "hidden_health_auc" in ev.extra:
        out.print(f"Hidden health alone (-health): ROC AUC {_f(ev.extra['hidden_health_auc'])}")


def sampled_folds_note(folds: list[dict[str, Any]]) -> str | None:
    """A sentence when back-test folds were fitted on a sample of their stayers
    (``churn.signals.model.train.sample_stayers``); None when every fold used every row."""
    sampled = [
        f for f in folds if f.get("train_rows_fitted", f.get("train_rows")) != f.get("train_rows")
    ]
    if not sampled:
        return None
    fitted = sorted({int(f["train_rows_fitted"]) for f in sampled})
    whole = [int(f["train_rows"]) for f in sampled]
    return (
        f"{len(sampled)} of {len(folds)} back-test folds were fitted on every churner and a"
        f" sample of the stayers ({', '.join(f'{n:,}' for n in fitted)} of"
        f" {min(whole):,}-{max(whole):,} rows), weighted back to their share; each was"
        " tested on all of its rows. The model in force is fitted on every row."
    )


def print_card(card: dict[str, Any]) -> None:
    window = card.get("data_window") or {}
    out.print(f"[bold]Model {card.get('version')}[/] ({card.get('kind')})")
    out.print(
        f"Trained at {card.get('trained_at')}, cutoff {card.get('cutoff')}, horizon "
        f"{card.get('horizon_days')} days; snapshots {window.get('first_snapshot')} .. "
        f"{window.get('last_snapshot')} ({window.get('snapshots')}, every "
        f"{window.get('every_days')} days); {card.get('rows')} rows, {card.get('accounts')} "
        f"accounts, {card.get('churners')} churners (minimum {card.get('min_churners')})."
    )
    if card.get("why"):
        out.print(str(card["why"]))
    metrics = (card.get("backtest") or {}).get("metrics") or {}
    if metrics:
        out.print(metrics_table("Back-test (mean over time-ordered folds)", metrics))
    note = sampled_folds_note((card.get("backtest") or {}).get("folds") or [])
    if note:
        out.print(note)
    out.print(f"Stored with: {card.get('serialization')}.")
    feats = Table(title="Features")
    feats.add_column("Feature")
    feats.add_column("Meaning")
    for f in card.get("features", []):
        feats.add_row(f["name"], f["description"])
    out.print(feats)


def register(app: typer.Typer, state: CliState) -> None:
    """Add this module's commands to the churn app."""
    model = typer.Typer(help="The churn-risk model: train, evaluate, show.", no_args_is_help=True)
    app.add_typer(model, name="model")

    @model.command("train")
    def train_cmd(
        cutoff: Annotated[
            str | None,
            typer.Option(
                "--cutoff", help="Train with labels known by this UTC date (default now)."
            ),
        ] = None,
        no_promote: Annotated[
            bool, typer.Option("--no-promote", help="Store the version without promoting it.")
        ] = False,
    ) -> None:
        """Train on the warehouse's history, store the version, promote it if no worse."""
        from churn.job.model import train_and_store
        from churn.warehouse import connect, utcnow

        now = utcnow().replace(microsecond=0)
        when = _parse(cutoff, "--cutoff") or now

        def run() -> Any:
            con = connect(state.settings.db)
            try:
                return train_and_store(
                    state.settings, con, when, trained_at=now, promote_if_better=not no_promote
                )
            finally:
                con.close()

        result = guarded(run)
        print_card(result.card)
        out.print(("Promoted: " if result.promoted else "Not promoted: ") + result.why)

    @model.command("evaluate")
    def evaluate_cmd(
        truth: Annotated[
            Path | None,
            typer.Option("--truth", help="A world's truth.csv: judge against who churned."),
        ] = None,
        as_of: Annotated[
            str | None,
            typer.Option(
                "--as-of", help="Cutoff (default: the world's now, else the data's end, - horizon)."
            ),
        ] = None,
    ) -> None:
        """Train at a cutoff on earlier snapshots only, score at it, compare with churn after it."""
        from churn.job.model import evaluate_at, latest_data_at, read_truth
        from churn.warehouse import connect

        def run() -> Evaluation:
            settings = state.settings
            horizon = timedelta(days=settings.signals.churn_horizon_days)
            frame, world_now = read_truth(truth) if truth is not None else (None, None)
            con = connect(settings.db, read_only=True)
            try:
                cutoff = _parse(as_of, "--as-of")
                if cutoff is None:
                    end = world_now or latest_data_at(con)
                    if end is None:
                        from churn.errors import ScoringError

                        raise ScoringError("the warehouse holds no history to evaluate on")
                    cutoff = end - horizon
                return evaluate_at(settings, con, cutoff, frame)
            finally:
                con.close()

        print_evaluation(guarded(run))

    @model.command("show")
    def show_cmd() -> None:
        """The model card of the model in force."""
        from churn.job.model import promoted_card
        from churn.warehouse import connect

        def run() -> dict[str, Any] | None:
            con = connect(state.settings.db, read_only=True)
            try:
                return promoted_card(con)
            finally:
                con.close()

        card = guarded(run)
        if card is None:
            out.print("No model in force: the rule-based risk score is used.")
            return
        print_card(card)
