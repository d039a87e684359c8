"""The dashboard's entry point (``streamlit run``): five pages, the worklist first.

Started by ``churn dashboard``; every page opens the read copy of ``CHURN_DB`` read-only.
"""

from __future__ import annotations

import streamlit as st

from churn.dashboard.pages import PAGES, VIEWS

st.set_page_config(page_title="Churn signals", page_icon=":material/monitoring:", layout="wide")
page = st.navigation(
    [
        st.Page(VIEWS / name, title=title, url_path=path, icon=icon, default=i == 0)
        for i, (name, title, path, icon) in enumerate(PAGES)
    ]
)
page.run()
