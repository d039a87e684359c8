"""Payment failure: an invoice open at ``as_of`` with at least one failed attempt.

State at ``as_of`` comes from timestamps (finalized, paid, voided, marked uncollectible)
and the failed charges made by then, so a past date re-scores as it stood. The episode is
the invoice; it resolves when the invoice is paid, voided or written off.

Decline classes: ``hard`` (the card must not be retried: lost, stolen, fraud...),
``customer_action`` (the customer must fix something: expired card, wrong CVC,
authentication...), ``soft`` (anything else, e.g. insufficient funds: retries may work).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.mrr import account_key
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "payment_failure"

HARD = (
    "fraudulent", "lost_card", "stolen_card", "pickup_card", "restricted_card",
    "merchant_blacklist", "security_violation", "revocation_of_all_authorizations",
    "revocation_of_authorization", "stop_payment_order", "invalid_account", "new_account_information_available",
)  # fmt: skip
CUSTOMER_ACTION = (
    "expired_card", "incorrect_cvc", "incorrect_number", "incorrect_zip", "invalid_cvc",
    "invalid_expiry_month", "invalid_expiry_year", "invalid_number", "authentication_required",
    "card_not_supported", "currency_not_supported", "card_declined_authentication_required",
)  # fmt: skip


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


SQL = f"""
WITH inv AS (
  SELECT * FROM core_invoices
  WHERE NOT is_deleted
    AND COALESCE(finalized_at, created_at) <= $as_of
    AND NOT COALESCE(paid_at <= $as_of, FALSE)
    AND NOT COALESCE(voided_at <= $as_of, FALSE)
    AND NOT COALESCE(marked_uncollectible_at <= $as_of, FALSE)
    AND status <> 'draft'
    -- resolved today without a recorded time: we cannot tell when, so never alarm on it
    AND NOT (status = 'paid' AND paid_at IS NULL)
    AND NOT (status = 'void' AND voided_at IS NULL)
    AND NOT (status = 'uncollectible' AND marked_uncollectible_at IS NULL)
),
linked AS (
  SELECT i.invoice_id, ch.* EXCLUDE (invoice_id)
  FROM inv i JOIN core_charges ch
    ON (ch.invoice_id = i.invoice_id OR (ch.payment_intent_id IS NOT NULL
                                          AND ch.payment_intent_id = i.payment_intent_id))
),
fails AS (
  SELECT invoice_id, count(*) FILTER (WHERE status = 'failed' AND created_at <= $as_of)
           AS failed_attempts,
         arg_max(COALESCE(decline_code, failure_code), created_at)
           FILTER (WHERE status = 'failed' AND created_at <= $as_of) AS decline_code,
         max(created_at) FILTER (WHERE status = 'failed' AND created_at <= $as_of)
           AS last_failed_at
  FROM linked GROUP BY invoice_id
),
open_failed AS (
  -- without any charge data for the invoice, fall back to today's attempt_count
  SELECT i.*, COALESCE(f.failed_attempts, i.attempt_count) AS attempts, f.decline_code,
         f.last_failed_at
  FROM inv i LEFT JOIN fails f USING (invoice_id)
  WHERE COALESCE(f.failed_attempts, 0) > 0
     OR (i.status = 'open' AND COALESCE(i.attempt_count, 0) > 0 AND f.invoice_id IS NULL
         AND i.attempted)
),
classed AS (
  SELECT o.*, {account_key("o.customer_id")} AS account_id,
    CASE WHEN o.decline_code IN ({_in(HARD)}) THEN 'hard'
         WHEN o.decline_code IN ({_in(CUSTOMER_ACTION)}) THEN 'customer_action'
         ELSE 'soft' END AS decline_class,
    COALESCE(o.amount_remaining, o.amount_due - COALESCE(o.amount_paid, 0)) AS amount_at_risk
  FROM open_failed o LEFT JOIN core_account_links l ON l.customer_id = o.customer_id
)
SELECT account_id,
  least(1.0, 0.5 + 0.1 * (least(attempts, 4) - 1)
        + CASE decline_class WHEN 'hard' THEN 0.3 WHEN 'customer_action' THEN 0.2 ELSE 0 END)
    AS score,
  'Invoice ' || invoice_id || ' is unpaid after ' || attempts || ' failed attempt'
    || CASE WHEN attempts = 1 THEN '' ELSE 's' END
    || ' (' || CASE decline_class WHEN 'hard' THEN 'hard decline'
                WHEN 'customer_action' THEN 'the customer must update their card'
                ELSE 'soft decline, retries may succeed' END
    || COALESCE(': ' || decline_code, '') || ').' AS reason,
  json_object('invoice_id', invoice_id, 'attempts', attempts, 'dunning_stage',
    CASE WHEN attempts >= 4 THEN 'final' ELSE 'retry_' || attempts END,
    'next_retry_at', CASE WHEN next_payment_attempt > $as_of THEN next_payment_attempt END,
    'decline_code', decline_code, 'decline_class', decline_class,
    'amount_at_risk_minor', amount_at_risk, 'currency', currency,
    'subscription_id', subscription_id, 'customer_id', customer_id)::VARCHAR AS evidence,
  'payment_failure:' || invoice_id AS episode_key
FROM classed
"""


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    return finish(tables.frame(SQL, {"as_of": as_of}), NAME, as_of)
