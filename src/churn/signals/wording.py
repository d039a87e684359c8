"""Reasons a person reads: plan, seats and amounts in the sentence, Stripe ids in the evidence.

Each signal's SQL builds a plain sentence and its evidence (ids, amounts in minor units,
dates). :func:`worded` wraps a signal's score function and rewrites the sentence from the
evidence and from what the subscription held at ``as_of`` (its product's name, its
licensed seats), with amounts in their currency (:func:`churn.signals.money.display`):

- ``The $1,960 invoice for the Pro plan is unpaid after 3 failed attempts (the
  customer must update their card: expired_card).`` (a Task's subject puts the rung's
  label, ``Payment failed: ``, before it)
- ``Pro plan, 40 → 25 seats: MRR fell 38%, $1,960 → $1,225, in the last 90 days.``
- ``Pro plan (40 seats, MRR $1,960) cancels on 2026-03-01, in 14 days.``
- ``The Visa card ending 4242 expires 02/2026, before the Pro plan renews on
  2026-03-01; it is the card Stripe will charge.`` (a month already over: ``The Visa card
  ending 4242 expired 12/2025, and it is the card Stripe will charge when the Pro plan
  renews on 2026-03-01.``)

A row whose evidence lacks what a sentence needs keeps its SQL sentence. Only the
sentence changes: scores, evidence and episode keys are the signal's own. Pure: reads the
warehouse through :class:`Tables` as of ``as_of``, like the signals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import IN_FORCE_STATUSES, sql_in
from churn.signals.money import display
from churn.signals.mrr import account_key
from churn.signals.tables import Tables

ScoreFn = Callable[[Tables, datetime, "SignalSettings"], pl.DataFrame]

#: Per subscription at ``$as_of``: its account, plan name(s) and licensed seats.
PLANS_SQL = f"""
WITH subs AS (
  SELECT subscription_id, customer_id, status FROM history_subscriptions
  WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of)
),
items AS (
  SELECT i.subscription_id, i.quantity,
    COALESCE(NULLIF(trim(pr.name), ''), NULLIF(trim(p.nickname), '')) AS plan_name,
    COALESCE(p.usage_type, 'licensed') AS usage_type
  FROM history_subscription_items i
  LEFT JOIN core_prices p ON p.price_id = i.price_id
  LEFT JOIN core_products pr ON pr.product_id = p.product_id
  WHERE i.valid_from <= $as_of AND (i.valid_to IS NULL OR i.valid_to > $as_of)
)
SELECT s.subscription_id, {account_key("s.customer_id")} AS account_id,
  {sql_in("s.status", IN_FORCE_STATUSES)} AS in_force,
  string_agg(DISTINCT i.plan_name, ' + ' ORDER BY i.plan_name) AS plan,
  sum(i.quantity) FILTER (WHERE i.usage_type = 'licensed') AS seats
