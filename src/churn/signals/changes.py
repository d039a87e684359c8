"""Plan changes for the Account timeline, pure: history tables, ``as_of`` and a window in,
one row per change out.

The push logs each change as a completed Task on the Account
(:mod:`churn.pipelines.push.timeline`); this module only says what changed, when, and
before and after in words. Kinds (:data:`KINDS`):

- ``upgrade`` / ``downgrade``: a subscription carries more / less MRR than just before
  (a price, a quantity, a coupon, an interval), in its own currency, both sides non-zero
  (a trial starting to pay, a pause, a new or an ended subscription are not plan changes);
- ``plan_change``: the plans changed and MRR did not (or is unknown, or zero);
- ``seat_change``: only licensed seats moved (MRR the same, unknown, or zero: a trial);
- ``cancellation_scheduled`` / ``cancellation_withdrawn``: a version of the subscription
  sets (or drops) ``cancel_at_period_end`` or ``cancel_at`` while it is still in force;
- ``payment_recovered``: an invoice paid after at least one failed attempt.

**Instants.** A subscription's changes are its own history boundaries (items, discounts),
as the downgrade signal reads them (a version of the subscription alone, a renewal or a
status, moves no price and no seat), and MRR and seats are computed around
each (``mrr.item_mrr_sql`` with per-subscription points: the MRR engine's rules, one
place). **Point in time**: only instants in ``(as_of - window, as_of]``, the links as of
``as_of``, a payment known paid by ``as_of`` (its failed attempts counted up to the
payment). **Keys** name the change, not its reading: ``timeline:change:<sub>:<instant>``
(one plan change per subscription and instant, whichever kind it reads as),
``timeline:cancel:<sub>:<instant>``, ``timeline:recovered:<invoice>``; a rerun, or a
later run whose window still holds the change, derives the same key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import IN_FORCE_STATUSES, sql_in
from churn.signals.money import display
from churn.signals.mrr import (
    account_key,
    item_change_instants,
    mrr_around_changes,
    subscription_owner,
)
from churn.signals.tables import Tables

#: Every kind of change, in the order the timeline settings list them.
KINDS: tuple[str, ...] = (
    "upgrade",
    "downgrade",
    "seat_change",
    "plan_change",
    "cancellation_scheduled",
    "cancellation_withdrawn",
    "payment_recovered",
)

#: Every instant in (since, as_of] at which a subscription's plan, seats or MRR may change
#: with MRR on both sides: its items and discounts. (A new version of the subscription alone,
#: a renewal or a status, moves no price or seat: MRR from or to zero is not a plan change.)
#: The cancellations' instants join them, for the MRR at stake.
_INSTANTS = item_change_instants("$since")

_INTERVAL_WORDS = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def _plan_label() -> str:
    """SQL: an item's plan as people name it: the product (else the price's nickname, else
    its id) and its interval (``Pro monthly``, ``Pro every 3 months``)."""
    words = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in _INTERVAL_WORDS.items())
    return f"""COALESCE(NULLIF(trim(pr.name), ''), NULLIF(trim(p.nickname), ''), i.price_id)
      || CASE WHEN i.interval IS NULL THEN ''
              WHEN i.interval_count > 1 THEN ' every ' || i.interval_count || ' ' || i.interval || 's'
              ELSE ' ' || CASE i.interval {words} ELSE i.interval END END"""


#: The customers in scope (``derive``'s ``customers``), a list parameter.
_CUSTOMERS = "SELECT unnest($customers::VARCHAR[])"


def _sql(settings: SignalSettings, scoped: bool = False) -> str:
    """The derivation; ``scoped``: only the subscriptions and invoices of ``$customers``
    (every CTE after them reads their rows only)."""
    in_scope = (
        f"in_scope AS MATERIALIZED (SELECT DISTINCT subscription_id FROM history_subscriptions"
        f" WHERE customer_id IN ({_CUSTOMERS})),"
        if scoped
        else ""
    )
    subs = " AND subscription_id IN (SELECT subscription_id FROM in_scope)" if scoped else ""
    customers = f" AND customer_id IN ({_CUSTOMERS})" if scoped else ""
    return f"""
