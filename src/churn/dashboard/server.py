"""Start the dashboard: ``streamlit run`` on the app, bound to loopback by default.

Used by ``churn dashboard`` (foreground) and the screenshot script (background). The app
reads ``CHURN_DB``'s read copy; the server is told not to collect usage statistics and
not to open a browser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["APP", "streamlit_command", "streamlit_env"]

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


def serve(db: Path, address: str = "127.0.0.1", port: int = 8501) -> int:
    """Run the server in the foreground until it stops; returns its exit code."""
    return subprocess.call(streamlit_command(address, port), env=streamlit_env(db))
