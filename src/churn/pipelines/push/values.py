"""The owned Account fields' values, from one ``account_health`` row, by their specs.

Every field of :data:`churn.fields.ACCOUNT_FIELDS` reads its ``source`` column and turns it
into its value by its :class:`~churn.fields.Kind`, in :func:`field_value` (one branch per
kind): a new field of an existing kind needs no code here. The values are in logical
names; :mod:`churn.pipelines.push.plan` puts them in Salesforce's form (text cut to the
field's length, dates in ISO) and maps them to the configured API names.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, assert_never

from churn.fields import ACCOUNT_FIELDS, AccountField, Currency, Kind, Number, Percent
from churn.settings import Settings
from churn.signals import money


class _LeaveAlone:
    """The value of a field the push has nothing trusted to say about: not written."""

    def __repr__(self) -> str:
        return "LEAVE_ALONE"


LEAVE_ALONE: Final = _LeaveAlone()

#: The ``account_health`` column naming the currency of the money columns.
CURRENCY_COLUMN = "reporting_currency"
#: Joined to the row by ``sync.build_plan``: the Account's ``CurrencyIsoCode`` (multi-currency
#: orgs), and each money column converted to it at the org's rates as of the scoring.
ACCOUNT_CURRENCY_COLUMN = "_account_currency"
ACCOUNT_AMOUNT_PREFIX = "_account_currency_"
#: Joined to the row by ``sync.build_plan``: the customers linked by a guess.
GUESSED_CUSTOMERS_COLUMN = "_guessed_customer_ids"
#: Joined to the row by ``sync.build_plan``: the customers the Account's field links.
FIELD_CUSTOMERS_COLUMN = "_field_customer_ids"


def _listish(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return list(value) if isinstance(value, list | tuple) else [value]


def field_value(spec: AccountField, row: dict[str, Any], settings: Settings) -> Any:
    """The value of one owned field for one ``account_health`` row, or :data:`LEAVE_ALONE`."""
    raw = row.get(spec.source)
    match spec.kind:
        case Kind.VALUE:
            return raw
        case Kind.NUMBER:
            assert isinstance(spec.type, Number | Currency | Percent)
            if raw is None:
                return None
            if spec.type.scale == 0:
                return round(raw)
            return round(Decimal(str(raw)), spec.type.scale)
        case Kind.MONEY:
            if raw is None:
                return LEAVE_ALONE  # unknown (no currency rate): not the same as none
            currency = str(row.get(CURRENCY_COLUMN) or settings.signals.reporting_currency)
            if isinstance(spec.type, Number):
                # The reporting-currency figure: a number, the field's label names it.
                return round(money.to_decimal(int(raw), currency), spec.type.scale)
            account_currency = row.get(ACCOUNT_CURRENCY_COLUMN)
            if account_currency and str(account_currency).upper() != currency.upper():
                # A Currency field is in its record's currency (multi-currency orgs).
                converted = row.get(f"{ACCOUNT_AMOUNT_PREFIX}{spec.source}")
                if converted is None:
                    return LEAVE_ALONE  # no rate for the Account's currency
                return money.to_decimal(int(converted), str(account_currency))
            return money.to_decimal(int(raw), currency)
        case Kind.DATE:
            if isinstance(raw, datetime):
                return raw.date()
            return raw if isinstance(raw, date) else None
        case Kind.FIRST:
            items = _listish(raw)
            if not items:
                return None
            first = items[0]
            if isinstance(first, dict):
                return str(first.get("reason") or first.get("text") or json.dumps(first))
            return str(first)
        case Kind.CUSTOMER_IDS:
            guessed = set(_listish(row.get(GUESSED_CUSTOMERS_COLUMN)))
            # The customers the field already links stay in it, with or without a
            # subscription in force (raw lists those with one): dropping them moved their
            # links to a weaker rule on the next run.
            linked = {*_listish(raw), *_listish(row.get(FIELD_CUSTOMERS_COLUMN))}
            customers = sorted(str(c) for c in linked if c not in guessed)
            if not customers:
                return LEAVE_ALONE  # nothing trusted to say
            return ", ".join(customers) or None
    assert_never(spec.kind)  # a new Kind without its branch: mypy says so


def account_values(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The mapped owned fields of one ``account_health`` row (logical name -> value)."""
    mapped = settings.push.account_fields
    values = {}
    for spec in ACCOUNT_FIELDS:
        if spec.name not in mapped:
            continue
        value = field_value(spec, row, settings)
        if value is not LEAVE_ALONE:
            values[spec.name] = value
    return values
