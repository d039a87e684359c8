"""Issue 17: metadata that deploys. No org is reachable here, so every XML file under
``salesforce/`` is checked against the Metadata API's element sequences
(``metadata_schema``, from the WSDL): known elements only, in the schema's order, the
required ones present, a non-repeated one at most once.

Before: the permission set wrote ``Activity.Churn_Episode_Key__c`` (field permissions on
activity fields are per object: ``Task.<field>`` and ``Event.<field>``), had no object or
user permissions but Account's, wrote ``fieldPermissions`` children as field, editable,
readable and ``objectPermissions`` starting with ``object`` (the schema's order is
editable, field, readable and allowCreate ... viewAllRecords), put ``label`` before
``description``, and the fields put ``label`` first; ``Active_Seats__c``, which
``CHURN_USAGE__ACCOUNT_FIELD`` reads, was not shipped; removing the metadata had no
manifest.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from metadata_schema import NS, TYPES

from churn.fields import ACCOUNT_FIELDS
from churn.sandbox.salesforce.schema import ACCOUNT_CUSTOM_FIELDS
from churn.settings import Settings

SALESFORCE = Path(__file__).resolve().parents[2] / "salesforce"
DEFAULT = SALESFORCE / "force-app/main/default"
PERMISSION_SET = DEFAULT / "permissionsets/Churn_Signals_Integration.permissionset-meta.xml"
FILES = sorted(SALESFORCE.rglob("*.xml"))
Q = f"{{{NS}}}"


def _problems(el: ET.Element, type_name: str, where: str) -> list[str]:
    seq = TYPES[type_name]
    names = [s[0] for s in seq]
    out = []
    last = -1
    seen: dict[str, int] = {}
    for child in el:
        if not child.tag.startswith(Q):
            out.append(f"{where}: {child.tag} is not in the metadata namespace")
            continue
        tag = child.tag.removeprefix(Q)
        if tag not in names:
            out.append(f"{where}: <{tag}> is not an element of {type_name}")
            continue
        index = names.index(tag)
        if index < last:
            out.append(f"{where}: <{tag}> is out of {type_name}'s order (after <{names[last]}>)")
        last = max(last, index)
        seen[tag] = seen.get(tag, 0) + 1
        _, _, repeated, child_type = seq[index]
        if seen[tag] > 1 and not repeated:
            out.append(f"{where}: <{tag}> twice in {type_name}")
        if child_type is not None:
            out += _problems(child, child_type, f"{where}/{tag}")
    for name, required, _, _ in seq:
        if required and name not in seen:
            out.append(f"{where}: {type_name} lacks required <{name}>")
    return out


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SALESFORCE)) for p in FILES])
def test_the_file_follows_the_metadata_api_schema(path: Path) -> None:
    root = ET.parse(path).getroot()
    type_name = root.tag.removeprefix(Q)
    assert root.tag.startswith(Q) and type_name in TYPES, root.tag
    assert _problems(root, type_name, path.name) == []


def _permission_set() -> ET.Element:
    return ET.parse(PERMISSION_SET).getroot()


def _text(el: ET.Element, tag: str) -> str | None:
    return el.findtext(f"{Q}{tag}")


def test_activity_field_permissions_are_written_per_object() -> None:
    """Metadata API, PermissionSet fieldPermissions ``field``: "the name of the field
    ... for example, Account.Name"; an Activity custom field is granted on Task and on
    Event, so the push's Task external id is ``Task.Churn_Episode_Key__c``."""
    fields = {
        _text(p, "field"): _text(p, "editable")
        for p in _permission_set().iterfind(f"{Q}fieldPermissions")
    }
    assert not [f for f in fields if (f or "").startswith("Activity.")]
    ext = Settings().salesforce.task_external_id_field
    assert fields[f"Task.{ext}"] == "true"
    assert fields[f"Event.{ext}"] == "false"


