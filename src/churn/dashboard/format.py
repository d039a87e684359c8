"""Display helpers: amounts with their currency's symbol and decimals, and record links.

Amounts stay integer minor units until here; :func:`churn.signals.money.to_decimal` is the
one conversion. Links are built from settings, so a sandbox points at its stand-ins.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from churn.settings import STRIPE_DEFAULT_API_BASE, Settings

# One table of currency symbols: the run summary's and the Tasks' amounts read the same.
from churn.signals.money import SYMBOLS, exponent, to_decimal

__all__ = [
    "SYMBOLS",
    "major",
    "money",
    "money_short",
    "salesforce_account_url",
    "stripe_base_url",
    "stripe_customer_url",
]


def _prefix(currency: str) -> str:
    code = currency.upper()
    return SYMBOLS.get(code, f"{code} ")


def major(minor: int | None, currency: str) -> float | None:
    """Minor units as a float in the major unit, for charts and number columns only."""
    if minor is None:
        return None
    return float(to_decimal(int(minor), currency))


def money(minor: int | None, currency: str) -> str:
    """``$1,234.50``, ``¥1,235``, ``KWD 1.235``: the currency's own decimals."""
    if minor is None:
        return "n/a"
    value = to_decimal(int(minor), currency)
    places = exponent(currency)
    sign = "-" if value < 0 else ""
    return f"{sign}{_prefix(currency)}{abs(value):,.{places}f}"


def money_short(minor: int | None, currency: str) -> str:
    """Whole major units (``$12,346``) for headline figures; rounded half up."""
    if minor is None:
        return "n/a"
    value = to_decimal(int(minor), currency).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}{_prefix(currency)}{abs(value):,.0f}"


def salesforce_account_url(settings: Settings, account_id: str) -> str | None:
    """The Account's Lightning record page on the configured org (None without an org, or
    for an account that is only a Stripe customer)."""
    base = settings.salesforce.instance_url
    if not base or account_id.startswith("cus_"):
        return None
    if not base.startswith(("http://", "https://")):
        base = f"https://{base}"
    return f"{base.rstrip('/')}/lightning/r/Account/{account_id}/view"


def stripe_base_url(settings: Settings) -> str:
    """Where customers are linked: ``stripe.dashboard_url``, else Stripe's Dashboard
    (``/test`` with a test key), else the stand-in's API when ``api_base`` points at one."""
    stripe = settings.stripe
    if stripe.dashboard_url:
        return stripe.dashboard_url.rstrip("/")
    if stripe.api_base != STRIPE_DEFAULT_API_BASE:
        return f"{stripe.api_base}/v1"
    return "https://dashboard.stripe.com" + ("/test" if stripe.key_mode == "test" else "")


def stripe_customer_url(settings: Settings, customer_id: str) -> str:
    return f"{stripe_base_url(settings)}/customers/{customer_id}"
