"""The Salesforce metadata shipped in source format declares every field the push writes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from churn.settings import ACCOUNT_FIELD_NAMES, Settings

OBJECTS = Path(__file__).resolve().parents[2] / "salesforce/force-app/main/default/objects"
NS = {"m": "http://soap.sforce.com/2006/04/metadata"}


def _field(obj: str, name: str) -> ET.Element:
    path = OBJECTS / obj / "fields" / f"{name}.field-meta.xml"
    assert path.exists(), f"no metadata for {obj}.{name}"
    root = ET.parse(path).getroot()
    assert root.findtext("m:fullName", namespaces=NS) == name
    return root


def test_every_default_account_field_is_declared() -> None:
    mapping = Settings().push.account_fields
    assert set(mapping) == set(ACCOUNT_FIELD_NAMES)
    for name in mapping.values():
        _field("Account", name)
    picklist = _field("Account", mapping["payment_health"])
    values = {v.text for v in picklist.iterfind(".//m:value/m:fullName", NS)}
    assert values == {"Failed", "At Risk", "No Payment Method", "Healthy"}


def test_task_external_id_field_is_an_external_id() -> None:
    field = _field("Activity", Settings().salesforce.task_external_id_field)
    assert field.findtext("m:externalId", namespaces=NS) == "true"
