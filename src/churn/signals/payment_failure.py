"""Payment failure: an invoice open at ``as_of`` with at least one failed attempt.

State at ``as_of`` comes from timestamps (finalized, paid, voided, marked uncollectible)
and the failed charges made by then, so a past date re-scores as it stood. The episode is
the invoice; it resolves when the invoice is paid, voided or written off.

**Charges meet invoices in both API shapes.** Before 2025-03-31.basil a charge names its
``invoice`` and an invoice its ``charge`` and ``payment_intent`` (a PaymentIntent its
``invoice``); since basil none of these exist and an Invoice Payment
(``/v1/invoice_payments``) joins the invoice to its payment: a PaymentIntent (each attempt
is a charge of it) or, for a charge without one, the charge. Every link found counts.

**Attempts as of ``as_of``** (never today's ``attempt_count`` for a past date when anything
else is known):

1. the failed charges linked to the invoice created at or before ``as_of``, when the
   warehouse holds any charge of the invoice;
2. else the ``invoice.payment_failed`` events at or before ``as_of``
   (``history_invoice_events``: the highest ``attempt_count`` they carried, at least their
   number);
3. else today's ``attempt_count``, only when ``as_of`` is at or after the newest invoice or
   charge in the warehouse (scoring "now": today's payload is what was known then). For a
   past ``as_of`` with neither charges nor events nothing is claimed: whether those attempts
   had happened by then cannot be told, and a guess would leak the future.

The next retry is the ``next_payment_attempt`` the latest invoice event at or before
``as_of`` carried, else today's when it lies at or after ``as_of`` (a pending retry seen today
was pending throughout the dunning before it). A retry due exactly at ``as_of`` is upcoming:
``next_payment_attempt`` is when "payment will next be attempted", so at that instant the
attempt is still to come (``next_retry_at`` names it; the push's ladder reads it).

**A retry due but not seen** (``retry_due_unseen_at``): the retry Stripe had scheduled fell
before ``as_of`` and no failed attempt at or after it is known by then: its outcome is
outstanding (Stripe may already have recovered the payment), so the push's ladder does not
climb to outreach on it.

**When the dunning began** (``first_failed_at``): the first failed charge of the invoice by
``as_of``, else the first ``invoice.payment_failed`` event by then; the push's escalation
clock starts there, not at its own first push.

**Decline classes**, from the last failed charge by ``as_of`` (Stripe, Declines; the Charge's
``outcome``; Smart Retries "doesn't retry payments if ... the issuer returned a hard decline
code"): ``hard`` (the card must not be retried: lost, stolen, fraud..., the decline code or
the advice ``do_not_try_again`` on the charge's ``outcome.advice_code`` or the
PaymentIntent's ``last_payment_error.advice_code`` for that charge, or a payment Radar
blocked, ``outcome.type`` ``blocked``); ``customer_action`` (the customer must fix
something: expired card, wrong CVC, authentication..., or the advice
``confirm_card_data``); ``soft`` (anything else, e.g. insufficient funds or
``try_again_later``: retries may work). The charged card (the charge's ``payment_method``)
is named in the evidence: the decline is that card's, not the customer's default.

**The final retry** is the account's retry policy's last try, ``payment_retry_attempts``
(Stripe's recommended Smart Retries default: 8 tries within 2 weeks): ``dunning_stage``
``final`` and the top of the score ramp, 0.5 at the first failure to 0.8 at the last.

**Stale invoices** are not active failures: "By default, upon subscription cancellation,
Stripe stops automatic collection of all finalized invoices for the customer" (Cancel a
subscription). An open invoice whose subscription had ended by ``as_of`` (its history at
``as_of``), or whose customer is deleted (known only today, so only when ``as_of`` is at the
latest data), with no retry pending at ``as_of``, is uncollected debt: no row, so an account
is not ``Failed`` and given Tasks for years over an invoice nobody will collect;
:func:`uncollected` lists them, and the scoring step counts and notes them.
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
    "revocation_of_authorization", "stop_payment_order", "invalid_account",
    "new_account_information_available", "do_not_try_again", "highest_risk_level",
)  # fmt: skip
CUSTOMER_ACTION = (
    "expired_card", "incorrect_cvc", "incorrect_number", "incorrect_zip", "invalid_cvc",
    "invalid_expiry_month", "invalid_expiry_year", "invalid_number", "authentication_required",
    "card_not_supported", "currency_not_supported", "card_declined_authentication_required",
)  # fmt: skip
#: ``outcome.advice_code`` / ``last_payment_error.advice_code`` values (Stripe API).
ADVICE_HARD = ("do_not_try_again",)
ADVICE_CUSTOMER = ("confirm_card_data",)
#: Subscription statuses after which Stripe collects nothing automatically.
ENDED_STATUSES = ("canceled", "incomplete_expired")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


#: ``history_invoice_events`` (migration 060's view, the same columns and expressions) for
#: the invoices of ``inv`` and the events created by ``$as_of`` only: the events are narrowed
#: before their payloads are parsed. Through the view DuckDB parses every invoice event's
#: payload first and joins after (12,416 events for 58 open invoices at 10,000 accounts:
#: 0.1-0.3 s instead of 0.03 s). ``tests/test_payment_failure_events.py`` holds it equal to
#: the view.
INVOICE_EVENTS = """
  SELECT e.object_id AS invoice_id,
         e.type AS event_type,
         e.created AS created_at,
         TRY_CAST(e.payload->>'$.data.object.attempt_count' AS INTEGER) AS attempt_count,
         stripe_ts(e.payload->'$.data.object.next_payment_attempt') AS next_payment_attempt,
         e.payload->>'$.data.object.status' AS status
  FROM raw_stripe_event e SEMI JOIN inv ON inv.invoice_id = e.object_id
  WHERE e.object_type = 'invoice' AND e.object_id IS NOT NULL AND e.created <= $as_of"""

#: Every open invoice with a failed attempt by ``$as_of``, judged ``stale`` or not.
JUDGED = f"""
WITH horizon AS (
  -- the newest thing the warehouse knows: as_of at or after it is "now"
  SELECT greatest(coalesce((SELECT max(created_at) FROM core_invoices), '-infinity'::TIMESTAMP),
                  coalesce((SELECT max(created_at) FROM core_charges), '-infinity'::TIMESTAMP))
           AS t
),
inv AS MATERIALIZED (
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
    {{only}}
),
links AS (
  -- pre-basil: charge.invoice, invoice.charge, invoice.payment_intent, payment_intent.invoice
  SELECT i.invoice_id, ch.charge_id FROM inv i JOIN core_charges ch ON ch.invoice_id = i.invoice_id
  UNION
  SELECT i.invoice_id, i.charge_id FROM inv i WHERE i.charge_id IS NOT NULL
  UNION
  SELECT i.invoice_id, ch.charge_id FROM inv i
    JOIN core_charges ch ON ch.payment_intent_id = i.payment_intent_id
  UNION
  SELECT i.invoice_id, ch.charge_id FROM inv i
    JOIN core_payment_intents pi ON pi.invoice_id = i.invoice_id
    JOIN core_charges ch ON ch.payment_intent_id = pi.payment_intent_id
  UNION
  -- current: invoice_payment -> payment_intent -> its charges, or -> a charge
  SELECT i.invoice_id, ch.charge_id FROM inv i
    JOIN core_invoice_payments ip ON ip.invoice_id = i.invoice_id
    JOIN core_charges ch ON ch.payment_intent_id = ip.payment_intent_id
  UNION
  SELECT i.invoice_id, ip.charge_id FROM inv i
    JOIN core_invoice_payments ip ON ip.invoice_id = i.invoice_id
  WHERE ip.charge_id IS NOT NULL
),
linked AS (
  SELECT k.invoice_id, ch.* EXCLUDE (invoice_id)
  FROM links k JOIN core_charges ch ON ch.charge_id = k.charge_id
),
fails AS (
  SELECT invoice_id,
    count(*) FILTER (WHERE status = 'failed' AND created_at <= $as_of) AS failed_attempts,
    arg_max(charge_id, (created_at, charge_id)) FILTER (WHERE status = 'failed' AND created_at <= $as_of)
      AS last_charge_id,
    max(created_at) FILTER (WHERE status = 'failed' AND created_at <= $as_of) AS last_failed_at,
    min(created_at) FILTER (WHERE status = 'failed' AND created_at <= $as_of) AS first_failed_at
  FROM linked GROUP BY invoice_id
),
last_fail AS (
  SELECT f.*, ch.decline_code, ch.failure_code, ch.outcome_type, ch.network_status,
    ch.payment_method_id, ch.card_exp_month, ch.card_exp_year,
    -- the PaymentIntent's last error counts only when it is this charge's (point in time)
    COALESCE(ch.advice_code, pi.last_advice_code) AS advice_code
  FROM fails f JOIN core_charges ch ON ch.charge_id = f.last_charge_id
  LEFT JOIN core_payment_intents pi
    ON pi.payment_intent_id = ch.payment_intent_id AND pi.last_error_charge_id = ch.charge_id
),
inv_events AS (
  {INVOICE_EVENTS}
),
events AS (
  SELECT invoice_id,
    greatest(count(*) FILTER (WHERE event_type = 'invoice.payment_failed'),
             COALESCE(max(attempt_count) FILTER (WHERE event_type = 'invoice.payment_failed'), 0))
      AS failed_events,
    -- two events of one second: the later retry, not whichever thread came last
    arg_max(next_payment_attempt, (created_at, next_payment_attempt)) AS next_attempt_then,
    min(created_at) FILTER (WHERE event_type = 'invoice.payment_failed') AS first_failed_event_at,
    count(*) AS n_events
  FROM inv_events GROUP BY invoice_id
),
counted AS (
  SELECT i.*, lf.last_failed_at, lf.decline_code, lf.failure_code, lf.outcome_type,
    lf.network_status, lf.payment_method_id, lf.card_exp_month, lf.card_exp_year,
    lf.advice_code,
    -- when the dunning began: the first failed charge, else the first payment_failed event
    COALESCE(f.first_failed_at, e.first_failed_event_at) AS first_failed_at,
    CASE WHEN f.invoice_id IS NOT NULL THEN f.failed_attempts
         WHEN COALESCE(e.failed_events, 0) > 0 THEN e.failed_events
         WHEN hz.at_latest AND i.attempted THEN COALESCE(i.attempt_count, 0)
         ELSE 0 END AS attempts,
    CASE WHEN e.n_events > 0 THEN e.next_attempt_then
         WHEN i.next_payment_attempt >= $as_of THEN i.next_payment_attempt END AS next_attempt,
    -- the retry Stripe had scheduled as of then, due or not
    CASE WHEN e.n_events > 0 THEN e.next_attempt_then ELSE i.next_payment_attempt END
      AS scheduled_attempt,
    hz.at_latest
  FROM inv i CROSS JOIN (SELECT $as_of >= t AS at_latest FROM horizon) hz
  LEFT JOIN fails f USING (invoice_id)
  LEFT JOIN last_fail lf USING (invoice_id)
  LEFT JOIN events e USING (invoice_id)
),
failed AS MATERIALIZED (
  -- a few hundred rows: the joins below then touch only these
  SELECT * FROM counted WHERE attempts > 0
),
judged AS (
  SELECT c.*,
    -- stale: collection stopped (subscription ended, customer deleted), no retry pending
    NOT COALESCE(c.next_attempt >= $as_of, FALSE)
      AND (COALESCE(h.status IN ({_in(ENDED_STATUSES)}), FALSE)
           OR COALESCE(h.ended_at <= $as_of, FALSE)
           OR (COALESCE(cu.is_deleted, FALSE) AND c.at_latest)) AS stale,
    COALESCE(c.amount_remaining, c.amount_due - COALESCE(c.amount_paid, 0)) AS amount_at_risk
  FROM failed c
  LEFT JOIN history_subscriptions h
    ON h.subscription_id = c.subscription_id AND h.valid_from <= $as_of
   AND (h.valid_to IS NULL OR h.valid_to > $as_of)
  LEFT JOIN core_customers cu ON cu.customer_id = c.customer_id
)"""

#: Narrows ``inv`` to invoices that can be stale (subscription ended or customer deleted
#: by then), so listing the stale ones costs a fraction of scoring.
_MAYBE_STALE = f"""AND (
      subscription_id IN (SELECT subscription_id FROM history_subscriptions
                          WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of)
                            AND (status IN ({_in(ENDED_STATUSES)}) OR ended_at <= $as_of))
      OR customer_id IN (SELECT customer_id FROM core_customers WHERE is_deleted))"""

SQL = f"""{JUDGED.format(only="")},
open_failed AS (SELECT * FROM judged WHERE NOT stale),
classed AS (
  SELECT o.*, {account_key("o.customer_id")} AS account_id,
    CASE WHEN o.decline_code IN ({_in(HARD)}) OR o.failure_code IN ({_in(HARD)})
              OR o.advice_code IN ({_in(ADVICE_HARD)}) OR o.outcome_type = 'blocked'
           THEN 'hard'
         WHEN o.decline_code IN ({_in(CUSTOMER_ACTION)})
              OR o.failure_code IN ({_in(CUSTOMER_ACTION)})
              OR o.advice_code IN ({_in(ADVICE_CUSTOMER)})
           THEN 'customer_action'
         ELSE 'soft' END AS decline_class
  FROM open_failed o LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = o.customer_id
)
SELECT account_id,
  least(1.0, 0.5 + 0.3 * (least(attempts, $final) - 1) / greatest($final - 1, 1)
        + CASE decline_class WHEN 'hard' THEN 0.3 WHEN 'customer_action' THEN 0.2 ELSE 0 END)
    AS score,
  'Invoice ' || invoice_id || ' is unpaid after ' || attempts || ' failed attempt'
    || CASE WHEN attempts = 1 THEN '' ELSE 's' END
    || ' (' || CASE decline_class WHEN 'hard' THEN 'hard decline, do not retry the card'
                WHEN 'customer_action' THEN 'the customer must update their card'
                ELSE 'soft decline, retries may succeed' END
    || COALESCE(': ' || COALESCE(decline_code, failure_code), '') || ').' AS reason,
  json_object('invoice_id', invoice_id, 'attempts', attempts, 'dunning_stage',
    CASE WHEN attempts >= $final THEN 'final' ELSE 'retry_' || attempts END,
    'final_attempt', $final,
    'next_retry_at', CASE WHEN next_attempt >= $as_of THEN next_attempt END,
    'decline_code', COALESCE(decline_code, failure_code), 'decline_class', decline_class,
    'advice_code', advice_code, 'outcome_type', outcome_type,
    'network_status', network_status,
    'payment_method_id', payment_method_id, 'card_exp_month', card_exp_month,
    'card_exp_year', card_exp_year, 'last_failed_at', last_failed_at,
    'first_failed_at', first_failed_at,
    'retry_due_unseen_at', CASE WHEN scheduled_attempt < $as_of
      AND (last_failed_at IS NULL OR last_failed_at < scheduled_attempt)
      THEN scheduled_attempt END,
    'amount_at_risk_minor', amount_at_risk, 'currency', currency,
    'subscription_id', subscription_id, 'customer_id', customer_id)::VARCHAR AS evidence,
  'payment_failure:' || invoice_id AS episode_key
FROM classed
"""


UNCOLLECTED = f"""{JUDGED.format(only=_MAYBE_STALE)}
SELECT invoice_id, customer_id, subscription_id, amount_at_risk AS amount_minor, currency
FROM judged WHERE stale"""


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    params = {"as_of": as_of, "final": settings.payment_retry_attempts}
    return finish(tables.frame(SQL, params), NAME, as_of)


def uncollected(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """The stale invoices :func:`score` leaves out: open with a failed attempt at ``as_of``
    but no longer collected (subscription ended, customer deleted, no retry pending).
    Uncollected debt, for the run's counts and notes: invoice, customer, subscription,
    amount (minor units) and currency."""
    return tables.frame(UNCOLLECTED, {"as_of": as_of})