WITH
{in_scope}
versions AS MATERIALIZED (
  SELECT h.*, {account_key("h.customer_id")} AS account_id,
    h.cancel_at_period_end OR h.cancel_at IS NOT NULL AS scheduled,
    COALESCE(h.cancel_at, h.current_period_end) AS effective_at,
    lag(h.cancel_at_period_end OR h.cancel_at IS NOT NULL) OVER w AS scheduled_before,
    lag(COALESCE(h.cancel_at, h.current_period_end)) OVER w AS effective_before
  FROM history_subscriptions h LEFT JOIN account_links_as_of($as_of) l
    ON l.customer_id = h.customer_id
  WHERE h.valid_from <= $as_of
    -- every version of the subscriptions with one in the window, and no other: only
    -- those make a cancellation change (cancel_versions), and their lags see every
    -- version before (at 100,000 accounts 864,000 versions windowed otherwise)
    AND h.subscription_id IN (SELECT subscription_id FROM history_subscriptions
                              WHERE valid_from > $since AND valid_from <= $as_of{subs})
  WINDOW w AS (PARTITION BY h.subscription_id ORDER BY h.valid_from)
),
cancel_versions AS MATERIALIZED (
  SELECT * FROM versions v
  WHERE v.valid_from > $since AND v.scheduled_before IS NOT NULL
    AND {sql_in("v.status", IN_FORCE_STATUSES)}
    AND ((v.scheduled AND (NOT v.scheduled_before
                           OR v.effective_at IS DISTINCT FROM v.effective_before))
         OR (NOT v.scheduled AND v.scheduled_before))
),
chg AS MATERIALIZED (
  SELECT DISTINCT subscription_id, c FROM (
    {_INSTANTS}
    UNION SELECT subscription_id, valid_from FROM cancel_versions
  ) WHERE c IS NOT NULL{subs}
),
{mrr_around_changes(settings)},
side AS (
  SELECT i.subscription_id, i.t,
    string_agg(DISTINCT {_plan_label()}, ' + ' ORDER BY {_plan_label()}) AS plan,
    sum(i.quantity) FILTER (WHERE COALESCE(i.usage_type, 'licensed') = 'licensed') AS seats
  FROM around_items i
  LEFT JOIN core_prices p ON p.price_id = i.price_id
  LEFT JOIN core_products pr ON pr.product_id = p.product_id
  GROUP BY ALL
),
owner AS ({subscription_owner()}),
plan_moves AS (
  SELECT o.account_id, c.subscription_id, c.c AS occurred_at,
    COALESCE(ma.currency, mb.currency) AS currency,
    mb.mrr_minor AS mrr_before, ma.mrr_minor AS mrr_after,
    sb.seats AS seats_before, sa.seats AS seats_after,
    sb.plan AS plan_before, sa.plan AS plan_after
  FROM chg c JOIN owner o USING (subscription_id)
  JOIN side sb ON sb.subscription_id = c.subscription_id AND sb.t = c.c - INTERVAL 1 MICROSECOND
  JOIN side sa ON sa.subscription_id = c.subscription_id AND sa.t = c.c
  LEFT JOIN sub_mrr mb
    ON mb.subscription_id = c.subscription_id AND mb.t = c.c - INTERVAL 1 MICROSECOND
  LEFT JOIN sub_mrr ma ON ma.subscription_id = c.subscription_id AND ma.t = c.c
),
plan_kinds AS (
  SELECT *,
    CASE WHEN mrr_before > 0 AND mrr_after > 0 AND mrr_after > mrr_before THEN 'upgrade'
         WHEN mrr_before > 0 AND mrr_after > 0 AND mrr_after < mrr_before THEN 'downgrade'
         WHEN plan_before IS DISTINCT FROM plan_after THEN 'plan_change'
         WHEN seats_before IS DISTINCT FROM seats_after THEN 'seat_change' END AS kind
  FROM plan_moves
),
cancels AS (
  SELECT v.account_id, v.subscription_id, v.valid_from AS occurred_at,
    CASE WHEN v.scheduled THEN 'cancellation_scheduled' ELSE 'cancellation_withdrawn' END AS kind,
    CASE WHEN v.scheduled THEN v.effective_at ELSE v.effective_before END AS effective_at,
    m.currency, m.mrr_minor
  FROM cancel_versions v
  LEFT JOIN sub_mrr m ON m.subscription_id = v.subscription_id AND m.t = v.valid_from
),
paid AS (
  SELECT * FROM core_invoices
  WHERE status = 'paid' AND NOT COALESCE(is_deleted, FALSE)
    AND paid_at > $since AND paid_at <= $as_of{customers}
),
linked AS (
  -- the invoice's charges in both API shapes (as payment_failure links them), equi-joins
  SELECT p.invoice_id, ch.charge_id FROM paid p JOIN core_charges ch ON ch.invoice_id = p.invoice_id
  UNION SELECT p.invoice_id, p.charge_id FROM paid p WHERE p.charge_id IS NOT NULL
  UNION SELECT p.invoice_id, ch.charge_id FROM paid p
    JOIN core_charges ch ON ch.payment_intent_id = p.payment_intent_id
  UNION SELECT p.invoice_id, ch.charge_id FROM paid p
    JOIN core_payment_intents pi ON pi.invoice_id = p.invoice_id
    JOIN core_charges ch ON ch.payment_intent_id = pi.payment_intent_id
  UNION SELECT p.invoice_id, ch.charge_id FROM paid p
    JOIN core_invoice_payments ip ON ip.invoice_id = p.invoice_id
    JOIN core_charges ch ON ch.payment_intent_id = ip.payment_intent_id
  UNION SELECT p.invoice_id, ip.charge_id FROM paid p
    JOIN core_invoice_payments ip ON ip.invoice_id = p.invoice_id
  WHERE ip.charge_id IS NOT NULL
),
attempts AS (
  -- the failed ones before the payment
  SELECT p.invoice_id, count(DISTINCT ch.charge_id) AS failed
  FROM paid p JOIN linked k ON k.invoice_id = p.invoice_id
  JOIN core_charges ch ON ch.charge_id = k.charge_id
  WHERE ch.status = 'failed' AND ch.created_at < p.paid_at
  GROUP BY p.invoice_id
),
failed_events AS (
  SELECT p.invoice_id, count(*) AS failed
  FROM paid p JOIN raw_stripe_event e
    ON e.object_type = 'invoice' AND e.object_id = p.invoice_id
   AND e.type = 'invoice.payment_failed' AND e.created < p.paid_at
  GROUP BY p.invoice_id
),
recovered AS (
  SELECT {account_key("p.customer_id")} AS account_id, p.invoice_id, p.subscription_id,
    p.paid_at AS occurred_at, lower(p.currency) AS currency,
    COALESCE(p.amount_paid, p.total) AS amount_minor,
    greatest(COALESCE(a.failed, 0), COALESCE(e.failed, 0)) AS failed,
    COALESCE(p.attempt_count, 0) AS attempt_count
  FROM paid p LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = p.customer_id
  LEFT JOIN attempts a USING (invoice_id) LEFT JOIN failed_events e USING (invoice_id)
)
SELECT account_id, kind, 'timeline:change:' || subscription_id || ':'
         || strftime(occurred_at, '%Y-%m-%dT%H:%M:%S') AS change_key,
  occurred_at, subscription_id, CAST(NULL AS VARCHAR) AS invoice_id, currency,
  mrr_before, mrr_after, seats_before, seats_after, plan_before, plan_after,
  CAST(NULL AS TIMESTAMP) AS effective_at, CAST(NULL AS BIGINT) AS amount_minor,
  CAST(NULL AS BIGINT) AS attempts
