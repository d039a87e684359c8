"""The ``churn`` command: thin. Each command parses options and calls one library function.

Commands live one module each beside this one (``churn.cli.<name>``); every module
exposes ``register(app, state)`` and is listed in :data:`COMMAND_MODULES`. Shared state and
the error guard are in :mod:`churn.cli.state`. The top of the import layers: it may import
every package, including :mod:`churn.sandbox` (for ``churn sandbox``); nothing imports it.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from churn.cli.state import CliState

__all__ = ["COMMAND_MODULES", "app", "main"]

COMMAND_MODULES: tuple[str, ...] = (
    "extract",
    "links",
    "score",
    "push",
    "run",
    "sandbox",
    "model",
    "dashboard",
    "webhook",
)

state = CliState()
app = typer.Typer(
    name="churn",
    help="Churn signals from Stripe and Salesforce, scored in DuckDB, pushed to Salesforce.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (or CHURN_CONFIG).")
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="DuckDB file (overrides CHURN_DB).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG.")] = False,
) -> None:
    state.reset(config, db)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for _name in COMMAND_MODULES:
    importlib.import_module(f"churn.cli.{_name}").register(app, state)


def main() -> None:
    app(prog_name="churn")


if __name__ == "__main__":  # pragma: no cover
    main()
