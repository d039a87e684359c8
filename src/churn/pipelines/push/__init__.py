"""The push: Account health fields and Tasks back to Salesforce.

``values`` turns an ``account_health`` row into the owned fields' values, by their specs
(:data:`churn.fields.ACCOUNT_FIELDS`); ``plan`` is pure (warehouse rows and an ``as_of``
in, a :class:`Plan` of changes out);
``apply`` sends a plan through sObject Collections or Bulk 2.0 and records what
Salesforce answered; ``sync`` reads the warehouse, plans, applies and stores the outcome.
"""

from __future__ import annotations

from churn.pipelines.push.plan import Plan, make_plan
from churn.pipelines.push.sync import PushResult, build_plan, push

__all__ = ["Plan", "PushResult", "build_plan", "make_plan", "push"]
