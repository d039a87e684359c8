"""The dashboard's entry point (``streamlit run``): five pages, the worklist first.

Started by ``churn dashboard``; every page opens the read copy of ``CHURN_DB`` read-only.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).with_name("views")

#: (file, title, url path, icon); the first is the landing page.
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("worklist.py", "Worklist", "worklist", ":material/checklist:"),
    ("account.py", "Account", "account", ":material/business:"),
    ("portfolio.py", "Portfolio", "portfolio", ":material/monitoring:"),
    ("expansion.py", "Expansion leads", "expansion", ":material/trending_up:"),
    ("pipeline.py", "Pipeline health", "pipeline", ":material/lan:"),
)

st.set_page_config(page_title="Churn signals", page_icon=":material/monitoring:", layout="wide")
page = st.navigation(
    [
        st.Page(VIEWS / name, title=title, url_path=path, icon=icon, default=i == 0)
        for i, (name, title, path, icon) in enumerate(PAGES)
    ]
)
page.run()
