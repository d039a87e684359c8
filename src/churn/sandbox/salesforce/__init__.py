"""A loopback stand-in for a Salesforce org: REST, SOQL, sObject Collections, Bulk 2.0."""

from __future__ import annotations

from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server

__all__ = ["RunningSalesforce", "start_salesforce_server"]
