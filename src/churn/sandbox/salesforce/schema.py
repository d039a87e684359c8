"""The stand-in org's declared schema: the sObjects and fields the service reads and writes.

Types follow describe's ``type`` values; ``external`` marks an External ID field (upsert key).
The Account fields the service owns are built from their specs, :data:`churn.fields.ACCOUNT_FIELDS`
(with their default API names), so the stand-in declares what the metadata deploys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from churn.fields import ACCOUNT_FIELDS, AccountField, Picklist, Text


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str = "string"
    external: bool = False
    updateable: bool = True
    custom: bool = False
    #: The type's shape, as describe gives it: text length, number digits, picklist values.
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    picklist_values: tuple[str, ...] = ()
    #: A restricted picklist: Salesforce refuses a value not in ``picklist_values``.
    restricted: bool = False
    #: A lookup's target objects (describe's ``referenceTo``); empty: not checked.
    reference_to: tuple[str, ...] = ()
    #: Picklist values the org keeps but has deactivated (describe: ``active: false``).
    inactive_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectDef:
    name: str
    key_prefix: str
    fields: dict[str, FieldDef] = field(default_factory=dict)

    def field_named(self, name: str) -> FieldDef | None:
        """Salesforce field names are case-insensitive."""
        low = name.lower()
        for f in self.fields.values():
            if f.name.lower() == low:
                return f
        return None


_SYSTEM = [
    FieldDef("Id", "id", updateable=False),
    FieldDef("IsDeleted", "boolean", updateable=False),
    FieldDef("CreatedDate", "datetime", updateable=False),
    FieldDef("LastModifiedDate", "datetime", updateable=False),
    FieldDef("SystemModstamp", "datetime", updateable=False),
]


def _obj(name: str, prefix: str, *fields: FieldDef, deletable: bool = True) -> ObjectDef:
    """``deletable=False``: an object whose records are never deleted has no IsDeleted
    field (User: "you can't delete a user", they are deactivated; describe lists none)."""
    system = _SYSTEM if deletable else [f for f in _SYSTEM if f.name != "IsDeleted"]
    allf = [*system, *fields]
    return ObjectDef(name, prefix, {f.name: f for f in allf})


def _c(name: str, type_: str = "string", external: bool = False) -> FieldDef:
    return FieldDef(name, type_, external=external, custom=True)


def owned_field(spec: AccountField) -> FieldDef:
    """The stand-in's declaration of an owned Account field, from its spec."""
    t = spec.type
    return FieldDef(
        spec.api_name,
        t.describe_type,
        external=spec.external_id,
        custom=True,
        length=t.length if isinstance(t, Text) else None,
        precision=getattr(t, "precision", None),
        scale=getattr(t, "scale", None),
        picklist_values=t.values if isinstance(t, Picklist) else (),
        restricted=isinstance(t, Picklist) and t.restricted,
    )


#: A new org's Task Status and Priority picklists.
TASK_STATUS_VALUES = (
    "Not Started",
    "In Progress",
    "Completed",
    "Waiting on someone else",
    "Deferred",
)
TASK_PRIORITY_VALUES = ("High", "Normal", "Low")
#: A new org's Case Status, Origin and Priority picklists (Setup > Object Manager > Case);
#: restricted here as an org that restricts them, so a value outside is refused.
CASE_STATUS_VALUES = ("New", "Working", "Escalated", "Closed")
CASE_CLOSED_VALUES = ("Closed",)
CASE_ORIGIN_VALUES = ("Phone", "Email", "Web")
CASE_PRIORITY_VALUES = ("High", "Medium", "Low")
#: Case Status "Defaulted on create": the picklist's default value.
CASE_DEFAULT_STATUS = "New"

#: The custom fields the service owns on Account (it writes them in the push), and
#: Active_Seats__c, which it may read as the usage feed (``CHURN_USAGE__ACCOUNT_FIELD``).
ACCOUNT_CUSTOM_FIELDS = (
    *(owned_field(spec) for spec in ACCOUNT_FIELDS),
    _c("Active_Seats__c", "double"),
)


