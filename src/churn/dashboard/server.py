"""Start the dashboard: ``streamlit run`` on the app, bound to loopback by default.

Used by ``churn dashboard`` (foreground) and the screenshot script (background). The app
reads ``CHURN_DB``'s read copy; the server is told not to collect usage statistics and
not to open a browser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["APP", "serve", "streamlit_command", "streamlit_env"]

APP = Path(__file__).with_name("app.py")


def streamlit_command(address: str = "127.0.0.1", port: int = 8501) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--theme.base", "light",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def streamlit_env(db: Path) -> dict[str, str]:
    """The environment for the server: this one, with ``CHURN_DB`` made absolute."""
    return {**os.environ, "CHURN_DB": str(db.resolve())}


def serve(db: Path, address: str = "127.0.0.1", port: int = 8501) -> NoReturn:
    """Become the server (exec): Ctrl-C and SIGTERM reach Streamlit itself, and no child
    outlives the command."""
    command = streamlit_command(address, port)
    os.execve(command[0], command, streamlit_env(db))
