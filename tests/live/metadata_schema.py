"""Element sequences of the Metadata API types the repository ships, from the Metadata API
WSDL (``<xsd:sequence>``: the order is part of the schema; a deploy refuses an element out
of it with "Element {http://soap.sforce.com/2006/04/metadata}x invalid at this location").

Each type: its elements in order, ``(name, required, repeated, child type or None)``.
``fullName`` comes first, from the base type ``Metadata``.
"""

from __future__ import annotations

NS = "http://soap.sforce.com/2006/04/metadata"

Element = tuple[str, bool, bool, str | None]


def _seq(
    *names: str,
    required: tuple[str, ...] = (),
    repeated: tuple[str, ...] = (),
    types: dict[str, str] | None = None,
) -> list[Element]:
    types = types or {}
    return [(n, n in required, n in repeated, types.get(n)) for n in names]


CUSTOM_FIELD = _seq(
    "fullName",
    "businessOwnerGroup",
    "businessOwnerUser",
    "businessStatus",
    "caseSensitive",
    "complianceGroup",
    "customDataType",
    "defaultValue",
    "deleteConstraint",
    "deprecated",
    "description",
    "displayFormat",
    "elementType",
    "encryptionScheme",
    "escapeMarkup",
    "externalDeveloperName",
    "externalId",
    "fieldManageability",
    "formula",
    "formulaTreatBlanksAs",
    "inlineHelpText",
    "isAIPredictionField",
    "isConvertLeadDisabled",
    "isFilteringDisabled",
    "isNameField",
    "isSortingDisabled",
    "label",
    "length",
    "lookupFilter",
    "maskChar",
    "maskType",
    "metadataRelationshipControllingField",
    "mktDataLakeFieldAttributes",
    "mktDataModelFieldAttributes",
    "populateExistingRows",
    "precision",
    "referenceTargetField",
    "referenceTo",
    "relationshipLabel",
    "relationshipName",
    "relationshipOrder",
    "reparentableMasterDetail",
    "required",
    "restrictedAdminField",
    "scale",
    "securityClassification",
    "startingNumber",
    "stripMarkup",
    "summarizedField",
    "summaryFilterItems",
    "summaryForeignKey",
    "summaryOperation",
    "trackFeedHistory",
    "trackHistory",
    "trackTrending",
    "translateData",
    "type",
    "unique",
    "valueSet",
    "visibleLines",
    "writeRequiresMasterRead",
    repeated=("summaryFilterItems",),
    types={"valueSet": "ValueSet"},
)
VALUE_SET = _seq(
    "controllingField",
    "restricted",
    "valueSetDefinition",
    "valueSetName",
    "valueSettings",
    repeated=("valueSettings",),
    types={"valueSetDefinition": "ValueSetValuesDefinition"},
)
VALUE_SET_VALUES_DEFINITION = _seq(
    "sorted", "value", required=("sorted",), repeated=("value",), types={"value": "CustomValue"}
)
CUSTOM_VALUE = _seq(
    "fullName", "color", "default", "description", "isActive", "label", required=("default",)
)
PERMISSION_SET = _seq(
    "fullName",
    "agentAccesses",
    "applicationVisibilities",
    "classAccesses",
    "customMetadataTypeAccesses",
    "customPermissions",
    "customSettingAccesses",
    "description",
    "emailRoutingAddressAccesses",
    "externalCredentialPrincipalAccesses",
    "externalDataSourceAccesses",
    "fieldPermissions",
    "flowAccesses",
    "genComputingSummaryDefAccesses",
    "hasActivationRequired",
    "label",
    "license",
    "objectPermissions",
    "pageAccesses",
    "recordTypeVisibilities",
    "servicePresenceStatusAccesses",
    "tabSettings",
    "userPermissions",
    required=("label",),
    repeated=(
        "agentAccesses",
        "applicationVisibilities",
        "classAccesses",
        "customMetadataTypeAccesses",
        "customPermissions",
        "customSettingAccesses",
        "emailRoutingAddressAccesses",
        "externalCredentialPrincipalAccesses",
        "externalDataSourceAccesses",
        "fieldPermissions",
        "flowAccesses",
        "genComputingSummaryDefAccesses",
        "objectPermissions",
        "pageAccesses",
        "recordTypeVisibilities",
        "servicePresenceStatusAccesses",
        "tabSettings",
        "userPermissions",
    ),
    types={
        "fieldPermissions": "PermissionSetFieldPermissions",
        "objectPermissions": "PermissionSetObjectPermissions",
        "userPermissions": "PermissionSetUserPermission",
    },
)
FIELD_PERMISSIONS = _seq("editable", "field", "readable", required=("editable", "field"))
OBJECT_PERMISSIONS = _seq(
    "allowCreate",
    "allowDelete",
    "allowEdit",
    "allowRead",
    "modifyAllRecords",
    "object",
    "viewAllFields",
    "viewAllRecords",
    required=(
        "allowCreate",
        "allowDelete",
        "allowEdit",
        "allowRead",
        "modifyAllRecords",
        "object",
        "viewAllRecords",
    ),
)
USER_PERMISSION = _seq("enabled", "name", required=("enabled", "name"))
#: package.xml and destructiveChanges.xml: ``Package`` (types, version) and its members.
PACKAGE = _seq(
    "fullName",
    "apiAccessLevel",
    "description",
    "namespacePrefix",
    "objectPermissions",
    "packageType",
    "postInstallClass",
    "setupWeblink",
    "types",
    "uninstallClass",
    "version",
    repeated=("objectPermissions", "types"),
    types={"types": "PackageTypeMembers"},
)
PACKAGE_TYPE_MEMBERS = _seq("members", "name", required=("name",), repeated=("members",))

TYPES: dict[str, list[Element]] = {
    "CustomField": CUSTOM_FIELD,
    "ValueSet": VALUE_SET,
    "ValueSetValuesDefinition": VALUE_SET_VALUES_DEFINITION,
    "CustomValue": CUSTOM_VALUE,
    "PermissionSet": PERMISSION_SET,
    "PermissionSetFieldPermissions": FIELD_PERMISSIONS,
    "PermissionSetObjectPermissions": OBJECT_PERMISSIONS,
    "PermissionSetUserPermission": USER_PERMISSION,
    "Package": PACKAGE,
    "PackageTypeMembers": PACKAGE_TYPE_MEMBERS,
}
