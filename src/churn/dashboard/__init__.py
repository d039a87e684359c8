"""The Streamlit dashboard: reads marts through one query module, never writes."""

from __future__ import annotations

__all__: list[str] = []
