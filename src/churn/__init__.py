"""Churn signals: Stripe billing and Salesforce, scored in DuckDB, pushed back to Salesforce."""

from __future__ import annotations

__version__ = "0.1.0"
