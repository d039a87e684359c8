"""A seeded synthetic B2B SaaS world: Stripe objects and events, Salesforce records, usage.

Every account has a hidden health (a standard normal) that drives seat growth, seat
usage, payment failures and voluntary churn, with noise so that churn is learnable but
not certain. The world is written in the folder format of ``docs/world-format.md``:
``stripe/<object>.jsonl.gz`` (each line an object as Stripe's current API returns it,
expandable fields as ids), ``stripe/event.jsonl.gz``, ``salesforce/<SObject>.jsonl.gz``,
``usage/usage.csv`` and, apart, ``truth.csv`` (hidden health and who churned) for
measurement only.

Per-account draws are vectorised with numpy; objects are built as dicts and written in
bulk, one gzip JSON Lines file per object type.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from churn.pipelines.stripe.streams import STREAMS

API_VERSION = "2025-09-30.clover"
# Bumped whenever the generator changes what it writes, so cached worlds are remade.
GENERATOR_VERSION = 11
DAY = 86_400
MONTH = 30 * DAY
CURRENCIES = ("usd", "eur", "gbp", "jpy")
CURRENCY_WEIGHTS = (0.55, 0.25, 0.1, 0.1)
# Per-seat monthly amount in minor units (JPY has no minor unit).
SEAT_PRICE = {"usd": 2_000, "eur": 1_800, "gbp": 1_600, "jpy": 2_800}
FLAT_PRICE = {"usd": 9_900, "eur": 8_900, "gbp": 7_900, "jpy": 14_000}
PLANS = (("starter", "flat"), ("team", "per_seat"), ("business", "per_seat"))
PLAN_MULT = {"starter": 1, "team": 1, "business": 2}
DECLINE_CODES = (
    ("card_declined", "insufficient_funds"),
    ("card_declined", "generic_decline"),
    ("card_declined", "do_not_honor"),
    ("expired_card", "expired_card"),
    ("card_declined", "lost_card"),
)
# Coupons: (id, name, duration, duration_in_months, percent off). An account with a
# coupon gets one by its number (no draw, so the rest of the world is unchanged).
COUPONS = (
    ("PARTNER10", "Partner 10%", "forever", None, 10),
    ("WELCOME20", "Welcome 20%", "repeating", 3, 20),
    ("ONBOARD50", "Onboarding 50%", "once", None, 50),
)
# A decline's outcome.advice_code (Stripe: confirm_card_data, do_not_try_again,
# try_again_later); the others carry none.
ADVICE_CODES = {"insufficient_funds": "try_again_later", "lost_card": "do_not_try_again"}
# Share of successful charges later refunded (in full or in part).
REFUND_RATE = 0.01
# Salesforce CurrencyType rates: units of each currency per one US dollar (corporate).
SF_RATES = {"usd": 1.0, "eur": 0.92, "gbp": 0.79, "jpy": 150.0}
# Stripe's Smart Retries land over a few weeks; we use a fixed schedule of days.
RETRY_DAYS = (3, 5, 7)
# The usage feed holds daily active seats for the last USAGE_DAYS days and, before that
# back to the subscription's start, a weekly rollup (one sample per calendar week, dated
# its Monday: the mean of the week's daily active seats), as product-analytics stores
# keep older data: a model's training snapshots (a horizon before today) then have usage
# too. Daily for the whole history would be ~50M rows at 100k accounts x 18 months.
USAGE_DAYS = 120


@dataclass
class World:
    """Everything generated, by object type; written by :func:`write_world`."""

    now: int
    stripe: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    salesforce: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    usage: list[tuple[str, str, int, int]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)


def _clone(obj: Any) -> Any:
    """A deep copy of JSON-shaped data; the C json codec is ~10x faster than deepcopy."""
    return json.loads(json.dumps(obj))


class _Ids:
    def __init__(self, rng: np.random.Generator, start: int = 0) -> None:
        self._n = start
        self._salt = int(rng.integers(1 << 30))

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._salt:08x}{self._n:010d}"

    def sf(self, prefix: str) -> str:
        """A Salesforce Id as the API writes it: the key prefix and a 12-digit count (15
        characters), then the suffix that encodes their case, "AAA" for a head without an
        upper-case letter. The count used to run into the last three characters, which no
        real Id holds there (a suffix has no digit past 5), so the 15-character form of the
        world's Ids named no record."""
        self._n += 1
        return f"{prefix}{self._n:012d}AAA"


