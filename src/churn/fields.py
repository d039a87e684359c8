"""The Account fields the push owns: one declaration each, everything else derives from it.

Each :class:`AccountField` says what the field is in Salesforce (its default API name,
label and type with the type's shape, as its ``.field-meta.xml`` declares it) and where
its value comes from (a column of the ``account_health`` mart and the :class:`Kind` of
conversion the push applies to it). From :data:`ACCOUNT_FIELDS` derive:

- ``churn.settings.ACCOUNT_FIELD_NAMES`` and the default of ``PushSettings.account_fields``
  (``CHURN_PUSH__ACCOUNT_FIELDS`` still replaces that mapping);
- the push's values (``churn.pipelines.push.values``, one branch per kind) and their form
  on the wire (``churn.pipelines.push.plan``: text cut to the field's length, dates in ISO);
- the stand-in org's Account schema (``churn.sandbox.salesforce.schema``);
- the registry tests (``tests/push/test_account_fields_registry.py``), which check each
  field's metadata, permission and value against its declaration.

To add a pushed field:

1. add its spec to :data:`ACCOUNT_FIELDS` (a new kind of conversion, or a column the
   ``account_health`` mart lacks, is push or scoring code on top);
2. add its ``salesforce/force-app/main/default/objects/Account/fields/<Name>.field-meta.xml``
   (same fullName, label, type and shape; the description starting with
   :data:`OWNED_MARKER`; elements in the Metadata API's order, which
   ``tests/live/test_metadata_schema.py`` checks), and its ``Account.<Name>`` member in
   ``salesforce/destructive/destructiveChanges.xml``;
3. add its line ``<fieldPermissions><editable>true</editable><field>Account.<Name></field>
   <readable>true</readable></fieldPermissions>`` (the Metadata API's element order) to
   ``salesforce/force-app/main/default/permissionsets/Churn_Signals_Integration.permissionset-meta.xml``.

This module is plain data: it imports nothing from the rest of the package (import-linter
keeps it below ``churn.settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

#: How every owned field's ``.field-meta.xml`` description starts; an Account field whose
#: metadata carries it is owned by the service and must be declared here.
OWNED_MARKER = "Written by the churn-signals service"


@dataclass(frozen=True)
class Picklist:
    """A picklist; ``restricted``: Salesforce refuses a value not in ``values``."""

    values: tuple[str, ...]
    restricted: bool = True
    metadata_type: ClassVar[str] = "Picklist"
    describe_type: ClassVar[str] = "picklist"


@dataclass(frozen=True)
class Number:
    """A number of ``precision`` digits, ``scale`` of them after the point."""

    precision: int
    scale: int = 0
    metadata_type: ClassVar[str] = "Number"
    describe_type: ClassVar[str] = "double"


@dataclass(frozen=True)
class Currency:
    """An amount in the record's currency (the org's, in a single-currency org)."""

    precision: int = 16
    scale: int = 2
    metadata_type: ClassVar[str] = "Currency"
    describe_type: ClassVar[str] = "currency"


@dataclass(frozen=True)
class Percent:
    """A percentage (42 is 42 %)."""

    precision: int
    scale: int = 0
    metadata_type: ClassVar[str] = "Percent"
    describe_type: ClassVar[str] = "percent"


@dataclass(frozen=True)
class Date:
    """A date without a time."""

    metadata_type: ClassVar[str] = "Date"
    describe_type: ClassVar[str] = "date"


@dataclass(frozen=True)
class Text:
    """Text of at most ``length`` characters."""

    length: int = 255
    metadata_type: ClassVar[str] = "Text"
    describe_type: ClassVar[str] = "string"


SalesforceType = Picklist | Number | Currency | Percent | Date | Text


class Kind(StrEnum):
    """How the push turns the ``source`` column of an ``account_health`` row into the value.

    A NULL column sends NULL (clears the field) unless the kind says it leaves the field
    alone.
    """

    #: The column's value as it is.
    VALUE = "value"
    #: A number, rounded to the field's scale (an int at scale 0).
    NUMBER = "number"
    #: Integer minor units in the row's ``reporting_currency`` -> a decimal amount with that
    #: currency's exponent (JPY 0, KWD 3). NULL (a missing rate) leaves the field alone:
    #: unknown is not the same as none. A Currency field holds an amount in its record's
    #: currency: in a multi-currency org the amount is converted to the Account's
    #: ``CurrencyIsoCode`` at the org's rates (no rate: left alone). A Number field keeps
    #: the reporting currency (its label names it), rounded to the field's scale.
    MONEY = "money"
    #: A timestamp (or date) -> its date, sent as ISO ``YYYY-MM-DD``.
    DATE = "date"
    #: The first item of a JSON list; a dict item gives its ``reason`` (or ``text``).
    FIRST = "first"
    #: The Stripe customer ids of a JSON list, less the links guessed by email domain or
    #: name (never written back: the next run would read them as authoritative), sorted and
    #: comma-joined. None trusted leaves the field alone.
    CUSTOMER_IDS = "customer_ids"


#: The Salesforce types each kind's value fits.
_KIND_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.VALUE: (Picklist, Number, Currency, Percent, Date, Text),
    Kind.NUMBER: (Number, Currency, Percent),
    Kind.MONEY: (Currency, Number),
    Kind.DATE: (Date,),
    Kind.FIRST: (Text,),
    Kind.CUSTOMER_IDS: (Text,),
}


@dataclass(frozen=True)
class AccountField:
    """One Account field the push owns."""

    #: Logical name: the key in ``PushSettings.account_fields``.
    name: str
    #: The default Salesforce API name (the ``.field-meta.xml``'s fullName).
    api_name: str
    label: str
    type: SalesforceType
    #: The ``account_health`` column the value comes from.
    source: str
    kind: Kind
    #: An External ID (``<externalId>true</externalId>``).
    external_id: bool = False
    #: Moves in Salesforce only when it changes by more than ``PushSettings.risk_score_margin``.
    margin: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.type, _KIND_TYPES[self.kind]):
            raise TypeError(
                f"{self.name}: a {self.kind.value} value does not fit a "
                f"{self.type.metadata_type} field"
            )


ACCOUNT_FIELDS: tuple[AccountField, ...] = (
    AccountField(
        name="payment_health",
        api_name="Payment_Health__c",
        label="Payment Health",
        type=Picklist(("Failed", "At Risk", "No Payment Method", "Healthy")),
        source="payment_health",
        kind=Kind.VALUE,
    ),
    AccountField(
        name="risk_score",
        api_name="Churn_Risk__c",
        label="Churn Risk Score",
        type=Number(precision=3, scale=0),
        source="risk_score",
        kind=Kind.NUMBER,
        margin=True,
    ),
    AccountField(
        name="total_mrr",
        api_name="Total_MRR__c",
        label="Total MRR",
        type=Currency(precision=16, scale=2),
        source="total_mrr_minor",
        kind=Kind.MONEY,
    ),
    AccountField(
        name="total_mrr_corporate",
        api_name="Total_MRR_Corporate__c",
        label="Total MRR (Reporting Currency)",
        type=Number(precision=18, scale=2),
        source="total_mrr_minor",
        kind=Kind.MONEY,
    ),
    AccountField(
        name="mrr_at_risk",
        api_name="MRR_At_Risk__c",
        label="MRR At Risk",
        type=Currency(precision=16, scale=2),
        source="expected_mrr_at_risk_minor",
        kind=Kind.MONEY,
    ),
    AccountField(
        name="next_renewal_date",
        api_name="Next_Renewal_Date__c",
        label="Next Renewal Date",
        type=Date(),
        source="next_renewal_at",
        kind=Kind.DATE,
    ),
    AccountField(
        name="days_since_last_payment",
        api_name="Days_Since_Last_Payment__c",
        label="Days Since Last Payment",
        type=Number(precision=6, scale=0),
        source="days_since_last_payment",
        kind=Kind.NUMBER,
    ),
    AccountField(
        name="subscription_count",
        api_name="Subscription_Count__c",
        label="Subscription Count",
        type=Number(precision=6, scale=0),
        source="subscription_count",
        kind=Kind.NUMBER,
    ),
    AccountField(
        name="stripe_customer_id",
        api_name="Stripe_Customer_Id__c",
        label="Stripe Customer Id",
        type=Text(length=255),
        source="stripe_customer_ids",
        kind=Kind.CUSTOMER_IDS,
        external_id=True,
    ),
    AccountField(
        name="top_reason",
        api_name="Churn_Top_Reason__c",
        label="Churn Top Reason",
        type=Text(length=255),
        source="top_reasons",
        kind=Kind.FIRST,
    ),
)

_BY_NAME = {f.name: f for f in ACCOUNT_FIELDS}
if len(_BY_NAME) != len(ACCOUNT_FIELDS):
    raise ValueError("ACCOUNT_FIELDS: two fields share a logical name")


def account_field(name: str) -> AccountField:
    """The spec of the owned field with logical name ``name`` (KeyError when unknown)."""
    return _BY_NAME[name]
