"""Everything that moves data between the outside world and the warehouse.

``stripe/`` and ``salesforce/`` extract into the warehouse, ``usage`` loads the product
usage feed, ``links`` matches Stripe customers to Salesforce Accounts, ``push/`` writes
the scores back to Salesforce. The only package that imports ``stripe`` or
``simple_salesforce``. May import :mod:`churn.warehouse`, :mod:`churn.signals`,
:mod:`churn.settings` and :mod:`churn.errors`; never :mod:`churn.job`, :mod:`churn.cli`,
:mod:`churn.dashboard` or :mod:`churn.sandbox` (checked by ``lint-imports``).

Subpackages are imported on use, so ``churn --help`` does not load both SDKs.
"""

from __future__ import annotations

__all__ = ["links", "push", "salesforce", "stripe", "usage"]
