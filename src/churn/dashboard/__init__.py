"""The Streamlit dashboard: read-only, on the read copy each run publishes.

``queries.py`` holds every query (pure functions of a read-only connection and filter
values, returning polars frames); ``views/`` one thin script per page; ``app.py`` the
navigation (``churn dashboard`` starts it); ``format.py`` money and record links;
``screenshot.py`` the PNGs ``make screenshot`` checks. Imports settings, signals and
warehouse only (import-linter keeps pipelines, job and sandbox out).
"""

from __future__ import annotations

__all__: list[str] = []
