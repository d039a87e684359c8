"""The seeded synthetic world and the loopback stand-ins for Stripe's and Salesforce's APIs.

``world`` generates a company (its Stripe objects, Salesforce records and usage feed);
``stripe/`` and ``salesforce/`` serve it over HTTP; ``demo`` runs the job on it. Used
by the ``churn sandbox`` command, the tests and the benchmarks only: nothing in
:mod:`churn.pipelines`, :mod:`churn.signals`, :mod:`churn.job` or :mod:`churn.warehouse`
imports it.
"""

from __future__ import annotations

__all__ = ["demo", "salesforce", "stripe", "world"]