def _sf_time(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class _Builder:
    def __init__(
        self,
        n: int,
        seed: int | list[int],
        now: int,
        months: int,
        *,
        id_start: int = 0,
        n_owners: int | None = None,
        first_account: int = 0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        # The weekly rollup's days are drawn from their own stream, so the rest of the
        # world (everything drawn from self.rng) is the same as without it.
        self.usage_rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 7919])
        self._older_usage: list[tuple[int, int, int]] = []
        # Numbers companies (names, domains) across chunks: chunk-local numbers repeated
        # every 5,000 accounts, and 23,000 customers of a 100k world matched 17 Accounts
        # by domain.
        self.first_account = first_account
        self.ids = _Ids(self.rng, id_start)
        self.n = n
        self.n_owners = n_owners or max(8, n // 150)
        self.now = now
        self.start = now - months * MONTH
        self.w = World(now=now)
        for kind in (s.name for s in STREAMS):
            self.w.stripe[kind] = []
        self.prices: dict[tuple[str, str, str], dict[str, Any]] = {}

    def event(self, etype: str, obj: dict[str, Any], ts: int, prev: dict[str, Any] | None) -> None:
        data: dict[str, Any] = {"object": _clone(obj)}
        if prev is not None:
            data["previous_attributes"] = prev
        self.w.events.append(
            {
                "id": self.ids.new("evt"),
                "object": "event",
                "api_version": API_VERSION,
                "created": int(ts),
                "data": data,
                "livemode": False,
                "pending_webhooks": 0,
                "request": {"id": None, "idempotency_key": None},
                "type": etype,
            }
        )

    def catalogue(self) -> None:
        t0 = self.start - 30 * DAY
        for plan, scheme in PLANS:
            prod = {
                "id": f"prod_{plan}",
                "object": "product",
                "active": True,
                "created": t0,
                "name": plan.title(),
                "metadata": {"pricing": scheme},
                "livemode": False,
                "updated": t0,
            }
            self.w.stripe["product"].append(prod)
            self.event("product.created", prod, t0, None)
            for cur in CURRENCIES:
                for interval in ("month", "year"):
                    base = (SEAT_PRICE if scheme == "per_seat" else FLAT_PRICE)[cur]
                    amount = base * PLAN_MULT[plan] * (10 if interval == "year" else 1)
                    price = {
                        "id": f"price_{plan}_{cur}_{interval}",
                        "object": "price",
                        "active": True,
                        "billing_scheme": "per_unit",
                        "created": t0,
                        "currency": cur,
                        "livemode": False,
                        "lookup_key": f"{plan}_{cur}_{interval}",
                        "metadata": {},
                        "nickname": f"{plan.title()} {interval}ly {cur.upper()}",
                        "product": prod["id"],
                        "recurring": {
                            "interval": interval,
                            "interval_count": 1,
                            "meter": None,
                            "usage_type": "licensed",
                            "trial_period_days": None,
                        },
                        "tax_behavior": "unspecified",
                        "type": "recurring",
                        "unit_amount": amount,
                        "unit_amount_decimal": str(amount),
                    }
                    self.prices[(plan, cur, interval)] = price
                    self.w.stripe["price"].append(price)
                    self.event("price.created", price, t0, None)
        for cid, name, duration, months, pct in COUPONS:
            coupon: dict[str, Any] = {
                "id": cid,
                "object": "coupon",
                "amount_off": None,
                "currency": None,
                "created": t0,
                "duration": duration,
                "duration_in_months": months,
                "livemode": False,
                "max_redemptions": None,
                "metadata": {},
                "name": name,
                "percent_off": float(pct),
                "times_redeemed": 0,
                "valid": True,
            }
            self.w.stripe["coupon"].append(coupon)
            self.event("coupon.created", coupon, t0, None)

    def salesforce_users(self) -> list[str]:
        users: list[dict[str, Any]] = []
        for i in range(self.n_owners):
            uid = f"005{i:015d}"  # the same in every chunk of a large world
            users.append(
                {
                    "attributes": {"type": "User"},
                    "Id": uid,
                    "Name": f"Owner {i}",
                    "Email": f"owner{i}@seller.example",
                    "IsActive": bool(i % 7 != 6),  # some owners left the company
                    "SystemModstamp": _sf_time(self.start),
                    "IsDeleted": False,
                }
            )
        self.w.salesforce["User"] = users
        # A multi-currency org: one CurrencyType per currency billed, USD corporate.
        self.w.salesforce["CurrencyType"] = [
            {
                "attributes": {"type": "CurrencyType"},
                "Id": f"02u{i:015d}",
                "IsoCode": code.upper(),
                "ConversionRate": rate,
                "DecimalPlaces": 0 if code == "jpy" else 2,
                "IsActive": True,
                "IsCorporate": code == "usd",
                "SystemModstamp": _sf_time(self.start),
            }
            for i, (code, rate) in enumerate(SF_RATES.items())
        ]
        self.w.salesforce["Account"] = []
        self.w.salesforce["Opportunity"] = []
        self.w.salesforce["Contact"] = []
        return [str(u["Id"]) for u in users]

    def build(self) -> World:
        self.catalogue()
        owners = self.salesforce_users()
        rng, n = self.rng, self.n
        health = rng.normal(size=n)
        # Sign-ups keep coming until a few weeks before now (a business that still sells),
        # most of them early enough to have some history.
        created = self.start + (rng.random(n) * 0.93 * (self.now - self.start)).astype(np.int64)
        currency = rng.choice(len(CURRENCIES), size=n, p=CURRENCY_WEIGHTS)
        plan = rng.choice(len(PLANS), size=n, p=(0.3, 0.5, 0.2))
        yearly = rng.random(n) < 0.2
        seats = np.maximum(1, rng.lognormal(2.0, 0.8, size=n).astype(int))
        trial = rng.random(n) < 0.2
        coupon = rng.random(n) < 0.15
        # Which SF shape: 0 linked by metadata, 1 linked by field, 2 domain only, 3 no Account,
        # 4 second customer of the previous Account.
        sf_shape = rng.choice(5, size=n, p=(0.5, 0.2, 0.15, 0.08, 0.07))
        for i in range(n):
            self.account(i, float(health[i]), int(created[i]), CURRENCIES[int(currency[i])],
                         PLANS[int(plan[i])][0], bool(yearly[i]), int(seats[i]), bool(trial[i]),
                         bool(coupon[i]), int(sf_shape[i]), owners)  # fmt: skip
        return self.w

    def account(
        self,
        i: int,
        h: float,
        created: int,
        cur: str,
        plan: str,
        yearly: bool,
        seats: int,
        trial: bool,
        coupon: bool,
        sf_shape: int,
        owners: list[str],
    ) -> None:
        rng = self.rng
        number = self.first_account + i
        company = f"Company {number:06d}"
        domain = f"company{number:06d}.example"
        cus_id = self.ids.new("cus")
        # Salesforce side.
        acct_id: str | None = None
        prev_accounts = self.w.salesforce["Account"]
        if sf_shape == 4 and prev_accounts:
            acct_id = prev_accounts[-1]["Id"]
        elif sf_shape != 3:
            acct_id = self.ids.sf("001")
            owner = owners[int(rng.integers(len(owners)))]
            prev_accounts.append(
                {
                    "attributes": {"type": "Account"},
                    "Id": acct_id,
                    "Name": company,
                    "Website": f"https://www.{domain}",
                    "OwnerId": owner,
                    "Stripe_Customer_Id__c": cus_id if sf_shape == 1 else None,
                    "SystemModstamp": _sf_time(created),
                    "IsDeleted": False,
                }
            )
            self.w.salesforce["Opportunity"].append(
                {
                    "attributes": {"type": "Opportunity"},
                    "Id": self.ids.sf("006"),
                    "AccountId": acct_id,
                    "Name": f"{company} renewal",
                    "StageName": "Closed Won",
                    "Amount": None,
                    "CloseDate": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d"),
                    "OwnerId": owner,
                    "SystemModstamp": _sf_time(created),
                    "IsDeleted": False,
                }
            )
            self.w.salesforce["Contact"].append(
                {
                    "attributes": {"type": "Contact"},
                    "Id": self.ids.sf("003"),
                    "AccountId": acct_id,
                    "LastName": f"Admin {i}",
                    # Every other Account's Contact is its billing contact: the Stripe
                    # customer's email (billing@), so the push links it to the Task and
                    # the Case; the others have none that matches.
                    "Email": f"billing@{domain}" if i % 2 == 0 else f"admin@{domain}",
                    "SystemModstamp": _sf_time(created),
                    "IsDeleted": False,
                }
            )
        # Stripe customer and card.
        pm = self.card(cus_id, created, months_valid=int(rng.integers(6, 48)))
        customer: dict[str, Any] = {
            "id": cus_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": created,
            "currency": cur,
            "default_source": None,
            "delinquent": False,
            "description": company,
            "email": f"billing@{domain}",
            "invoice_prefix": cus_id[-8:].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": pm["id"],
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {"salesforce_account_id": acct_id} if sf_shape in (0, 4) else {},
            "name": company,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        self.w.stripe["customer"].append(customer)
        self.event("customer.created", customer, created, None)
        self.event("payment_method.attached", pm, created, None)
        self.subscription(i, h, customer, pm, plan, cur, yearly, seats, trial, coupon, acct_id)

    def card(self, cus_id: str, ts: int, months_valid: int) -> dict[str, Any]:
        exp = datetime.fromtimestamp(ts + months_valid * MONTH, UTC)
        pm = {
            "id": self.ids.new("pm"),
            "object": "payment_method",
            "billing_details": {"email": None, "name": None},
            "card": {
                "brand": "visa",
                "country": "US",
                "exp_month": exp.month,
                "exp_year": exp.year,
                "funding": "credit",
                "last4": f"{int(self.rng.integers(10_000)):04d}",
            },
            "created": ts,
            "customer": cus_id,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.w.stripe["payment_method"].append(pm)
        return pm

    def subscription(
        self,
        i: int,
        h: float,
        customer: dict[str, Any],
        pm: dict[str, Any],
        plan: str,
        cur: str,
        yearly: bool,
        seats: int,
        trial: bool,
        coupon: bool,
        acct_id: str | None,
    ) -> None:
        rng = self.rng
        created = int(customer["created"])
        interval = "year" if yearly else "month"
        period = 365 * DAY if yearly else MONTH
        price = self.prices[(plan, cur, interval)]
        per_seat = plan != "starter"
        qty = seats if per_seat else 1
        sub_id = self.ids.new("sub")
        trial_end = created + 14 * DAY if trial else None
        start = trial_end or created
        item: dict[str, Any] = {
            "id": self.ids.new("si"),
            "object": "subscription_item",
            "created": created,
            "current_period_start": created,
            "current_period_end": trial_end or created + period,
            "discounts": [],
            "metadata": {},
            "price": price,
            "quantity": qty,
            "subscription": sub_id,
            "tax_rates": [],
        }
        sub: dict[str, Any] = {
            "id": sub_id,
            "object": "subscription",
            "billing_cycle_anchor": start,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": created,
            "currency": cur,
            "customer": customer["id"],
            "default_payment_method": None,
            "discounts": [],
            "ended_at": None,
            "items": {
                "object": "list",
                "data": [item],
                "has_more": False,
                "total_count": 1,
                "url": f"/v1/subscription_items?subscription={sub_id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": {},
            "start_date": created,
            "status": "trialing" if trial else "active",
            "trial_end": trial_end,
            "trial_start": created if trial else None,
        }
        discount: dict[str, Any] | None = None
        pct = 0
        if coupon:
            cid, _, _, months, pct = COUPONS[i % len(COUPONS)]
            # The Discount object as 2025-09-30.clover returns it: the coupon under
            # `source.coupon`, an id ("not automatically expanded"); the subscription's
            # `discounts` holds its id.
            discount = {
                "id": self.ids.new("di"),
                "object": "discount",
                "checkout_session": None,
                "customer": customer["id"],
                "end": created + int(months) * MONTH if months else None,
                "invoice": None,
                "invoice_item": None,
                "promotion_code": None,
                "source": {"coupon": cid, "type": "coupon"},
                "start": created,
                "subscription": sub_id,
                "subscription_item": None,
            }
            sub["discounts"] = [discount["id"]]
            self.w.stripe["discount"].append(discount)
        self.event("customer.subscription.created", sub, created, None)
        if discount is not None:
            self.event("customer.discount.created", discount, created, None)
        # Hazards: health moves everything, noise keeps it from being deterministic.
        vol_hazard = 1 / (1 + np.exp(4.3 + 1.3 * h)) * (3 if yearly else 1)
        fail_p = 1 / (1 + np.exp(3.4 + 0.9 * h))
        recover_p = 1 / (1 + np.exp(-0.6 - 1.0 * h))
        t = start
        if trial:
            if rng.random() < 0.12 + 0.1 * max(0.0, -h):
                self.cancel(sub, trial_end or t, "trial_not_converted", immediate=True)
                self.finish(i, h, sub, acct_id, "voluntary", trial_end or t)
                return
            prev = {"status": "trialing"}
            sub["status"] = "active"
            self.event("customer.subscription.updated", sub, t, prev)
        churn_type: str | None = None
        churn_at: int | None = None
        n_periods = 0
        # A change mid-period is prorated on the next invoice (Stripe's default
        # proration_behavior, create_prorations): unused time on the old item, remaining
        # time on the new one, both for the rest of the period.
        prorations: list[dict[str, Any]] = []
        while t < self.now:
            n_periods += 1
            period_end = t + period
            item["current_period_start"], item["current_period_end"] = t, period_end
            if discount is not None and discount["end"] is not None and discount["end"] <= t:
                self.end_discount(sub, discount, int(discount["end"]))
                discount = None
            off = pct if discount is not None else 0
            ok = self.invoice(sub, item, customer, pm, t, fail_p, recover_p, off, prorations)
            if discount is not None and COUPONS[i % len(COUPONS)][2] == "once":
                # a `once` coupon applies to one invoice, then the discount is removed
                self.end_discount(sub, discount, t)
                discount = None
            prorations = []
            if not ok:
                churn_type, churn_at = "involuntary", t + 20 * DAY
                self.cancel(sub, min(churn_at, self.now - 1), "payment_failed", immediate=True)
                break
            # Drawn before the usage so that an account about to schedule its cancellation
            # can disengage first: the lead that makes seat use worth watching.
            leaving = rng.random() < vol_hazard * (period / MONTH)
            share = float(np.clip(0.72 + 0.18 * h + rng.normal(0, 0.12), 0.05, 1.0))
            if per_seat:  # a flat plan's quantity of 1 is not a seat count
                self.daily_usage(customer["id"], item, t, period_end, share, leaving)
            # Seat and plan changes mid-period.
            mid = t + period // 2
            if mid < self.now and per_seat and rng.random() < 0.18:
                step = int(max(1, round(item["quantity"] * 0.15)))
                new_q = max(1, item["quantity"] + (step if rng.normal(h, 1) > 0 else -step))
                if new_q != item["quantity"]:
                    prev_items = _clone(sub["items"])
                    old_item = _clone(item)
                    item["quantity"] = new_q
                    self.event("customer.subscription.updated", sub, mid, {"items": prev_items})
                    prorations += self.proration(sub, old_item, item, mid, period_end)
            elif mid < self.now and rng.random() < 0.03:
                order = [p for p, _ in PLANS]
                j = order.index(plan) + (1 if rng.normal(h, 1) > 0.5 else -1)
                if 0 <= j < len(order) and order[j] != plan:
                    prev_items = _clone(sub["items"])
                    old_item = _clone(item)
                    plan = order[j]
                    item["price"] = self.prices[(plan, cur, interval)]
                    per_seat = plan != "starter"
                    item["quantity"] = max(1, seats) if per_seat else 1
                    self.event("customer.subscription.updated", sub, mid, {"items": prev_items})
                    prorations += self.proration(sub, old_item, item, mid, period_end)
            # Voluntary churn: schedule at period end, sometimes withdrawn.
            if leaving:
                decide = t + int(period * 0.6)
                if decide >= self.now:
                    break
                sub["cancel_at_period_end"], sub["cancel_at"] = True, period_end
                sub["canceled_at"] = decide
                sub["cancellation_details"] = {
                    "comment": None,
                    "feedback": "too_expensive" if h < 0 else "switched_service",
                    "reason": "cancellation_requested",
                }
                self.event(
                    "customer.subscription.updated",
                    sub,
                    decide,
                    {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None},
                )
                withdraw_at = decide + 5 * DAY
                if rng.random() < 0.3 and withdraw_at < self.now:
                    sub["cancel_at_period_end"], sub["cancel_at"] = False, None
                    sub["canceled_at"] = None
                    sub["cancellation_details"] = {
                        "comment": None,
                        "feedback": None,
                        "reason": None,
                    }
                    self.event(
                        "customer.subscription.updated",
                        sub,
                        withdraw_at,
                        {"cancel_at_period_end": True, "cancel_at": period_end},
                    )
                elif period_end < self.now:
                    churn_type, churn_at = "voluntary", period_end
                    self.cancel(sub, period_end, "cancellation_requested", immediate=False)
                    break
                else:
                    churn_type, churn_at = "scheduled", period_end
                    break
            # Cards expire; healthy accounts replace them, or (one in three, by number)
            # the card network renews the same card: same id, a new expiry, the event
            # payment_method.automatically_updated.
            exp = pm["card"]["exp_year"] * 12 + pm["card"]["exp_month"]
            now_m = datetime.fromtimestamp(period_end, UTC)
            renew = (
                exp <= now_m.year * 12 + now_m.month
                and period_end - DAY < self.now
                and rng.random() < recover_p
            )
            if renew and i % 3 == 0:
                months = int(rng.integers(24, 60))
                self.rng.integers(10_000)  # the draw a new card's last4 takes: same stream
                renewed = datetime.fromtimestamp(period_end - DAY + months * MONTH, UTC)
                prev_card = {"exp_month": pm["card"]["exp_month"],
                             "exp_year": pm["card"]["exp_year"]}  # fmt: skip
                pm["card"]["exp_month"], pm["card"]["exp_year"] = renewed.month, renewed.year
                self.event(
                    "payment_method.automatically_updated", pm, period_end - DAY,
                    {"card": prev_card},
                )  # fmt: skip
            elif renew:
                pm = self.card(customer["id"], period_end - DAY, int(rng.integers(24, 60)))
                prev_settings = dict(customer["invoice_settings"])
                customer["invoice_settings"]["default_payment_method"] = pm["id"]
                self.event("payment_method.attached", pm, period_end - DAY, None)
                self.event(
                    "customer.updated",
                    customer,
                    period_end - DAY,
                    {"invoice_settings": prev_settings},
                )
            t = period_end
        self.weekly_usage(customer["id"])
        self.finish(i, h, sub, acct_id, churn_type, churn_at)

    def daily_usage(
        self,
        customer_id: str,
        item: dict[str, Any],
        start: int,
        end: int,
        share: float,
        leaving: bool,
    ) -> None:
        """Active seats per day of one period: rows for the days within ``USAGE_DAYS`` of
        now; the days before are kept aside for :meth:`weekly_usage` to roll up.

        The period's share of seats in use is the account's (health plus noise); each day
        wobbles around it; an account that will decide to leave this period fades out
        over the days before its decision (60% of the way through the period).
        """
        cutoff = self.now - USAGE_DAYS * DAY
        # Whole days from the period's start, so adjacent periods never share a date.
        first = start + max(0, -(-(cutoff - start) // DAY)) * DAY
        last = min(end, self.now)
        seats = int(item["quantity"])
        if first > start:  # days before the daily window: the weekly rollup's
            older = np.arange(start, min(first, last), DAY)
            self._older_usage.extend(
                zip(
                    older.tolist(),
                    self._active(older, start, end, share, leaving, seats, self.usage_rng),
                    [seats] * len(older),
                    strict=True,
                )
            )
        if first >= last:
            return
        days = np.arange(first, last, DAY)
        active = self._active(days, start, end, share, leaving, seats, self.rng)
        self.w.usage.extend(
            (customer_id, _day(int(d)), a, seats) for d, a in zip(days, active, strict=True)
        )

    @staticmethod
    def _active(
        days: npt.NDArray[np.int64],
        start: int,
        end: int,
        share: float,
        leaving: bool,
        seats: int,
        rng: np.random.Generator,
    ) -> list[int]:
        daily = share + rng.normal(0, 0.05, len(days))
        if leaving:
            decide = start + int((end - start) * 0.6)
            fade = np.clip((days - (decide - 45 * DAY)) / (45 * DAY), 0.0, 1.0)
            daily = daily * (1.0 - 0.7 * fade)
        return [int(a) for a in np.rint(np.clip(daily, 0.0, 1.0) * seats)]

    def weekly_usage(self, customer_id: str) -> None:
        """The days before the daily window as one row per calendar week (Monday to
        Sunday), dated its first day held (a sample covers the days until the next): the
        mean of the week's active seats, against the seats held on its last day."""
        weeks: dict[int, list[tuple[int, int, int]]] = {}
        for d, a, s in self._older_usage:
            day = d // DAY
            weeks.setdefault(day - (day + 3) % 7, []).append((d, a, s))  # day 4 is a Monday
        self._older_usage = []
        for week in sorted(weeks):
            days = weeks[week]
            seats = days[-1][2]
            active = min(seats, round(sum(a for _, a, _ in days) / len(days)))
            self.w.usage.append((customer_id, _day(days[0][0]), active, seats))

    def end_discount(self, sub: dict[str, Any], discount: dict[str, Any], ts: int) -> None:
        """A discount removed from its subscription (its end reached, or used once)."""
        prev = {"discounts": list(sub["discounts"])}
        sub["discounts"] = [d for d in sub["discounts"] if d != discount["id"]]
        self.event("customer.discount.deleted", discount, ts, None)
        self.event("customer.subscription.updated", sub, ts, prev)

    def cancel(self, sub: dict[str, Any], ts: int, reason: str, *, immediate: bool) -> None:
        sub["status"] = "canceled"
        sub["ended_at"] = ts
        sub["canceled_at"] = sub["canceled_at"] or ts
        sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": reason}
        self.event("customer.subscription.deleted", sub, ts, None)

    def finish(
        self,
        i: int,
        h: float,
        sub: dict[str, Any],
        acct_id: str | None,
        churn_type: str | None,
        churn_at: int | None,
    ) -> None:
        self.w.stripe["subscription"].append(sub)
        self.w.truth.append(
            {
                "customer_id": sub["customer"],
                "account_id": acct_id,
                "health": round(h, 4),
                "churned": churn_type is not None,
                "churn_type": churn_type or "",
                "churn_at": churn_at or "",
            }
        )

    def invoice(
        self,
        sub: dict[str, Any],
        item: dict[str, Any],
        customer: dict[str, Any],
        pm: dict[str, Any],
        ts: int,
        fail_p: float,
        recover_p: float,
        percent_off: int,
        prorations: list[dict[str, Any]] | None = None,
    ) -> bool:
        """One period's invoice and its charge attempts; False when it was never paid."""
        rng = self.rng
        base = int(item["price"]["unit_amount"]) * int(item["quantity"])
        base -= base * percent_off // 100
        prorations = prorations or []
        amount = max(0, base + sum(int(p["amount"]) for p in prorations))
        inv_id = self.ids.new("in")
        exp = pm["card"]["exp_year"] * 12 + pm["card"]["exp_month"]
        t_m = datetime.fromtimestamp(ts, UTC)
        expired = exp < t_m.year * 12 + t_m.month
        inv: dict[str, Any] = {
            "id": inv_id,
            "object": "invoice",
            "amount_due": amount,
            "amount_paid": 0,
            "amount_remaining": amount,
            "attempt_count": 0,
            "attempted": False,
            "billing_reason": "subscription_cycle",
            "collection_method": "charge_automatically",
            "created": ts,
            # Stripe's page where the customer pays the invoice or updates the card.
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_sandbox/{inv_id}",
            "currency": sub["currency"],
            "customer": customer["id"],
            "lines": {
                "object": "list",
                "has_more": False,
                "total_count": 1 + len(prorations),
                "url": f"/v1/invoices/{inv_id}/lines",
                "data": [
                    {
                        "id": self.ids.new("il"),
                        "object": "line_item",
                        "amount": base,
                        "currency": sub["currency"],
                        "invoice": inv_id,
                        "period": {
                            "start": item["current_period_start"],
                            "end": item["current_period_end"],
                        },
                        "pricing": {
                            "price_details": {
                                "price": item["price"]["id"],
                                "product": item["price"]["product"],
                            },
                            "type": "price_details",
                        },
                        "quantity": item["quantity"],
                        "parent": {
                            "subscription_item_details": {
                                "proration": False,
                                "subscription": sub["id"],
                                "subscription_item": item["id"],
                            },
                            "type": "subscription_item_details",
                        },
                    },
                    *({**p, "invoice": inv_id} for p in prorations),
                ],
            },
            "livemode": False,
            "next_payment_attempt": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": sub["id"]},
                "type": "subscription_details",
            },
            "period_end": ts,
            "period_start": ts,
            "status": "open",
            "status_transitions": {"finalized_at": ts, "paid_at": None},
            "subtotal": amount,
            "total": amount,
        }
        sub["latest_invoice"] = inv_id
        self.event("invoice.created", inv, ts, None)
        pi, inpay = self.payment_intent(inv, pm, ts)
        fails = expired or rng.random() < fail_p
        attempts = [ts] + [ts + d * DAY for d in RETRY_DAYS] if fails else [ts]
        paid = False
        for k, at in enumerate(attempts):
            if at >= self.now:
                break
            last = k == len(attempts) - 1
            success = not fails or (k > 0 and not expired and rng.random() < recover_p / 2)
            if fails and last and not success and k > 0:
                success = False
            code = DECLINE_CODES[int(rng.integers(len(DECLINE_CODES)))]
            if expired:
                code = ("expired_card", "expired_card")
            charge = self.charge(inv, pm, at, amount, None if success else code, pi["id"])
            inv["attempt_count"], inv["attempted"] = k + 1, True
            if success:
                inv.update(status="paid", amount_paid=amount, amount_remaining=0)
                inv["status_transitions"] = {"finalized_at": ts, "paid_at": at}
                inv["next_payment_attempt"] = None
                self.event("charge.succeeded", charge, at, None)
                pi.update(status="succeeded", amount_received=amount, latest_charge=charge["id"],
                          last_payment_error=None)  # fmt: skip
                self.event("payment_intent.succeeded", pi, at, None)
                inpay.update(status="paid", amount_paid=amount)
                inpay["status_transitions"] = {"canceled_at": None, "paid_at": at}
                self.event("invoice_payment.paid", inpay, at, None)
                self.event("invoice.paid", inv, at, None)
                refund_at = at + int(self.rng.integers(1, 20)) * DAY
                if refund_at < self.now and self.rng.random() < REFUND_RATE:
                    self.refund(charge, refund_at)
                paid = True
                break
            inv["next_payment_attempt"] = attempts[k + 1] if not last else None
            self.event("charge.failed", charge, at, None)
            pi.update(status="requires_payment_method", latest_charge=charge["id"])
            pi["last_payment_error"] = {
                "type": "card_error",
                "code": code[0],
                "decline_code": code[1],
                "advice_code": ADVICE_CODES.get(code[1]),
                "charge": charge["id"],
                "message": "Your card was declined.",
            }
            self.event("payment_intent.payment_failed", pi, at, None)
            self.event("invoice.payment_failed", inv, at, None)
            if sub["status"] == "active":
                sub["status"] = "past_due"
                self.event("customer.subscription.updated", sub, at, {"status": "active"})
        if paid and sub["status"] == "past_due":
            sub["status"] = "active"
            self.event("customer.subscription.updated", sub, inv["status_transitions"]["paid_at"],
                       {"status": "past_due"})  # fmt: skip
        if not paid and attempts[-1] + DAY < self.now:
            inv["status"] = "uncollectible"
            # Stripe stamps status_transitions.marked_uncollectible_at; without it a reader
            # cannot tell when the invoice stopped being an open failure.
            inv["status_transitions"] = {**inv["status_transitions"],
                                         "marked_uncollectible_at": attempts[-1] + DAY}  # fmt: skip
            self.event("invoice.marked_uncollectible", inv, attempts[-1] + DAY, None)
        self.w.stripe["invoice"].append(inv)
        return paid or attempts[-1] >= self.now

    def payment_intent(
        self, inv: dict[str, Any], pm: dict[str, Any], ts: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The invoice's PaymentIntent (each attempt is a charge of it) and the default
        InvoicePayment joining them, as Stripe creates both when the invoice is finalized
        (since 2025-03-31.basil the invoice names neither)."""
        pi: dict[str, Any] = {
            "id": self.ids.new("pi"),
            "object": "payment_intent",
            "amount": inv["amount_due"],
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic",
            "confirmation_method": "automatic",
            "created": ts,
            "currency": inv["currency"],
            "customer": inv["customer"],
            "description": "Subscription update",
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": {},
            "payment_method": pm["id"],
            "payment_method_types": ["card"],
            "status": "requires_confirmation",
        }
        inpay: dict[str, Any] = {
            "id": self.ids.new("inpay"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": inv["amount_due"],
            "created": ts,
            "currency": inv["currency"],
            "invoice": inv["id"],
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
        self.event("payment_intent.created", pi, ts, None)
        self.w.stripe["payment_intent"].append(pi)
        self.w.stripe["invoice_payment"].append(inpay)
        return pi, inpay

    def proration(
        self,
        sub: dict[str, Any],
        old: dict[str, Any],
        new: dict[str, Any],
        at: int,
        period_end: int,
    ) -> list[dict[str, Any]]:
        """Stripe's two proration lines for a change at ``at``: the old item's unused time
        (negative) and the new item's remaining time, both ``at``..``period_end``."""
        share = (period_end - at) / max(1, period_end - int(old["current_period_start"]))
        lines = []
        for sign, it in ((-1, old), (1, new)):
            full = int(it["price"]["unit_amount"]) * int(it["quantity"])
            lines.append(
                {
                    "id": self.ids.new("il"),
                    "object": "line_item",
                    "amount": sign * round(full * share),
                    "currency": sub["currency"],
                    "period": {"start": at, "end": period_end},
                    "pricing": {
                        "price_details": {
                            "price": it["price"]["id"],
                            "product": it["price"]["product"],
                        },
                        "type": "price_details",
                    },
                    "quantity": it["quantity"],
                    "parent": {
                        "subscription_item_details": {
                            "proration": True,
                            "subscription": sub["id"],
                            "subscription_item": it["id"],
                        },
                        "type": "subscription_item_details",
                    },
                }
            )
        return lines

    def charge(
        self,
        inv: dict[str, Any],
        pm: dict[str, Any],
        ts: int,
        amount: int,
        failure: tuple[str, str] | None,
        payment_intent: str | None = None,
    ) -> dict[str, Any]:
        charge = {
            "id": self.ids.new("ch"),
            "object": "charge",
            "amount": amount,
            "amount_captured": 0 if failure else amount,
            "amount_refunded": 0,
            "captured": failure is None,
            "created": ts,
            "currency": inv["currency"],
            "customer": inv["customer"],
            "failure_code": failure[0] if failure else None,
            "failure_message": "Your card was declined." if failure else None,
            "livemode": False,
            "outcome": {
                "advice_code": ADVICE_CODES.get(failure[1]) if failure else None,
                "network_status": "declined_by_network" if failure else "approved_by_network",
                "reason": failure[1] if failure else None,
                "risk_level": "normal",
                "seller_message": "The bank did not return any further details."
                if failure
                else "Payment complete.",
                "type": "issuer_declined" if failure else "authorized",
            },
            "paid": failure is None,
            "payment_intent": payment_intent,
            "payment_method": pm["id"],
            "payment_method_details": {
                "card": {
                    "brand": pm["card"]["brand"],
                    "exp_month": pm["card"]["exp_month"],
                    "exp_year": pm["card"]["exp_year"],
                    "last4": pm["card"]["last4"],
                    "decline_code": failure[1] if failure else None,
                },
                "type": "card",
            },
            "refunded": False,
            "status": "failed" if failure else "succeeded",
        }
        self.w.stripe["charge"].append(charge)
        return charge

    def refund(self, charge: dict[str, Any], ts: int) -> None:
        """A goodwill or duplicate-charge refund, full or half, as Stripe shapes it."""
        full = bool(self.rng.random() < 0.6)
        amount = charge["amount"] if full else charge["amount"] // 2
        refund = {
            "id": self.ids.new("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": ts,
            "currency": charge["currency"],
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": {},
            "payment_intent": charge.get("payment_intent"),
            "reason": "requested_by_customer" if full else "duplicate",
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        prev = {"amount_refunded": 0, "refunded": False}
        charge["amount_refunded"], charge["refunded"] = amount, full
        self.w.stripe["refund"].append(refund)
        self.event("refund.created", refund, ts, None)
        self.event("charge.refunded", charge, ts, prev)


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def generate_world(
    accounts: int, seed: int, *, now: datetime | None = None, months: int = 19
) -> World:
    """Build a world in memory: ``accounts`` Stripe customers over ``months`` months."""
    now = now or datetime(2026, 11, 1, tzinfo=UTC)
    return _Builder(accounts, seed, int(now.timestamp()), months).build()


def generate_world_to(
    out: Path,
    accounts: int,
    seed: int,
    *,
    now: datetime | None = None,
    months: int = 19,
    chunk: int = 5_000,
) -> None:
    """Write a world of any size in chunks of ``chunk`` accounts, never all in memory.

    Chunk k draws from ``default_rng([seed, k])``; the catalogue and the Salesforce Users
    come from chunk 0, every chunk shares their ids.
    """
    now = now or datetime(2026, 11, 1, tzinfo=UTC)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stripe").mkdir(exist_ok=True)
    (out / "salesforce").mkdir(exist_ok=True)
    (out / "usage").mkdir(exist_ok=True)
    writers: dict[Path, Any] = {}
    counts: dict[str, int] = {}
    n_owners = max(8, accounts // 150)

    def emit(path: Path, rows: list[dict[str, Any]]) -> None:
        fh = writers.get(path)
        if fh is None:
            fh = writers[path] = gzip.open(path, "wt", compresslevel=1)  # noqa: SIM115 - closed in finally
        fh.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)

    usage = (out / "usage" / "usage.csv").open("w", newline="")
    truth = (out / "truth.csv").open("w", newline="")
    try:
        uw = csv.writer(usage)
        uw.writerow(["customer_id", "day", "active_seats", "licensed_seats"])
        tw: csv.DictWriter[str] | None = None
        for k, lo in enumerate(range(0, accounts, chunk)):
            n = min(chunk, accounts - lo)
            builder = _Builder(n, [seed, k], int(now.timestamp()), months,
                               id_start=k * 10**9, n_owners=n_owners,
                               first_account=lo)  # fmt: skip
            w = builder.build()
            for kind, rows in w.stripe.items():
                if k > 0 and kind in ("product", "price", "coupon"):
                    continue
                emit(out / "stripe" / f"{kind}.jsonl.gz", rows)
                counts[kind] = counts.get(kind, 0) + len(rows)
            events = w.events if k == 0 else [
                e for e in w.events
                if e["type"] not in ("product.created", "price.created", "coupon.created")
            ]  # fmt: skip
            emit(out / "stripe" / "event.jsonl.gz", events)
            counts["event"] = counts.get("event", 0) + len(events)
            for sobject, rows in w.salesforce.items():
                if k > 0 and sobject in ("User", "CurrencyType"):
                    continue
                emit(out / "salesforce" / f"{sobject}.jsonl.gz", rows)
            uw.writerows(w.usage)
            if tw is None:
                tw = csv.DictWriter(truth, fieldnames=list(w.truth[0]))
                tw.writeheader()
            tw.writerows(w.truth)
    finally:
        for fh in writers.values():
            fh.close()
        usage.close()
        truth.close()
    manifest = {
        "format": "churn-world/1",
        "api_version": API_VERSION,
        "now": int(now.timestamp()),
        "seed": seed,
        "accounts": accounts,
        "counts": counts,
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _jsonl(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)


def write_world(world: World, out: Path, *, seed: int | None = None) -> None:
    """Write the folder format (docs/world-format.md)."""
    out.mkdir(parents=True, exist_ok=True)
    for kind, rows in world.stripe.items():
        _jsonl(out / "stripe" / f"{kind}.jsonl.gz", rows)
    _jsonl(out / "stripe" / "event.jsonl.gz", world.events)
    for sobject, rows in world.salesforce.items():
        _jsonl(out / "salesforce" / f"{sobject}.jsonl.gz", rows)
    (out / "usage").mkdir(exist_ok=True)
    with (out / "usage" / "usage.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "day", "active_seats", "licensed_seats"])
        w.writerows(world.usage)
    with (out / "truth.csv").open("w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=list(world.truth[0]) if world.truth else ["x"])
        dw.writeheader()
        dw.writerows(world.truth)
    manifest = {
        "format": "churn-world/1",
        "api_version": API_VERSION,
        "now": world.now,
        "seed": seed,
        "accounts": len(world.truth),
        "counts": {k: len(v) for k, v in world.stripe.items()} | {"event": len(world.events)},
    }
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")