FROM subs s LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = s.customer_id
LEFT JOIN items i ON i.subscription_id = s.subscription_id
GROUP BY ALL
"""


class _Plans:
    """What each subscription (and each account's subscriptions in force) held at as_of."""

    def __init__(self, tables: Tables, as_of: datetime) -> None:
        rows = tables.frame(PLANS_SQL, {"as_of": as_of}).iter_rows(named=True)
        self.by_subscription: dict[str, tuple[str | None, int | None]] = {}
        names: dict[str, set[str]] = {}
        for r in rows:
            seats = None if r["seats"] is None else int(r["seats"])
            self.by_subscription[r["subscription_id"]] = (r["plan"], seats)
            if r["in_force"] and r["plan"]:
                names.setdefault(r["account_id"], set()).update(str(r["plan"]).split(" + "))
        self.by_account = {a: " + ".join(sorted(n)) for a, n in names.items()}

    def account(self, account_id: str) -> str | None:
        """The plan names of the account's subscriptions in force (``Pro plan``)."""
        return plan_words(self.by_account.get(account_id))

    def subscription(self, subscription_id: Any) -> tuple[str | None, int | None]:
        if not isinstance(subscription_id, str):
            return None, None
        return self.by_subscription.get(subscription_id, (None, None))


def plans_at(tables: Tables, as_of: datetime) -> _Plans:
    """The plans as of ``as_of``, read once per score (``PLANS_SQL`` scans every
    subscription and item with the links as of T: a quarter of a 10,000-account score
    when each of the four worded signals read it)."""
    return tables.once(("plans", as_of), lambda: _Plans(tables, as_of))


#: Stripe's card brands (``card.brand``) as people write them.
BRANDS = {
    "amex": "American Express",
    "diners": "Diners Club",
    "discover": "Discover",
    "eftpos_au": "eftpos",
    "jcb": "JCB",
    "mastercard": "Mastercard",
    "unionpay": "UnionPay",
    "visa": "Visa",
    "cartes_bancaires": "Cartes Bancaires",
}


def plan_words(name: str | None) -> str | None:
    """``Pro`` -> ``Pro plan``; a name that already says plan (``Pro Plan``) stays."""
    if not name:
        return None
    return name if name.lower().endswith("plan") else f"{name} plan"


def _percent(start: int, end: int) -> int:
    share = (Decimal(start) - Decimal(end)) * 100 / Decimal(start)
    return int(share.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _day(value: Any) -> str | None:
    return value[:10] if isinstance(value, str) and len(value) >= 10 else None


def payment_failure(
    e: Mapping[str, Any], account_id: str, plans: _Plans, settings: SignalSettings
) -> str | None:
    attempts = _int(e.get("attempts"))
    if attempts is None:
        return None
    plan = plan_words(plans.subscription(e.get("subscription_id"))[0])
    amount = _int(e.get("amount_at_risk_minor"))
    invoice = (
        f"The {display(amount, e.get('currency'))} invoice"
        if amount and e.get("currency")
        else "An invoice"
    )
    what = f"{invoice} for the {plan}" if plan else invoice
    how = {
        "hard": "hard decline, do not retry the card",
        "customer_action": "the customer must update their card",
    }.get(str(e.get("decline_class")), "soft decline, retries may succeed")
    code = f": {e['decline_code']}" if e.get("decline_code") else ""
    tries = f"{attempts} failed attempt" + ("" if attempts == 1 else "s")
    return f"{what} is unpaid after {tries} ({how}{code})."


def cancel_at_period_end(
    e: Mapping[str, Any], account_id: str, plans: _Plans, settings: SignalSettings
) -> str | None:
    day, days = _day(e.get("effective_at")), _int(e.get("days_until"))
    if day is None or days is None:
        return None
    name, seats = plans.subscription(e.get("subscription_id"))
    facts = []
    if seats:
        facts.append(f"{seats} seat" + ("" if seats == 1 else "s"))
    mrr = _int(e.get("mrr_at_stake_minor"))
    if mrr and e.get("currency"):
        facts.append(f"MRR {display(mrr, e.get('currency'))}")
    subject = plan_words(name) or "A subscription"
    detail = f" ({', '.join(facts)})" if facts else ""
    when = "today" if days == 0 else f"in {days} day" + ("" if days == 1 else "s")
    return f"{subject}{detail} cancels on {day}, {when}."


def card_expiry(
    e: Mapping[str, Any], account_id: str, plans: _Plans, settings: SignalSettings
) -> str | None:
    renews = _day(e.get("renewal_at"))
    if renews is None:
        return None
    plan = plan_words(plans.subscription(e.get("subscription_id"))[0])
    subject = f"the {plan}" if plan else "the subscription"
    if e.get("kind") == "no_payment_method":
        return (
            f"{subject[0].upper()}{subject[1:]} renews on {renews} and is charged "
            "automatically, but the customer has no payment method."
        )
    month, year = _int(e.get("card_exp_month")), _int(e.get("card_exp_year"))
    if month is None or year is None:
        return None
    brand = str(e.get("card_brand") or "")
    brand = BRANDS.get(brand.lower(), brand.title()) + " " if brand else ""
    last4 = e.get("card_last4") or "?"
    if e.get("expired"):
        return (
            f"The {brand}card ending {last4} expired {month:02d}/{year}, and it is the card "
            f"Stripe will charge when {subject} renews on {renews}."
        )
    return (
        f"The {brand}card ending {last4} expires {month:02d}/{year}, before {subject} renews "
        f"on {renews}; it is the card Stripe will charge."
    )


def downgrade(
    e: Mapping[str, Any], account_id: str, plans: _Plans, settings: SignalSettings
) -> str | None:
    if e.get("compared_apart"):
        return None  # the SQL sentence says which currency and why
    start, end = _int(e.get("mrr_start_minor")), _int(e.get("mrr_end_minor"))
    s0, s1 = _int(e.get("seats_start")), _int(e.get("seats_end"))
    window, n = _int(e.get("window_days")), _int(e.get("downgrades"))
    currency = e.get("currency")
    if start is None or end is None or not currency or window is None:
        return None
    parts = [plans.account(account_id)]
    if s0 and s1 is not None and s0 != s1:
        parts.append(f"{s0} → {s1} seats")
    head = ", ".join(p for p in parts if p)
    amounts = f"{display(start, currency)} → {display(end, currency)}"
    if start > 0 and Decimal(start - end) / Decimal(start) >= Decimal(
        str(settings.downgrade_min_drop)
    ):
        body = f"MRR fell {_percent(start, end)}%, {amounts}"
    else:
        body = f"seats fell from {s0} to {s1} (MRR {amounts})"
    sentence = f"{head}: {body}" if head else body[0].upper() + body[1:]
    more = f" ({n} downgrades)" if n and n > 1 else ""
    return f"{sentence}, in the last {window} days{more}."


_WORDERS: dict[str, Callable[[Mapping[str, Any], str, _Plans, SignalSettings], str | None]] = {
    "payment_failure": payment_failure,
    "cancel_at_period_end": cancel_at_period_end,
    "card_expiry": card_expiry,
    "downgrade": downgrade,
}


def reword(
    name: str, rows: pl.DataFrame, tables: Tables, as_of: datetime, settings: SignalSettings
) -> pl.DataFrame:
    """``rows`` (a signal's output) with each sentence rewritten from its evidence."""
    worder = _WORDERS.get(name)
    if worder is None or rows.is_empty():
        return rows
    plans = plans_at(tables, as_of)
    reasons = []
    for account_id, reason, evidence in rows.select("account_id", "reason", "evidence").iter_rows():
        parsed = json.loads(evidence) if isinstance(evidence, str) else {}
        reasons.append(worder(parsed, account_id, plans, settings) or reason)
    return rows.with_columns(reason=pl.Series(reasons, dtype=pl.String))


def worded(name: str, score: ScoreFn) -> ScoreFn:
    """``score`` with its sentences reworded (see the module's docstring)."""

    def scored(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
        return reword(name, score(tables, as_of, settings), tables, as_of, settings)

    scored.__doc__ = score.__doc__
    scored.__name__ = getattr(score, "__name__", "score")
    scored.__module__ = getattr(score, "__module__", __name__)
    return scored
