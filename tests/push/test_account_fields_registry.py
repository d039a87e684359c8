"""Every owned Account field, from its spec in ``churn.fields.ACCOUNT_FIELDS``: its metadata,
its permission, its value in a push and its declaration in the stand-in.

Parametrized over the registry, so a new field is tested without editing this file; and the
other way round, every Account field the metadata marks as the service's (its description
starts with ``OWNED_MARKER``, or the permission set lets the integration user edit it) must
be declared there.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from push_world import AS_OF, RENEWAL, World, account_id

from churn.fields import (
    ACCOUNT_FIELDS,
    OWNED_MARKER,
    AccountField,
    Currency,
    Date,
    Kind,
    Number,
    Percent,
    Picklist,
    Text,
)
from churn.pipelines.push.plan import ACCOUNT
from churn.pipelines.push.sync import build_plan
from churn.sandbox.salesforce.schema import default_schema
from churn.settings import Settings, load_settings

METADATA = Path(__file__).resolve().parents[2] / "salesforce/force-app/main/default"
ACCOUNT_XML = METADATA / "objects/Account/fields"
PERMISSION_SET = METADATA / "permissionsets/Churn_Signals_Integration.permissionset-meta.xml"
NS = {"m": "http://soap.sforce.com/2006/04/metadata"}
#: CustomField <type> -> the type describe reports for it (what the stand-in must say).
DESCRIBE_TYPE = {
    "Checkbox": "boolean",
    "Currency": "currency",
    "Date": "date",
    "DateTime": "datetime",
    "Number": "double",
    "Percent": "percent",
    "Picklist": "picklist",
    "Text": "string",
    "TextArea": "textarea",
}

fields = pytest.mark.parametrize("spec", ACCOUNT_FIELDS, ids=[f.name for f in ACCOUNT_FIELDS])


def _text(el: ET.Element, tag: str) -> str | None:
    return el.findtext(f"m:{tag}", namespaces=NS)


def _xml(api_name: str) -> ET.Element:
    path = ACCOUNT_XML / f"{api_name}.field-meta.xml"
    assert path.exists(), f"no metadata {path.relative_to(METADATA.parents[2])}"
    return ET.parse(path).getroot()


def _shape(root: ET.Element) -> dict[str, Any]:
    """What a CustomField declares about its type, in the spec's terms."""
    values = root.find("m:valueSet", NS)
    return {
        "type": _text(root, "type"),
        "length": _text(root, "length"),
        "precision": _text(root, "precision"),
        "scale": _text(root, "scale"),
        "picklist": tuple(
            v.text or "" for v in root.iterfind(".//m:valueSetDefinition/m:value/m:fullName", NS)
        ),
        "restricted": None if values is None else _text(values, "restricted"),
    }


def _spec_shape(spec: AccountField) -> dict[str, Any]:
    t = spec.type
    digits = t if isinstance(t, Number | Currency | Percent) else None
    return {
        "type": t.metadata_type,
        "length": str(t.length) if isinstance(t, Text) else None,
        "precision": str(digits.precision) if digits else None,
        "scale": str(digits.scale) if digits else None,
        "picklist": t.values if isinstance(t, Picklist) else (),
        "restricted": str(t.restricted).lower() if isinstance(t, Picklist) else None,
    }


def _permissions() -> dict[str, dict[str, str | None]]:
    root = ET.parse(PERMISSION_SET).getroot()
    return {
        _text(p, "field") or "": {
            "readable": _text(p, "readable"),
            "editable": _text(p, "editable"),
        }
        for p in root.iterfind("m:fieldPermissions", NS)
    }


def _owned_in_metadata() -> list[str]:
    """Account fields whose metadata says the service writes them."""
    owned = []
    for path in sorted(ACCOUNT_XML.glob("*.field-meta.xml")):
        root = ET.parse(path).getroot()
        if (_text(root, "description") or "").startswith(OWNED_MARKER):
            owned.append(_text(root, "fullName") or path.name)
    return owned


DECLARED = {f.api_name for f in ACCOUNT_FIELDS}


# ---- the metadata -----------------------------------------------------------------


@fields
def test_field_has_its_metadata(spec: AccountField) -> None:
    root = _xml(spec.api_name)
    assert _text(root, "fullName") == spec.api_name
    assert _text(root, "label") == spec.label
    assert _shape(root) == _spec_shape(spec)
    assert (_text(root, "externalId") == "true") == spec.external_id
    assert (_text(root, "description") or "").startswith(OWNED_MARKER), (
        "an owned field's description starts with OWNED_MARKER"
    )


@fields
def test_field_is_readable_and_editable_in_the_permission_set(spec: AccountField) -> None:
    granted = _permissions().get(f"Account.{spec.api_name}")
    assert granted is not None, f"no fieldPermissions for Account.{spec.api_name}"
    assert granted == {"readable": "true", "editable": "true"}