def default_schema(
    *, multi_currency: bool = True, advanced_currency: bool = False
) -> dict[str, ObjectDef]:
    """The declared schema; ``multi_currency`` adds CurrencyIsoCode and CurrencyType;
    ``advanced_currency`` (advanced currency management, multi-currency only) adds
    DatedConversionRate, which "is not available in single-currency organizations, nor
    is it available if the organization doesn't have advanced currency management"."""
    cur = [FieldDef("CurrencyIsoCode", "picklist")] if multi_currency else []
    schema = [
        _obj(
            "Account",
            "001",
            FieldDef("Name"),
            FieldDef("Website", "url"),
            FieldDef("OwnerId", "reference", reference_to=("User",)),
            FieldDef("Type", "picklist"),
            # Set by a merge on the Accounts it deletes: the Account kept.
            FieldDef("MasterRecordId", "reference", updateable=False, reference_to=("Account",)),
            *cur,
            *ACCOUNT_CUSTOM_FIELDS,
        ),
        _obj(
            "Opportunity",
            "006",
            FieldDef("Name"),
            FieldDef("AccountId", "reference", reference_to=("Account",)),
            FieldDef("StageName", "picklist"),
            FieldDef("Amount", "currency"),
            FieldDef("CloseDate", "date"),
            FieldDef("IsClosed", "boolean"),
            FieldDef("IsWon", "boolean"),
            FieldDef("OwnerId", "reference", reference_to=("User",)),
            *cur,
        ),
        _obj(
            "Contact",
            "003",
            FieldDef("FirstName"),
            FieldDef("LastName"),
            FieldDef("Name", updateable=False),
            FieldDef("Email", "email"),
            FieldDef("AccountId", "reference", reference_to=("Account",)),
        ),
        # The role a Contact plays on an Account (Role: "Decision Maker, Approver, Buyer, and
        # so on"; "each account has only one primary contact role").
        _obj(
            "AccountContactRole",
            "02Z",
            FieldDef("AccountId", "reference", reference_to=("Account",)),
            FieldDef("ContactId", "reference", reference_to=("Contact",)),
            FieldDef("Role", "picklist"),
            FieldDef("IsPrimary", "boolean"),
        ),
        _obj(
            "User",
            "005",
            FieldDef("Name"),
            FieldDef("Email", "email"),
            FieldDef("IsActive", "boolean"),
            FieldDef("ManagerId", "reference", reference_to=("User",)),
            deletable=False,
        ),
        _obj(
            "Task",
            "00T",
            FieldDef("Subject"),
            FieldDef("Description", "textarea"),
            # Related To: polymorphic (Account, Opportunity, ...).
            FieldDef("WhatId", "reference", reference_to=("Account", "Opportunity")),
            # Name: a Contact (or Lead) the Task is about.
            FieldDef("WhoId", "reference", reference_to=("Contact",)),
            FieldDef("OwnerId", "reference", reference_to=("User",)),
            # The standard Task picklists' default values (Setup > Object Manager > Task).
            FieldDef("Status", "picklist", picklist_values=TASK_STATUS_VALUES),
            FieldDef("Priority", "picklist", picklist_values=TASK_PRIORITY_VALUES),
            FieldDef("ActivityDate", "date"),
            FieldDef("IsClosed", "boolean"),
            _c("Churn_Episode_Key__c", external=True),
        ),
        _obj(
            "Case",
            "500",
            FieldDef("CaseNumber", updateable=False),
            FieldDef("Subject"),
            FieldDef("Description", "textarea"),
            FieldDef("AccountId", "reference", reference_to=("Account",)),
            FieldDef("ContactId", "reference", reference_to=("Contact",)),
            # A User or a queue (Group, 00G).
            FieldDef("OwnerId", "reference", reference_to=("User", "Group")),
            FieldDef("RecordTypeId", "reference"),
            FieldDef("Status", "picklist", picklist_values=CASE_STATUS_VALUES, restricted=True),
            FieldDef("Origin", "picklist", picklist_values=CASE_ORIGIN_VALUES, restricted=True),
            FieldDef("Priority", "picklist", picklist_values=CASE_PRIORITY_VALUES, restricted=True),
            FieldDef("IsClosed", "boolean", updateable=False),
            _c("Churn_Case_Key__c", external=True),
        ),
        _obj("Group", "00G", FieldDef("Name"), FieldDef("Type")),
        _obj(
            "Organization",
            "00D",
            FieldDef("Name"),
            FieldDef("IsSandbox", "boolean"),
        ),
        # What ``churn doctor`` reads to see the integration user has its permission set.
        _obj("PermissionSet", "0PS", FieldDef("Name"), FieldDef("Label")),
        _obj(
            "PermissionSetAssignment",
            "0Pa",
            FieldDef("AssigneeId", "reference"),
            FieldDef("PermissionSetId", "reference"),
        ),
    ]
    if multi_currency:
        schema.append(
            _obj(
                "CurrencyType",
                "02u",
                FieldDef("IsoCode", "picklist"),
                FieldDef("ConversionRate", "double"),
                FieldDef("DecimalPlaces", "int"),
                FieldDef("IsActive", "boolean"),
                FieldDef("IsCorporate", "boolean"),
            )
        )
    if multi_currency and advanced_currency:
        schema.append(
            _obj(
                "DatedConversionRate",
                "04w",
                FieldDef("IsoCode", "picklist"),
                FieldDef("ConversionRate", "double"),
                FieldDef("StartDate", "date"),
                # "Read only. The date on which the next effective dated exchange rate
                # will start": the stand-in sets it from the next StartDate of the code.
                FieldDef("NextStartDate", "date", updateable=False),
            )
        )
    return {o.name: o for o in schema}