FROM plan_kinds WHERE kind IS NOT NULL
UNION ALL
SELECT account_id, kind, 'timeline:cancel:' || subscription_id || ':'
         || strftime(occurred_at, '%Y-%m-%dT%H:%M:%S'),
  occurred_at, subscription_id, NULL, currency, mrr_minor, NULL, NULL, NULL, NULL, NULL,
  effective_at, NULL, NULL
FROM cancels
UNION ALL
SELECT account_id, 'payment_recovered', 'timeline:recovered:' || invoice_id,
  occurred_at, subscription_id, invoice_id, currency, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, amount_minor, greatest(attempt_count, failed + 1)
FROM recovered WHERE failed > 0 OR attempt_count > 1
"""


@dataclass(frozen=True)
class TimelineChange:
    """One change for the Account timeline: what, when, and its sentence (``summary``)."""

    account_id: str
    kind: str
    change_key: str
    occurred_at: datetime
    summary: str
    detail: str

    @property
    def day(self) -> date:
        return self.occurred_at.date()


_TITLES = {
    "upgrade": "Upgrade",
    "downgrade": "Downgrade",
    "seat_change": "Seat change",
    "plan_change": "Plan change",
}


def _count(n: Any) -> str:
    return "none" if n is None else f"{int(n):,}"


def summary(row: dict[str, Any]) -> str:
    """A change in words, before → after, amounts in their own currency
    (:func:`churn.signals.money.display`): ``Downgrade: Seats 40 → 25, MRR $1,960 → $1,225``."""
    kind = row["kind"]
    currency = row.get("currency")
    if kind == "payment_recovered":
        attempts = row.get("attempts")
        tries = f" after {int(attempts)} attempts" if attempts else ""
        return f"Payment of {display(row.get('amount_minor'), currency)} recovered{tries}"
    if kind in ("cancellation_scheduled", "cancellation_withdrawn"):
        when = row.get("effective_at")
        day = when.date().isoformat() if isinstance(when, datetime) else "an unknown date"
        mrr = row.get("mrr_before")
        stake = f" (MRR {display(mrr, currency)})" if mrr else ""
        if kind == "cancellation_scheduled":
            return f"Cancellation scheduled for {day}{stake}"
        return f"Cancellation scheduled for {day} withdrawn{stake}"
    parts = []
    if row.get("plan_before") != row.get("plan_after"):
        parts.append(f"Plan {row.get('plan_before')} → {row.get('plan_after')}")
    if row.get("seats_before") != row.get("seats_after"):
        parts.append(f"Seats {_count(row.get('seats_before'))} → {_count(row.get('seats_after'))}")
    before, after = row.get("mrr_before"), row.get("mrr_after")
    if before is not None and after is not None and before != after:
        parts.append(f"MRR {display(before, currency)} → {display(after, currency)}")
    return f"{_TITLES[kind]}: {', '.join(parts)}"


def _detail(row: dict[str, Any]) -> str:
    """The ids behind a change, for the Task's description (never its subject)."""
    ids = []
    if row.get("subscription_id"):
        ids.append(f"Subscription: {row['subscription_id']}.")
    if row.get("invoice_id"):
        ids.append(f"Invoice: {row['invoice_id']}.")
    ids.append(f"Change: {row['change_key']}.")
    return " ".join(ids)


