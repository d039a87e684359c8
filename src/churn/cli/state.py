"""One module per ``churn`` subcommand (or group); each exposes ``register(app, state)``.

Shared by every command: :class:`CliState` (the top-level options and the settings they
load, once) and :func:`guarded` (a :class:`~churn.errors.ChurnError` becomes one red line
and its exit code, never a traceback).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from churn.errors import ChurnError
from churn.settings import Settings, load_settings

__all__ = ["CliState", "console", "guarded"]

console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long
T = TypeVar("T")


class CliState:
    """What the top-level options decided, handed to every command."""

    def __init__(self) -> None:
        self.config_path: Path | None = None
        self.db: Path | None = None
        self._settings: Settings | None = None

    def reset(self, config_path: Path | None, db: Path | None) -> None:
        self.config_path, self.db, self._settings = config_path, db, None

    @property
    def settings(self) -> Settings:
        """Loaded on first use, so ``--help`` works with a broken environment."""
        if self._settings is None:

            def load() -> Settings:
                settings = load_settings(config_path=self.config_path)
                if self.db is not None:
                    settings = settings.with_overrides(db=self.db)
                return settings

            # A settings error is one line and exit 2 in every command, never a traceback.
            self._settings = guarded(load)
        return self._settings


def guarded(fn: Callable[[], T]) -> T:
    """Run a library call; a ChurnError becomes a one-line message and its exit code."""
    try:
        return fn()
    except ChurnError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(exc.exit_code) from None