@pytest.mark.parametrize("api_name", _owned_in_metadata())
def test_every_owned_field_in_the_metadata_is_declared(api_name: str) -> None:
    assert api_name in DECLARED, (
        f"{api_name}.field-meta.xml says the service writes it; declare it in ACCOUNT_FIELDS"
    )


def test_the_permission_set_lets_the_service_edit_only_declared_account_fields() -> None:
    editable = {
        name.removeprefix("Account.")
        for name, granted in _permissions().items()
        if name.startswith("Account.") and granted["editable"] == "true"
    }
    assert editable <= DECLARED, f"editable but not declared: {sorted(editable - DECLARED)}"


# ---- the value --------------------------------------------------------------------


def _mart_columns(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'account_health' ORDER BY ordinal_position"
        ).fetchall()
    )


def _sample(column: str, data_type: str) -> Any:
    """A value with data in it for any account_health column, by its type."""
    for spec in ACCOUNT_FIELDS:
        if spec.source == column and isinstance(spec.type, Picklist):
            return spec.type.values[0]
    if column == "reporting_currency":
        return "USD"
    if data_type == "JSON":
        return json.dumps(["cus_registry_1"])
    if data_type == "BOOLEAN":
        return False
    if data_type in ("INTEGER", "BIGINT", "SMALLINT", "HUGEINT"):
        return 123450 if data_type == "BIGINT" else 42
    if data_type == "DOUBLE":
        return 0.5
    if data_type == "TIMESTAMP":
        return RENEWAL
    if data_type == "DATE":
        return RENEWAL.date()
    return "registry sample text"


def _full_row(world: World) -> None:
    """One account with data in every account_health column."""
    columns = _mart_columns(world.con)
    row = {c: _sample(c, t) for c, t in columns.items()}
    row.update(account_id=account_id(1), as_of=AS_OF)
    world.con.execute(
        f"INSERT INTO account_health ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    world.accounts([account_id(1)])


def _fits(spec: AccountField, value: Any) -> bool:
    """Whether a value, as sent, is one Salesforce takes for the field's type."""
    t = spec.type
    if isinstance(t, Text):
        return isinstance(value, str) and 0 < len(value) <= t.length
    if isinstance(t, Picklist):
        return value in t.values or not t.restricted
    if isinstance(t, Date):
        return isinstance(value, str) and date.fromisoformat(value).isoformat() == value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    amount = Decimal(str(value))
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent <= t.scale and abs(amount) < Decimal(10) ** (t.precision - t.scale)


@fields
def test_source_is_an_account_health_column(
    spec: AccountField, con: duckdb.DuckDBPyConnection
) -> None:
    assert spec.source in _mart_columns(con)


@fields
def test_field_gets_a_value_when_pushed(spec: AccountField, world: World) -> None:
    _full_row(world)
    plan = build_plan(Settings(), world.con)
    [change] = [c for c in plan.changes if c.sobject == ACCOUNT]
    assert spec.api_name in change.fields, f"{spec.name}: no value pushed"
    value = change.fields[spec.api_name]
    assert value is not None and _fits(spec, value), f"{spec.name}: {value!r}"
    assert change.state[spec.api_name] is not None


def test_the_mapping_picks_the_fields_and_their_names(world: World) -> None:
    """CHURN_PUSH__ACCOUNT_FIELDS replaces the default mapping: a field left out is not
    written, a field mapped elsewhere is written there."""
    mapping = {f.name: f.api_name for f in ACCOUNT_FIELDS if f.name != "payment_health"}
    mapping["risk_score"] = "Renamed_Risk__c"
    settings = load_settings(env={"CHURN_PUSH__ACCOUNT_FIELDS": json.dumps(mapping)})
    assert settings.push.account_fields == mapping
    _full_row(world)
    [change] = [c for c in build_plan(settings, world.con).changes if c.sobject == ACCOUNT]
    assert set(change.fields) == set(mapping.values())
    assert change.fields["Renamed_Risk__c"] == 42


def test_a_kind_refuses_a_type_it_does_not_fit() -> None:
    with pytest.raises(TypeError, match="money"):
        AccountField("x", "X__c", "X", Text(), "total_mrr_minor", Kind.MONEY)


# ---- the stand-in -----------------------------------------------------------------


@fields
def test_stand_in_declares_the_field_as_its_metadata_does(spec: AccountField) -> None:
    declared = default_schema()["Account"].field_named(spec.api_name)
    assert declared is not None, f"the stand-in has no Account.{spec.api_name}"
    shape = _shape(_xml(spec.api_name))
    assert declared.type == DESCRIBE_TYPE[str(shape["type"])]
    assert declared.custom and declared.updateable
    assert declared.external == spec.external_id
    assert declared.length == (int(shape["length"]) if shape["length"] else None)
    assert declared.precision == (int(shape["precision"]) if shape["precision"] else None)
    assert declared.scale == (int(shape["scale"]) if shape["scale"] else None)
    assert declared.picklist_values == shape["picklist"]