def derive(
    tables: Tables,
    as_of: datetime,
    settings: SignalSettings,
    *,
    window_days: int,
    kinds: tuple[str, ...] = KINDS,
    customers: Sequence[str] | None = None,
) -> list[TimelineChange]:
    """The changes in ``(as_of - window_days, as_of]`` of the given kinds, oldest first.

    ``customers``: read only these customers' subscriptions and invoices (an incremental
    run's push: the customers ever linked to its accounts, and the keys that are customer
    ids); their accounts' changes are the same as a whole derivation's, each change
    belonging to the customer its subscription or invoice names."""
    if window_days <= 0 or not kinds:
        return []
    params: dict[str, Any] = {"as_of": as_of, "since": as_of - timedelta(days=window_days)}
    if customers is not None:
        params["customers"] = list(customers)
    frame = tables.frame(_sql(settings, scoped=customers is not None), params)
    out = []
    for row in frame.sort("occurred_at", "change_key").iter_rows(named=True):
        if row["kind"] not in kinds or row["account_id"] is None:
            continue
        out.append(
            TimelineChange(
                account_id=row["account_id"],
                kind=row["kind"],
                change_key=row["change_key"],
                occurred_at=row["occurred_at"],
                summary=summary(row),
                detail=_detail(row),
            )
        )
    return out


def frame_of(changes: list[TimelineChange]) -> pl.DataFrame:
    """The changes as a frame (for readers and tests)."""
    return pl.DataFrame(
        [
            {
                "account_id": c.account_id,
                "kind": c.kind,
                "change_key": c.change_key,
                "occurred_at": c.occurred_at,
                "summary": c.summary,
            }
            for c in changes
        ],
        schema={
            "account_id": pl.String(),
            "kind": pl.String(),
            "change_key": pl.String(),
            "occurred_at": pl.Datetime("us"),
            "summary": pl.String(),
        },
    )