def test_object_and_user_permissions_cover_what_the_service_does() -> None:
    objects = {
        _text(p, "object"): {c.tag.removeprefix(Q): c.text for c in p}
        for p in _permission_set().iterfind(f"{Q}objectPermissions")
    }
    assert objects["Account"]["allowRead"] == objects["Account"]["allowEdit"] == "true"
    assert objects["Account"]["allowDelete"] == "false"
    for name in ("Contact", "Opportunity"):
        assert objects[name]["allowRead"] == "true" and objects[name]["allowEdit"] == "false"
    users = {
        _text(p, "name"): _text(p, "enabled")
        for p in _permission_set().iterfind(f"{Q}userPermissions")
    }
    # Tasks have no object permissions: creating and editing them is "Edit Tasks".
    assert users == {"ApiEnabled": "true", "EditTask": "true"}
    private = ET.parse(
        DEFAULT / "permissionsets/Churn_Signals_Integration_All_Accounts.permissionset-meta.xml"
    ).getroot()
    [account] = private.iterfind(f"{Q}objectPermissions")
    assert _text(account, "modifyAllRecords") == _text(account, "viewAllRecords") == "true"


def test_active_seats_is_shipped_for_the_usage_field_option() -> None:
    path = DEFAULT / "objects/Account/fields/Active_Seats__c.field-meta.xml"
    root = ET.parse(path).getroot()
    assert (_text(root, "fullName"), _text(root, "type")) == ("Active_Seats__c", "Number")
    standin = {f.name: f.type for f in ACCOUNT_CUSTOM_FIELDS}
    assert standin["Active_Seats__c"] == "double"
    fields = {
        _text(p, "field"): (_text(p, "readable"), _text(p, "editable"))
        for p in _permission_set().iterfind(f"{Q}fieldPermissions")
    }
    assert fields["Account.Active_Seats__c"] == ("true", "false")  # read, never written


def test_the_removal_manifest_names_every_owned_field_and_the_permission_sets() -> None:
    root = ET.parse(SALESFORCE / "destructive/destructiveChanges.xml").getroot()
    members = {
        _text(t, "name"): {m.text for m in t.iterfind(f"{Q}members")}
        for t in root.iterfind(f"{Q}types")
    }
    owned = {f"Account.{f.api_name}" for f in ACCOUNT_FIELDS}
    ext = Settings().salesforce.task_external_id_field
    case_ext = Settings().case.external_id_field
    assert members["CustomField"] == owned | {f"Activity.{ext}", f"Case.{case_ext}"}
    assert members["PermissionSet"] == {
        p.name.removesuffix(".permissionset-meta.xml")
        for p in (DEFAULT / "permissionsets").glob("*.xml")
    }
    project = json.loads((SALESFORCE / "sfdx-project.json").read_text())
    assert project["sourceApiVersion"] == Settings().salesforce.api_version


def test_the_case_external_id_field_is_shipped_with_its_permissions() -> None:
    """The Case upsert key: a unique, case-sensitive External ID text field, editable by the
    integration user, which may create and edit Cases (not delete them)."""
    name = Settings().case.external_id_field
    root = ET.parse(DEFAULT / f"objects/Case/fields/{name}.field-meta.xml").getroot()
    assert _text(root, "fullName") == name
    assert (_text(root, "type"), _text(root, "externalId"), _text(root, "unique")) == (
        "Text",
        "true",
        "true",
    )
    fields = {
        _text(p, "field"): (_text(p, "readable"), _text(p, "editable"))
        for p in _permission_set().iterfind(f"{Q}fieldPermissions")
    }
    assert fields[f"Case.{name}"] == ("true", "true")
    objects = {
        _text(p, "object"): (
            _text(p, "allowCreate"),
            _text(p, "allowEdit"),
            _text(p, "allowDelete"),
        )
        for p in _permission_set().iterfind(f"{Q}objectPermissions")
    }
    assert objects["Case"] == ("true", "true", "false")
