"""The ``churn`` command: thin. Each command parses options and calls one library function.

Commands live one module each beside this one (``churn.cli.<name>``); every module
exposes ``register(app, state)`` and is listed in :data:`COMMAND_MODULES`. Shared state and
the error guard are in :mod:`churn.cli.state`. The top of the import layers: it may import
every package, including :mod:`churn.sandbox` (for ``churn sandbox``); nothing imports it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperOption

from churn.cli.logs import FORMATS
from churn.cli.logs import configure as configure_logs
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
    "export",
    "doctor",
    "backup",
    "status",
    "config",
    "webhook",
)

_display_type = TyperOption.display_type_rich


def _flag_without_placeholder(self: TyperOption, ctx: typer.Context) -> str | None:
    """A flag takes no value: its help shows no ``<bool>`` placeholder (typer's rich help
    shows every option's type, flags included, and offers no switch for it)."""
    if self.is_flag:
        return None
    return _display_type(self, ctx)


TyperOption.display_type_rich = _flag_without_placeholder  # type: ignore[method-assign,assignment]


def _version(value: bool) -> None:
    if value:
        from churn import __version__

        typer.echo(f"churn {__version__}")
        raise typer.Exit()


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
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="CHURN_LOG_FORMAT",
            help="Log lines on stderr: text (timestamped) or json (one object per line).",
            show_default=True,
        ),
    ] = "text",
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            envvar="CHURN_LOG_LEVEL",
            help="DEBUG, INFO, WARNING or ERROR (default: INFO with json, else WARNING).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    state.reset(config, db)
    if log_format not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--log-format")
    level = "DEBUG" if verbose else (log_level or ("INFO" if log_format == "json" else "WARNING"))
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise typer.BadParameter("DEBUG, INFO, WARNING or ERROR", param_hint="--log-level")
    configure_logs(log_format, level.upper())


for _name in COMMAND_MODULES:
    importlib.import_module(f"churn.cli.{_name}").register(app, state)


def main() -> None:
    app(prog_name="churn")


if __name__ == "__main__":  # pragma: no cover
    main()
