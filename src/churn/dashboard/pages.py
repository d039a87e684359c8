"""The dashboard's pages: (script in ``views/``, title, url path, icon), the worklist first."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PAGES", "VIEWS"]

VIEWS = Path(__file__).with_name("views")

PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("worklist.py", "Worklist", "worklist", ":material/checklist:"),
    ("account.py", "Account", "account", ":material/business:"),
    ("portfolio.py", "Portfolio", "portfolio", ":material/monitoring:"),
    ("expansion.py", "Expansion leads", "expansion", ":material/trending_up:"),
    ("pipeline.py", "Pipeline health", "pipeline", ":material/lan:"),
)
