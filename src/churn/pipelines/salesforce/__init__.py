"""The Salesforce extract: SOQL (REST or Bulk 2.0) reads through ``simple-salesforce``.

``client`` logs in and meters the API budget; ``extract`` reads each object
incrementally by ``SystemModstamp``; ``reconcile`` finds deletions the incremental read
cannot see.
"""

from __future__ import annotations

from churn.pipelines.salesforce.client import BudgetedSession, make_salesforce
from churn.pipelines.salesforce.extract import SalesforceExtractResult, extract_salesforce
from churn.pipelines.salesforce.reconcile import reconcile_deletions

__all__ = [
    "BudgetedSession",
    "SalesforceExtractResult",
    "extract_salesforce",
    "make_salesforce",
    "reconcile_deletions",
]
