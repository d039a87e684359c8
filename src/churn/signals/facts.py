"""Facts every signal, the MRR engine and Payment Health agree on, defined once.

Stripe's subscription statuses (``incomplete``, ``incomplete_expired``, ``trialing``,
``active``, ``past_due``, ``canceled``, ``unpaid``, ``paused``): a subscription is *in
force* while Stripe still holds the customer to it, including ``unpaid`` (the invoice
stays open and new ones are generated, but no payment is attempted). MRR counts fewer:
an ``unpaid`` subscription is revenue Stripe has stopped collecting, so it carries none;
a ``trialing`` one is counted with zero, so its seats are known.
"""

from __future__ import annotations

#: Statuses of a subscription still in force: it can renew, fail, expire a card, cancel.
IN_FORCE_STATUSES: tuple[str, ...] = ("active", "past_due", "trialing", "unpaid")
#: Statuses whose items carry MRR (trialing at zero); a subset of IN_FORCE_STATUSES.
MRR_STATUSES: tuple[str, ...] = ("active", "past_due", "trialing")


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """SQL: ``column IN ('a', 'b', ...)`` over one of the status tuples above."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def last_successful_payment_sql(account_key_sql: str) -> str:
    """SQL: per account, the time of its last succeeded charge known at ``$as_of``.

    ``account_key_sql`` maps ``ch.customer_id`` to the marts' account key (needs
    ``LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = ch.customer_id``, the links as of T).
    """
    return f"""
  SELECT {account_key_sql} AS account_id, max(ch.created_at) AS last_paid
  FROM core_charges ch LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = ch.customer_id
  WHERE ch.status = 'succeeded' AND ch.created_at <= $as_of GROUP BY ALL"""
