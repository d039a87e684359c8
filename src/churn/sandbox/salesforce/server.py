"""A stateful loopback stand-in for Salesforce's REST API, served over TLS.

simple-salesforce always builds ``https://`` URLs, so the server serves TLS with a
certificate from a CA made by ``trustme`` at start-up; clients trust ``ca_path``.

Follows the documented REST API for what this service uses: OAuth token login
(password, client-credentials and JWT bearer flows), ``query``/``queryAll`` with ``nextRecordsUrl``
paging, sObject create/read/update/upsert/delete, sObject Collections, ``describe``,
``limits`` and the ``Sforce-Limit-Info`` header with a daily budget, IsDeleted for deletes,
validation rules answering FIELD_CUSTOM_VALIDATION_EXCEPTION. Errors use Salesforce's body
shape: a JSON list of ``{message, errorCode, fields}``.

It enforces what a real org enforces on API writes (records put in with ``seed`` are not
checked, as a data load by an admin would not be): lookups (a reference to a record that
is not there is INVALID_CROSS_REFERENCE_KEY, to a deleted one ENTITY_IS_DELETED, to the
wrong object FIELD_INTEGRITY_EXCEPTION), restricted picklists
(INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST), read-only fields and field-level security
(INVALID_FIELD_FOR_INSERT_UPDATE, from the declared schema plus :meth:`set_field`), Id
format (15 or 18 letters and digits, else MALFORMED_ID). Faults a test sets on the
running server: sessions that expire (401 INVALID_SESSION_ID, :meth:`expire_sessions`),
rows locked by another transaction (UNABLE_TO_LOCK_ROW, :meth:`lock_rows`), outages
(:meth:`fail_next`), answers cut short (:meth:`truncate_next`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import secrets
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from churn.errors import SandboxError
from churn.sandbox.salesforce import soql
from churn.sandbox.salesforce.schema import (
    CASE_CLOSED_VALUES,
    CASE_DEFAULT_STATUS,
    FieldDef,
    ObjectDef,
    default_schema,
)

#: A validation rule: (sobject, merged record) -> an error message, or None to accept.
ValidationRule = Callable[[str, Mapping[str, Any]], str | None]

DEFAULT_BATCH = 2000
COLLECTION_MAX = 200
#: A Salesforce Id: 15 case-sensitive letters and digits, or 18 (with the case suffix).
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_LOCKED = "unable to obtain exclusive access to this record or 1 records"


def valid_id(text: object) -> bool:
    return isinstance(text, str) and bool(_ID.match(text))


class ApiFault(Exception):
    """An error answer: HTTP status plus Salesforce's error list."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.body: Any = [{"message": message, "errorCode": code, "fields": fields or []}]


@dataclass(frozen=True)
class CsvBody:
    """A text/csv answer (Bulk API 2.0 results) with its extra headers."""

    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class OrgState:
    """Everything the org holds; guarded by ``lock``."""

    schema: dict[str, ObjectDef]
    records: dict[str, dict[str, dict[str, Any]]]
    api_max: int
    api_used: int = 0
    batch_size: int = DEFAULT_BATCH
    rules: list[ValidationRule] = field(default_factory=list)
    request_log: list[tuple[str, str]] = field(default_factory=list)
    #: Statuses to answer the next API requests with (tests of transient outages).
    outages: list[int] = field(default_factory=list)
    cursors: dict[str, tuple[list[dict[str, Any]], int]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    users: dict[str, str] = field(default_factory=dict)  # username -> password+token
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> secret
    #: JWT bearer flow: client_id -> the PEM public key of the app's certificate.
    jwt_keys: dict[str, bytes] = field(default_factory=dict)
    #: Usernames pre-authorised for the JWT bearer flow (admin-approved profiles or
    #: permission sets); others get "user hasn't approved this consumer".
    jwt_users: set[str] = field(default_factory=set)
    #: What ``GET /services/data/`` lists (the org's API versions).
    api_versions: tuple[str, ...] = ("60.0", "61.0", "62.0", "63.0", "64.0")
    #: Called with (method, path) as each request arrives, before it is answered and
    #: outside the lock: a test holds a chosen call there (a kill at the Nth request).
    on_request: Callable[[str, str], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: The clock for SystemModstamp; tests may pin it to make equal stamps.
    clock: Callable[[], datetime] = field(
        default_factory=lambda: lambda: datetime.now(UTC).replace(tzinfo=None)
    )
    #: API writes are checked (lookups, picklists, Id format); off while seeding.
    enforcing: bool = True
    #: Record Id -> how many more writes to it answer UNABLE_TO_LOCK_ROW.
    locked: dict[str, int] = field(default_factory=dict)
    #: The next this many record writes (any record) answer UNABLE_TO_LOCK_ROW.
    lock_writes: int = 0
    #: Sessions expire after this many more API requests (None: never).
    expire_in: int | None = None
    #: Every Bulk API 2.0 query job's SOQL, as received.
    bulk_queries: list[str] = field(default_factory=list)
    #: The next this many API answers with a body come cut in half (a proxy's truncation:
    #: HTTP 200, a Content-Length that matches the half, JSON or CSV that ends early).
    truncate: int = 0
    #: Only CSV answers (Bulk API 2.0 results pages) are cut.
    truncate_csv_only: bool = False

    def new_id(self, obj: str) -> str:
        """A fresh Id no record of ``obj`` holds: records seeded under Ids of their own
        (a served world's) are written the same way, and an org never hands one out
        twice."""
        prefix = self.schema[obj].key_prefix
        held = self.records.get(obj, {})
        while (rid := f"{prefix}{next(self.ids):012d}AAA") in held:
            pass
        return rid

    def obj(self, name: str) -> ObjectDef:
        for key, od in self.schema.items():
            if key.lower() == name.lower():
                return od
        raise ApiFault(404, "NOT_FOUND", f"The requested resource does not exist: {name}")

    # ---- writes -------------------------------------------------------------------
    def _check_fields(self, od: ObjectDef, values: Mapping[str, Any], op: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key == "attributes":
                continue
            fd = od.field_named(key)
            if fd is None:
                raise ApiFault(
                    400,
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type {od.name}",
                    [key],
                )
            if not fd.updateable:
                raise ApiFault(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {fd.name}. Please check the security"
                    " settings of this field and verify that it is read/write for your profile"
                    " or permission set.",
                    [fd.name],
                )
            if self.enforcing:
                self._check_value(od, fd, value)
            out[fd.name] = value
        return out

    def _check_value(self, od: ObjectDef, fd: FieldDef, value: Any) -> None:
        """Restricted picklists and lookups, as a real org checks them on a write."""
        if value is None:
            return
        if fd.restricted and value not in fd.picklist_values:
            raise ApiFault(
                400,
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"{fd.name}: bad value for restricted picklist field: {value}",
                [fd.name],
            )
        if not fd.reference_to:
            return
        targets = [self.schema[t] for t in fd.reference_to if t in self.schema]
        if not valid_id(value):
            raise ApiFault(
                400, "MALFORMED_ID", f"{fd.name}: id value of incorrect type: {value}", [fd.name]
            )
        target = next((t for t in targets if str(value).startswith(t.key_prefix)), None)
        if target is None:
            raise ApiFault(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                f"{fd.name}: id value of incorrect type: {value}",
                [fd.name],
            )
        record = self._find(target, str(value))
        if record is None:
            raise ApiFault(
                400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [fd.name]
            )
        if record.get("IsDeleted"):
            raise ApiFault(400, "ENTITY_IS_DELETED", "entity is deleted", [fd.name])

    def _find(self, od: ObjectDef, rid: str) -> dict[str, Any] | None:
        """A record by its 15- or 18-character Id (the first 15 name it)."""
        records = self.records.get(od.name, {})
        found = records.get(rid)
        if found is None and len(rid) == 15:
            found = next((r for k, r in records.items() if k[:15] == rid), None)
        return found

    def _lock(self, rid: str) -> None:
        """A write to a record another transaction holds: UNABLE_TO_LOCK_ROW."""
        if not self.enforcing:
            return
        if self.lock_writes > 0:
            self.lock_writes -= 1
            raise ApiFault(400, "UNABLE_TO_LOCK_ROW", _LOCKED)
        if self.locked.get(rid, 0) > 0:
            self.locked[rid] -= 1
            raise ApiFault(400, "UNABLE_TO_LOCK_ROW", _LOCKED)

    def _validate(self, od: ObjectDef, merged: Mapping[str, Any]) -> None:
        for rule in self.rules:
            message = rule(od.name, merged)
            if message:
                raise ApiFault(400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", message)

    def insert(self, obj: str, values: Mapping[str, Any]) -> str:
        od = self.obj(obj)
        clean = self._check_fields(od, values, "insert")
        self._lock("")
        now = soql.format_datetime(self.clock())
        rid = self.new_id(od.name)
        record: dict[str, Any] = {f: None for f in od.fields}
        record.update(clean)
        record.update(
            Id=rid, IsDeleted=False, CreatedDate=now, LastModifiedDate=now, SystemModstamp=now
        )
        if od.name == "Contact":
            record["Name"] = " ".join(
                p for p in (record.get("FirstName"), record.get("LastName")) if p
            )
        if od.name == "Case":
            record["Status"] = record.get("Status") or CASE_DEFAULT_STATUS
            record["CaseNumber"] = f"{len(self.records.get('Case', {})) + 1:08d}"
            _case_closed(record)
        self._validate(od, record)
        self.records.setdefault(od.name, {})[rid] = record
        self._dated_rates(od.name)
        return rid

    def _dated_rates(self, name: str) -> None:
        """DatedConversionRate.NextStartDate: the next StartDate of the same IsoCode."""
        if name != "DatedConversionRate":
            return
        live = sorted(
            (r for r in self.records.get(name, {}).values() if not r["IsDeleted"]),
            key=lambda r: (str(r.get("IsoCode")), str(r.get("StartDate"))),
        )
        for a, b in zip(live, [*live[1:], None], strict=True):
            same = b is not None and b.get("IsoCode") == a.get("IsoCode")
            a["NextStartDate"] = b.get("StartDate") if same and b is not None else None

    def update(self, obj: str, rid: str, values: Mapping[str, Any]) -> None:
        od = self.obj(obj)
        record = self.live(od, rid)
        clean = self._check_fields(od, values, "update")
        self._lock(record["Id"])
        merged = {**record, **clean}
        self._validate(od, merged)
        now = soql.format_datetime(self.clock())
        merged.update(LastModifiedDate=now, SystemModstamp=now)
        if od.name == "Case":
            _case_closed(merged)
        self.records[od.name][record["Id"]] = merged
        self._dated_rates(od.name)

    def delete(self, obj: str, rid: str) -> None:
        od = self.obj(obj)
        record = self.live(od, rid)
        now = soql.format_datetime(self.clock())
        record.update(IsDeleted=True, LastModifiedDate=now, SystemModstamp=now)
        self._dated_rates(od.name)
        # Deleting a record deletes its activities (Tasks whose WhatId is the record), and
        # deleting an Account its Cases.
        for task in self.records.get("Task", {}).values():
            if task.get("WhatId") == rid and not task["IsDeleted"]:
                task.update(IsDeleted=True, LastModifiedDate=now, SystemModstamp=now)
        for case in self.records.get("Case", {}).values() if od.name == "Account" else ():
            if case.get("AccountId") == rid and not case["IsDeleted"]:
                case.update(IsDeleted=True, LastModifiedDate=now, SystemModstamp=now)

    def merge(self, obj: str, master: str, victims: Iterable[str]) -> None:
        """Salesforce's merge: the victims are deleted with MasterRecordId set to the master,
        their children (AccountId) move to it, and the master is updated."""
        od = self.obj(obj)
        kept = self.live(od, master)
        now = soql.format_datetime(self.clock())
        for rid in victims:
            record = self.live(od, rid)
            record.update(
                IsDeleted=True, MasterRecordId=master, LastModifiedDate=now, SystemModstamp=now
            )
            for child in ("Contact", "Opportunity"):
                for rec in self.records.get(child, {}).values():
                    if rec.get("AccountId") == rid and not rec["IsDeleted"]:
                        rec.update(AccountId=master, LastModifiedDate=now, SystemModstamp=now)
        kept.update(LastModifiedDate=now, SystemModstamp=now)

    def live(self, od: ObjectDef, rid: str) -> dict[str, Any]:
        if self.enforcing and not valid_id(rid):
            raise ApiFault(400, "MALFORMED_ID", f"malformed id {rid}", ["Id"])
        record = self._find(od, rid) if self.enforcing else self.records.get(od.name, {}).get(rid)
        if record is None:
            raise ApiFault(404, "NOT_FOUND", "The requested resource does not exist")
        if record["IsDeleted"]:
            raise ApiFault(404, "ENTITY_IS_DELETED", "entity is deleted")
        return record

    def upsert(
        self, obj: str, ext_field: str, ext_value: str, values: Mapping[str, Any]
    ) -> tuple[str, bool]:
        od = self.obj(obj)
        fd = od.field_named(ext_field)
        if fd is None or not (fd.external or fd.name == "Id"):
            raise ApiFault(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {ext_field}",
            )
        matches = [
            r
            for r in self.records.get(od.name, {}).values()
            if not r["IsDeleted"] and r.get(fd.name) == ext_value
        ]
        if len(matches) > 1:
            raise ApiFault(300, "MULTIPLE_CHOICES", f"more than one record found for {fd.name}")
        if matches:
            self.update(od.name, matches[0]["Id"], values)
            return matches[0]["Id"], False
        return self.insert(od.name, {**values, fd.name: ext_value}), True

    # ---- reads --------------------------------------------------------------------
    def query(
        self, text: str, *, include_deleted: bool, batch_size: int | None = None
    ) -> dict[str, Any]:
        try:
            q = soql.parse(text)
        except soql.SoqlError as exc:
            raise ApiFault(400, exc.code, str(exc)) from exc
        od = self.obj_for_query(q.obj)
        names = []
        for name in [*q.fields, *q.where_fields, *(o[0] for o in q.order)]:
            fd = od.field_named(name)
            if fd is None:
                raise ApiFault(
                    400,
                    "INVALID_FIELD",
                    f"\n{text}\n^\nERROR at Row:1:Column:1\nNo such column '{name}' on entity"
                    f" '{od.name}'. If you are attempting to use a custom field, be sure to"
                    " append the '__c' after the custom field name.",
                )
            names.append(fd.name)
        selected = names[: len(q.fields)]
        # SOQL names are case-insensitive: each record read through its object's lower-case
        # names, not copied (a copy of every record per query cost the stand-in about 0.4 s
        # a query at 100,000 Accounts, counted in the bench's incremental run).
        lower = {f.name.lower(): f.name for f in od.fields.values()}
        pool = [
            _Lowered(r, lower)
            for r in self.records.get(od.name, {}).values()
            if include_deleted or not r["IsDeleted"]
        ]
        try:
            rows = soql.run(q, pool)
        except soql.SoqlError as exc:
            raise ApiFault(400, exc.code, str(exc)) from exc
        if q.count:
            return {"totalSize": len(rows), "done": True, "records": []}
        out = [self.shape(od, row.record, selected) for row in rows]
        return self.page(out, len(out), batch_size)

    def obj_for_query(self, name: str) -> ObjectDef:
        try:
            return self.obj(name)
        except ApiFault:
            raise ApiFault(
                400,
                "INVALID_TYPE",
                f"sObject type '{name}' is not supported. If you are attempting to use a"
                " custom object, be sure to append the '__c' after the entity name.",
            ) from None

    def shape(
        self, od: ObjectDef, record: Mapping[str, Any], fields: Iterable[str]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "attributes": {
                "type": od.name,
                "url": f"/services/data/v{API_VERSION}/sobjects/{od.name}/{record['Id']}",
            }
        }
        for name in fields:
            body[name] = record.get(name)
        return body

    def page(
        self, rows: list[dict[str, Any]], total: int, batch_size: int | None = None
    ) -> dict[str, Any]:
        size = batch_size or self.batch_size
        first, rest = rows[:size], rows[size:]
        body: dict[str, Any] = {"totalSize": total, "done": not rest, "records": first}
        if rest:
            token = f"01g{uuid.uuid4().hex[:15]}"
            self.cursors[token] = (rest, total)
            body["nextRecordsUrl"] = (
                f"/services/data/v{API_VERSION}/query/{token}-{self.batch_size}"
            )
        return body

    def more(self, locator: str) -> dict[str, Any]:
        token = locator.rsplit("-", 1)[0]
        found = self.cursors.pop(token, None)
        if found is None:
            raise ApiFault(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        rest, total = found
        size = int(locator.rsplit("-", 1)[1]) if "-" in locator else self.batch_size
        return self.page(rest, total, size)


API_VERSION = "62.0"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read the request log instead

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header from the org's clock, as Salesforce stamps its records."""
        if timestamp is None:
            timestamp = self.server.org.clock().replace(tzinfo=UTC).timestamp()
        return formatdate(timestamp, usegmt=True)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        if isinstance(body, CsvBody):
            raw = body.text.encode()
            headers = {**(headers or {}), **body.headers, "Content-Type": "text/csv"}
        else:
            raw = b"" if body is None else json.dumps(body).encode()
        org = self.server.org
        if (
            status == 200
            and len(raw) > 1
            and self.path.startswith("/services/data/")
            and (isinstance(body, CsvBody) or not org.truncate_csv_only)
        ):
            with org.lock:
                cut = org.truncate > 0
                org.truncate -= 1 if cut else 0
            if cut:
                raw = raw[: len(raw) // 2]
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None and not isinstance(body, CsvBody):
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _dispatch(self, method: str) -> None:
        org = self.server.org
        url = urlsplit(self.path)
        path = url.path
        raw = self._body()
        if path.startswith("/_sandbox/") and method == "GET":
            self._control(path, {k: v[0] for k, v in parse_qs(url.query).items()})
            return
        with org.lock:
            org.request_log.append((method, path))
            hook = org.on_request
        if hook is not None:
            hook(method, path)
        if path == "/services/oauth2/token" and method == "POST":
            self._token(raw)
            return
        if path.rstrip("/") == "/services/data" and method == "GET":
            # "Lists summary information about each Salesforce version currently
            # available": no authentication needed, no API call counted.
            self._send(
                200,
                [
                    {"version": v, "label": f"v{v}", "url": f"/services/data/v{v}"}
                    for v in org.api_versions
                ],
            )
            return
        if path == "/services/oauth2/userinfo" and method == "GET":
            if not self._authorized():
                self._send(403, "Bad_OAuth_Token")
                return
            self._send(
                200,
                {
                    "user_id": INTEGRATION_USER_ID,
                    "organization_id": "00D000000000001AAA",
                    "preferred_username": "churn@example.com",
                },
            )
            return
        try:
            with org.lock:
                if org.expire_in is not None:
                    if org.expire_in <= 0:
                        org.tokens.clear()  # every session issued so far has timed out
                        org.expire_in = None
                    else:
                        org.expire_in -= 1
            if not self._authorized():
                raise ApiFault(401, "INVALID_SESSION_ID", "Session expired or invalid")
            with org.lock:
                outage = org.outages.pop(0) if org.outages else None
            if outage is not None:
                # What Salesforce's edge answers while an instance is unavailable.
                raise ApiFault(outage, "SERVER_UNAVAILABLE", "Server unavailable, retry later")
            with org.lock:
                if org.api_used >= org.api_max:
                    raise ApiFault(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
                org.api_used += 1
                status, body = self._route(method, path, parse_qs(url.query), raw)
        except ApiFault as fault:
            status, body = fault.status, fault.body
        except (ValueError, KeyError) as exc:
            status, body = (
                400,
                [
                    {
                        "message": f"JSON_PARSER_ERROR: {exc}",
                        "errorCode": "JSON_PARSER_ERROR",
                        "fields": [],
                    }
                ],
            )
        self._send(status, body, {"Sforce-Limit-Info": f"api-usage={org.api_used}/{org.api_max}"})

    def _batch_size(self) -> int | None:
        """``Sforce-Query-Options: batchSize=N``: 200..2000, a hint Salesforce may lower."""
        option = self.headers.get("Sforce-Query-Options", "")
        for part in option.split(","):
            key, _, value = part.strip().partition("=")
            if key == "batchSize" and value.isdigit():
                return max(200, min(int(value), DEFAULT_BATCH))
        return None

    def _control(self, path: str, q: dict[str, str]) -> None:
        """The sandbox's own reads (not Salesforce's API, not counted as requests), for an
        org served in its own process (``churn sandbox serve``), with the session's token:

        - ``stats``: how many API requests the org has answered;
        - ``tasks?WhatId=ID&with=Field``: how many Tasks of that record have the field set
          (the bench's wait for a webhook's Task, without its own queries counted).
        """
        org = self.server.org
        if not self._authorized():
            self._send(401, [{"errorCode": "INVALID_SESSION_ID",
                              "message": "Session expired or invalid"}])  # fmt: skip
            return
        if path == "/_sandbox/stats":
            with org.lock:
                requests = len(org.request_log)
            self._send(200, {"object": "sandbox_stats", "requests": requests})
        elif path == "/_sandbox/tasks":
            what, field = q.get("WhatId"), q.get("with", "Id")
            with org.lock:
                tasks = list(org.records.get("Task", {}).values())
            count = sum(1 for t in tasks if t.get("WhatId") == what and t.get(field))
            self._send(200, {"object": "sandbox_tasks", "count": count})
        else:
            self._send(404, [{"errorCode": "NOT_FOUND",
                              "message": "The requested resource does not exist"}])  # fmt: skip

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").removeprefix("OAuth ").strip()
        return token in self.server.org.tokens

    def _token(self, raw: bytes) -> None:
        org = self.server.org
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        grant = form.get("grant_type")
        ok = False
        if grant == "password":
            ok = org.clients.get(form.get("client_id", ""), None) == form.get(
                "client_secret"
            ) and org.users.get(form.get("username", "")) == form.get("password")
        elif grant == "client_credentials":
            ok = org.clients.get(form.get("client_id", ""), None) == form.get("client_secret")
        elif grant == JWT_BEARER_GRANT:
            problem = _jwt_problem(org, form.get("assertion", ""), self.server.instance_url)
            if problem is not None:
                self._send(400, {"error": problem[0], "error_description": problem[1]})
                return
            ok = True
        else:
            self._send(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
            return
        if not ok:
            self._send(
                400, {"error": "invalid_grant", "error_description": "authentication failure"}
            )
            return
        token = "00D000000000001!" + secrets.token_urlsafe(24)
        with org.lock:
            org.tokens.add(token)
        self._send(
            200,
            {
                "access_token": token,
                "instance_url": self.server.instance_url,
                "id": f"{self.server.instance_url}/id/00D000000000001AAA/005000000000001AAA",
                "token_type": "Bearer",
                "issued_at": str(int(datetime.now(UTC).timestamp() * 1000)),
                "signature": secrets.token_urlsafe(16),
            },
        )

    def _route(
        self, method: str, path: str, qs: dict[str, list[str]], raw: bytes
    ) -> tuple[int, Any]:
        org = self.server.org
        prefix = "/services/data/v"
        if not path.startswith(prefix):
            raise ApiFault(404, "NOT_FOUND", "The requested resource does not exist")
        parts = [unquote(p) for p in path[len(prefix) :].strip("/").split("/")][1:]
        head = parts[0] if parts else ""
        if not parts and method == "GET":
            # "Resources by Version": the resources this API version offers.
            version = path[len(prefix) :].strip("/")
            base = f"/services/data/v{version}"
            return 200, {r: f"{base}/{r}" for r in ("limits", "query", "queryAll", "sobjects")}
        if head == "limits" and method == "GET":
            return 200, {
                "DailyApiRequests": {
                    "Max": org.api_max,
                    "Remaining": max(org.api_max - org.api_used, 0),
                }
            }
        if head in ("query", "queryAll") and method == "GET":
            if len(parts) > 1:
                return 200, org.more(parts[1])
            text = (qs.get("q") or [""])[0]
            return 200, org.query(
                text, include_deleted=head == "queryAll", batch_size=self._batch_size()
            )
        if head == "sobjects":
            return self._sobjects(method, parts[1:], raw)
        if head == "composite" and len(parts) > 1 and parts[1] == "sobjects":
            if method == "DELETE":
                return self._collection_delete(qs)
            return self._collections(method, raw, parts[2:])
        if head == "jobs" and len(parts) > 1 and parts[1] in ("query", "ingest"):
            return bulk2(org, method, parts[1], parts[2:], qs, raw)
        raise ApiFault(404, "NOT_FOUND", "The requested resource does not exist")

    def _sobjects(self, method: str, parts: list[str], raw: bytes) -> tuple[int, Any]:
        org = self.server.org
        if not parts:
            return 200, {
                "sobjects": [{"name": n, "keyPrefix": o.key_prefix} for n, o in org.schema.items()]
            }
        od = org.obj(parts[0])
        if len(parts) == 1 and method == "POST":
            rid = org.insert(od.name, json.loads(raw))
            return 201, {"id": rid, "success": True, "errors": []}
        if len(parts) == 2 and parts[1] == "describe":
            return 200, _describe(od)
        if len(parts) == 2:
            rid = parts[1]
            if method == "GET":
                record = org.live(od, rid)
                return 200, org.shape(od, record, od.fields)
            if method == "PATCH":
                org.update(od.name, rid, json.loads(raw))
                return 204, None
            if method == "DELETE":
                org.delete(od.name, rid)
                return 204, None
        if len(parts) == 3 and method == "PATCH":
            rid, created = org.upsert(od.name, parts[1], parts[2], json.loads(raw))
            return (201 if created else 200), {
                "id": rid,
                "success": True,
                "errors": [],
                "created": created,
            }
        raise ApiFault(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")

    def _collection_delete(self, qs: dict[str, list[str]]) -> tuple[int, Any]:
        """DELETE /composite/sobjects?ids=a,b&allOrNone=false: per-record results."""
        org = self.server.org
        ids = [i for i in (qs.get("ids") or [""])[0].split(",") if i]
        if len(ids) > COLLECTION_MAX:
            raise ApiFault(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        results: list[dict[str, Any]] = []
        for rid in ids:
            od = next((o for o in org.schema.values() if rid.startswith(o.key_prefix)), None)
            try:
                if od is None:
                    raise ApiFault(400, "MALFORMED_ID", f"malformed id {rid}")
                org.delete(od.name, rid)
                results.append({"id": rid, "success": True, "errors": []})
            except ApiFault as fault:
                err = dict(fault.body[0])
                err["statusCode"] = err.pop("errorCode")
                results.append({"id": rid, "success": False, "errors": [err]})
        return 200, results

    def _collections(
        self, method: str, raw: bytes, target: list[str] | None = None
    ) -> tuple[int, Any]:
        """Create (POST), update (PATCH), or upsert by external id (PATCH
        ``composite/sobjects/{type}/{externalIdField}``), up to 200 records a call."""
        org = self.server.org
        upsert_to = target if target and len(target) == 2 and method == "PATCH" else None
        body = json.loads(raw)
        records = body.get("records") or []
        all_or_none = bool(body.get("allOrNone", False))
        if len(records) > COLLECTION_MAX:
            raise ApiFault(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        results: list[dict[str, Any]] = []
        snapshot = json.loads(json.dumps(org.records)) if all_or_none else None
        failed = False
        for rec in records:
            obj = (rec.get("attributes") or {}).get("type")
            try:
                if not obj:
                    raise ApiFault(400, "INVALID_TYPE", "Must send a concrete entity type.")
                values = {k: v for k, v in rec.items() if k not in ("attributes", "Id")}
                if upsert_to is not None:
                    if obj.lower() != upsert_to[0].lower():
                        raise ApiFault(
                            400, "INVALID_TYPE", f"records must be of type {upsert_to[0]}"
                        )
                    if rec.get("Id"):
                        raise ApiFault(
                            400, "INVALID_FIELD", "Id is not allowed in an upsert by external id"
                        )
                    key = next(
                        (v for k, v in values.items() if k.lower() == upsert_to[1].lower()), None
                    )
                    if not key:
                        raise ApiFault(
                            400,
                            "REQUIRED_FIELD_MISSING",
                            f"Required fields are missing: [{upsert_to[1]}]",
                            [upsert_to[1]],
                        )
                    rid, created = org.upsert(obj, upsert_to[1], str(key), values)
                    results.append({"id": rid, "success": True, "errors": [], "created": created})
                    continue
                if method == "POST":
                    if rec.get("Id"):
                        raise ApiFault(
                            400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"]
                        )
                    rid = org.insert(obj, values)
                elif method == "PATCH":
                    rid = rec.get("Id") or ""
                    if not rid:
                        raise ApiFault(
                            400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"]
                        )
                    org.update(obj, rid, values)
                else:
                    raise ApiFault(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")
                results.append({"id": rid, "success": True, "errors": []})
            except ApiFault as fault:
                failed = True
                err = dict(fault.body[0])
                err["statusCode"] = err.pop("errorCode")
                results.append({"success": False, "errors": [err]})
        if all_or_none and failed and snapshot is not None:
            org.records = snapshot
            for r in results:
                if r["success"]:
                    r.pop("id", None)
                    r.update(
                        success=False,
                        errors=[
                            {
                                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                                "fields": [],
                            }
                        ],
                    )
        return 200, results


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_csv(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue()


def _from_csv_value(od: ObjectDef, name: str, text: str) -> Any:
    if text == "#N/A":
        return None
    fd = od.field_named(name)
    kind = fd.type if fd else "string"
    if kind in ("double", "currency", "percent"):
        return float(text)
    if kind == "int":
        return int(text)
    if kind == "boolean":
        return text.lower() == "true"
    return text


def _job_info(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def bulk2(
    org: OrgState, method: str, kind: str, parts: list[str], qs: dict[str, list[str]], raw: bytes
) -> tuple[int, Any]:
    """Bulk API 2.0: query jobs (results paged by Sforce-Locator) and CSV ingest jobs.

    Jobs complete as soon as they are closed; clients still see the documented states.
    """
    now = soql.format_datetime(org.clock())
    if not parts and method == "POST":
        spec = json.loads(raw)
        job_id = f"750{next(org.ids):012d}AAA"
        job: dict[str, Any] = {
            "id": job_id,
            "operation": spec.get("operation"),
            "createdDate": now,
            "systemModstamp": now,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(API_VERSION),
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        }
        if kind == "query":
            if spec.get("operation") not in ("query", "queryAll"):
                raise ApiFault(400, "INVALIDJOB", "operation must be query or queryAll")
            text = spec.get("query") or ""
            q = soql.parse(text) if text else None
            if q is None or q.count:
                raise ApiFault(400, "INVALIDJOB", "Bulk API 2.0 query jobs need a field list")
            org.bulk_queries.append(text)
            first = org.query(text, include_deleted=spec["operation"] == "queryAll")
            rows = list(first["records"])
            locator = first.get("nextRecordsUrl")
            while locator:
                more = org.more(locator.rsplit("/", 1)[1])
                rows.extend(more["records"])
                locator = more.get("nextRecordsUrl")
            fields = [od_name for od_name in q.fields]
            od = org.obj(q.obj)
            header = [od.field_named(f).name for f in fields]  # type: ignore[union-attr]
            job.update(
                object=od.name,
                state="UploadComplete",
                _header=header,
                _rows=[[r[h] for h in header] for r in rows],
            )
        else:
            od = org.obj(spec.get("object") or "")
            if spec.get("operation") not in ("insert", "update", "upsert", "delete"):
                raise ApiFault(400, "INVALIDJOB", "unsupported operation")
            if spec.get("operation") == "upsert" and not spec.get("externalIdFieldName"):
                raise ApiFault(400, "INVALIDJOB", "External ID was blank for upsert")
            job.update(
                object=od.name,
                state="Open",
                externalIdFieldName=spec.get("externalIdFieldName"),
                _csv=[],
            )
        org.jobs[job_id] = job
        return 200, _job_info(job)
    found = org.jobs.get(parts[0]) if parts else None
    if found is None:
        raise ApiFault(404, "NOT_FOUND", "The requested resource does not exist")
    job = found
    rest = parts[1:]
    if kind == "query":
        if not rest and method == "GET":
            job.update(state="JobComplete", numberRecordsProcessed=len(job["_rows"]))
            return 200, _job_info(job)
        if rest == ["results"] and method == "GET":
            start = int((qs.get("locator") or ["0"])[0] or 0)
            size = int((qs.get("maxRecords") or ["50000"])[0])
            chunk = job["_rows"][start : start + size]
            nxt = start + len(chunk)
            locator = str(nxt) if nxt < len(job["_rows"]) else "null"
            return 200, CsvBody(
                _to_csv(job["_header"], chunk),
                {"Sforce-Locator": locator, "Sforce-NumberOfRecords": str(len(chunk))},
            )
        if not rest and method == "DELETE":
            del org.jobs[job["id"]]
            return 204, None
        raise ApiFault(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")
    if rest == ["batches"] and method == "PUT":
        if job["state"] != "Open":
            raise ApiFault(409, "INVALIDJOBSTATE", "Job is not open for data upload")
        job["_csv"].append(raw.decode())
        return 201, None
    if not rest and method == "PATCH":
        state = json.loads(raw).get("state")
        if state == "Aborted":
            job["state"] = "Aborted"
        elif state == "UploadComplete" and job["state"] == "Open":
            _run_ingest(org, job)
        else:
            raise ApiFault(
                409, "INVALIDJOBSTATE", f"cannot move job from {job['state']} to {state}"
            )
        return 200, _job_info(job)
    if not rest and method == "GET":
        return 200, _job_info(job)
    if not rest and method == "DELETE":
        del org.jobs[job["id"]]
        return 204, None
    if rest in (["successfulResults"], ["failedResults"]) and method == "GET":
        ok = rest[0] == "successfulResults"
        result_rows = job.get("_ok" if ok else "_failed", [])
        lead = ["sf__Id", "sf__Created"] if ok else ["sf__Id", "sf__Error"]
        return 200, CsvBody(_to_csv(lead + job.get("_columns", []), result_rows))
    raise ApiFault(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed")


def _run_ingest(org: OrgState, job: dict[str, Any]) -> None:
    od = org.obj(job["object"])
    columns: list[str] = []
    records: list[dict[str, str]] = []
    for chunk in job["_csv"]:
        reader = csv.DictReader(io.StringIO(chunk))
        columns = columns or list(reader.fieldnames or [])
        records.extend(reader)
    ok: list[list[str]] = []
    failed: list[list[str]] = []
    for rec in records:
        values = {k: _from_csv_value(od, k, v) for k, v in rec.items() if k != "Id" and v != ""}
        line = [rec.get(c, "") for c in columns]
        try:
            op = job["operation"]
            if op == "insert":
                rid, created = org.insert(od.name, values), True
            elif op == "update":
                rid, created = rec.get("Id", ""), False
                org.update(od.name, rid, values)
            elif op == "delete":
                rid, created = rec.get("Id", ""), False
                org.delete(od.name, rid)
            else:
                ext = job["externalIdFieldName"]
                key = values.pop(ext, None) or rec.get(ext, "")
                rid, created = org.upsert(od.name, ext, str(key), values)
            ok.append([rid, "true" if created else "false", *line])
        except ApiFault as fault:
            err = fault.body[0]
            fields = ",".join(err["fields"])
            failed.append(
                [rec.get("Id", ""), f"{err['errorCode']}:{err['message']}:{fields}", *line]
            )
    now = soql.format_datetime(org.clock())
    job.update(
        state="JobComplete",
        systemModstamp=now,
        numberRecordsProcessed=len(records),
        numberRecordsFailed=len(failed),
        _columns=columns,
        _ok=ok,
        _failed=failed,
    )


def _describe(od: ObjectDef) -> dict[str, Any]:
    return {
        "name": od.name,
        "keyPrefix": od.key_prefix,
        "custom": False,
        "fields": [_describe_field(f) for f in od.fields.values()],
    }


def _describe_field(f: FieldDef) -> dict[str, Any]:
    """A field as describe gives it; the shape (length, digits, values) when declared."""
    out: dict[str, Any] = {
        "name": f.name,
        "type": f.type,
        "externalId": f.external,
        "updateable": f.updateable,
        "createable": f.updateable,
        "custom": f.custom,
        "idLookup": f.external or f.name == "Id",
    }
    if f.length is not None:
        out["length"] = f.length
    if f.precision is not None:
        out.update(precision=f.precision, scale=f.scale or 0)
    if f.reference_to:
        out["referenceTo"] = list(f.reference_to)
    if f.type == "picklist":
        out["restrictedPicklist"] = f.restricted
    if f.picklist_values or f.inactive_values:
        out["picklistValues"] = [
            {"value": v, "label": v, "active": True, "defaultValue": False}
            for v in f.picklist_values
        ] + [
            {"value": v, "label": v, "active": False, "defaultValue": False}
            for v in f.inactive_values
        ]
    return out


#: The integration user every token of the stand-in belongs to (no User record: the
#: extract's User stream holds the world's owners only).
INTEGRATION_USER_ID = "005000000000001AAA"
#: The permission set the metadata deploys, assigned to the integration user at start.
PERMISSION_SET = "Churn_Signals_Integration"
_PERMISSION_SET_ID = "0PS000000000001AAA"
_ASSIGNMENT_ID = "0Pa000000000001AAA"

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The audiences Salesforce accepts: "https://login.salesforce.com,
#: https://test.salesforce.com, or https://site.force.com/customers"; the stand-in also
#: takes its own address, as a My Domain would.
JWT_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


def _jwt_problem(org: OrgState, assertion: str, instance_url: str) -> tuple[str, str] | None:
    """Why a JWT bearer assertion is refused (Salesforce's error and description), or None.

    Checks its shape as Salesforce documents it: signed RS256 with the key of the app's
    certificate; ``iss`` the consumer key, ``sub`` the username, ``aud`` the
    authorization server, ``exp`` within 3 minutes.
    """
    import jwt

    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "invalid_grant", "invalid assertion"
    if header.get("alg") != "RS256":
        return "invalid_grant", "invalid assertion"
    missing = [c for c in ("iss", "sub", "aud", "exp") if not claims.get(c)]
    if missing:
        return "invalid_grant", "invalid assertion"
    key = org.jwt_keys.get(str(claims["iss"]))
    if key is None:
        return "invalid_client_id", "client identifier invalid"
    try:
        jwt.decode(
            assertion,
            key,
            algorithms=["RS256"],
            audience=[*JWT_AUDIENCES, instance_url],
            options={"require": ["iss", "sub", "aud", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        return "invalid_grant", "expired authorization code"
    except jwt.InvalidAudienceError:
        return "invalid_grant", "audience is invalid"
    except jwt.PyJWTError:
        return "invalid_grant", "invalid assertion"
    now = datetime.now(UTC).timestamp()
    if float(claims["exp"]) > now + 300:
        return "invalid_grant", "invalid assertion"  # exp more than minutes ahead
    if str(claims["sub"]) not in org.users:
        return "invalid_grant", "invalid assertion"
    if str(claims["sub"]) not in org.jwt_users:
        return "invalid_grant", "user hasn't approved this consumer"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    org: OrgState
    instance_url: str


@dataclass
class RunningSalesforce:
    """A started stand-in: where it listens, how to log in, and its store for assertions."""

    instance_url: str
    session_id: str
    ca_path: Path
    org: OrgState
    _server: _Server
    _thread: threading.Thread
    _tmp: tempfile.TemporaryDirectory[str]
    username: str = "churn@example.com"
    password: str = "pw"
    security_token: str = "tok"
    client_id: str = "churn-client"
    client_secret: str = "churn-secret"

    @property
    def request_log(self) -> list[tuple[str, str]]:
        return self.org.request_log

    @property
    def records(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.org.records

    def settings_env(self) -> dict[str, str]:
        """SALESFORCE_* variables pointing a client at this server with the session id."""
        return {
            "SALESFORCE_INSTANCE_URL": self.instance_url,
            "SALESFORCE_SESSION_ID": self.session_id,
            "SALESFORCE_CA_BUNDLE": str(self.ca_path),
            "SALESFORCE_API_VERSION": API_VERSION,
        }

    def seed(self, obj: str, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Insert records directly (no API call counted, no validation rules, no checks);
        a row may name its own ``Id`` (the tests' fixed Users)."""
        with self.org.lock:
            rules, self.org.rules = self.org.rules, []
            self.org.enforcing = False
            try:
                return [self._seed_one(obj, row) for row in rows]
            finally:
                self.org.rules = rules
                self.org.enforcing = True

    def _seed_one(self, obj: str, row: Mapping[str, Any]) -> str:
        given = row.get("Id")
        rid = self.org.insert(obj, {k: v for k, v in row.items() if k != "Id"})
        if not given:
            return rid
        od = self.org.obj(obj)
        record = self.org.records[od.name].pop(rid)
        record["Id"] = given
        self.org.records[od.name][str(given)] = record
        return str(given)

    def update(self, obj: str, rid: str, values: Mapping[str, Any]) -> None:
        """Change a record as a user in the org would (no API call counted, not checked)."""
        with self.org.lock:
            self.org.enforcing = False
            try:
                self.org.update(obj, rid, values)
            finally:
                self.org.enforcing = True

    # ---- settable faults and metadata changes, per test ----------------------------
    def set_field(
        self,
        obj: str,
        name: str,
        *,
        updateable: bool | None = None,
        picklist_values: Iterable[str] | None = None,
        restricted: bool | None = None,
    ) -> None:
        """Change a field's metadata as an admin would: make it read-only for the
        integration user (field-level security), or change a picklist's values. Describe
        shows the change."""
        with self.org.lock:
            od = self.org.obj(obj)
            fd = od.field_named(name)
            if fd is None:
                raise KeyError(f"{obj}.{name}")
            changes: dict[str, Any] = {}
            if updateable is not None:
                changes["updateable"] = updateable
            if picklist_values is not None:
                changes["picklist_values"] = tuple(picklist_values)
            if restricted is not None:
                changes["restricted"] = restricted
            od.fields[fd.name] = dataclasses.replace(fd, **changes)

    def apply_permission_set(self, xml: str) -> None:
        """Field-level security from a permission set (``*.permissionset-meta.xml``, the
        integration user's only grant): each custom field of the objects it names is
        writable only when its ``fieldPermissions`` say ``editable``; a custom field it
        does not list is read-only. ``Activity.X`` covers Task's field X."""
        import xml.etree.ElementTree as ET

        ns = {"m": "http://soap.sforce.com/2006/04/metadata"}
        root = ET.fromstring(xml)
        editable: dict[str, set[str]] = {}
        for perm in root.findall("m:fieldPermissions", ns):
            name = perm.findtext("m:field", "", ns)
            obj, _, fname = name.partition(".")
            obj = "Task" if obj == "Activity" else obj
            if perm.findtext("m:editable", "false", ns).strip().lower() == "true":
                editable.setdefault(obj, set()).add(fname.lower())
        with self.org.lock:
            for obj in editable.keys() | {"Account"}:
                if obj not in self.org.schema:
                    continue
                od = self.org.schema[obj]
                for key, fd in list(od.fields.items()):
                    if fd.custom:
                        allowed = fd.name.lower() in editable.get(obj, set())
                        od.fields[key] = dataclasses.replace(fd, updateable=allowed)

    def expire_sessions(self, after_requests: int = 0) -> None:
        """Every session issued so far expires after ``after_requests`` more API requests
        (0: now); the next request with one is answered 401 INVALID_SESSION_ID."""
        with self.org.lock:
            if after_requests <= 0:
                self.org.tokens.clear()
                self.org.expire_in = None
            else:
                self.org.expire_in = after_requests

    def truncate_next(self, count: int, *, csv_only: bool = False) -> None:
        """Cut the next ``count`` API answers that have a body in half (HTTP 200); with
        ``csv_only``, only Bulk API 2.0's CSV answers."""
        with self.org.lock:
            self.org.truncate += count
            self.org.truncate_csv_only = csv_only

    def lock_rows(self, ids: Iterable[str] = (), *, times: int = 1, next_writes: int = 0) -> None:
        """Writes to ``ids`` answer UNABLE_TO_LOCK_ROW ``times`` times each; the next
        ``next_writes`` record writes (any record) do too."""
        with self.org.lock:
            for rid in ids:
                self.org.locked[rid] = self.org.locked.get(rid, 0) + times
            self.org.lock_writes += next_writes

    def delete(self, obj: str, rid: str) -> None:
        with self.org.lock:
            self.org.delete(obj, rid)

    def merge(self, obj: str, master: str, victims: Iterable[str]) -> None:
        with self.org.lock:
            self.org.merge(obj, master, victims)

    def add_rule(self, rule: ValidationRule) -> None:
        with self.org.lock:
            self.org.rules.append(rule)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` API requests with ``status`` (an outage)."""
        with self.org.lock:
            self.org.outages.extend([status] * count)

    def set_api_budget(self, max_calls: int, used: int | None = None) -> None:
        with self.org.lock:
            self.org.api_max = max_calls
            if used is not None:
                self.org.api_used = used

    def jwt_key_file(self) -> Path:
        """A PEM private key for the JWT bearer flow, its public half registered for
        ``client_id`` and ``username`` pre-authorised (made on first use: RSA is slow)."""
        path = Path(self._tmp.name) / "jwt-key.pem"
        if path.exists():
            return path
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with self.org.lock:
            self.org.jwt_keys[self.client_id] = public
            self.org.jwt_users.add(self.username)
        return path

    def declare_field(self, obj: str, definition: FieldDef) -> None:
        """Declare (or re-declare) a field: an org configured differently."""
        with self.org.lock:
            od = self.org.obj(obj)
            existing = od.field_named(definition.name)
            if existing is not None:
                del od.fields[existing.name]
            od.fields[definition.name] = definition

    def drop_field(self, obj: str, name: str) -> None:
        """Remove a field from the schema (not deployed, or hidden by field-level security)."""
        with self.org.lock:
            od = self.org.obj(obj)
            existing = od.field_named(name)
            if existing is not None:
                del od.fields[existing.name]

    def unassign_permission_set(self) -> None:
        """Take the permission set away from the integration user."""
        with self.org.lock:
            self.org.records.get("PermissionSetAssignment", {}).pop(_ASSIGNMENT_ID, None)

    def calls(self, method: str | None = None, contains: str = "") -> int:
        return sum(
            1
            for m, p in list(self.org.request_log)
            if (method is None or m == method) and contains in p
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._tmp.cleanup()

    def __enter__(self) -> RunningSalesforce:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _case_closed(record: dict[str, Any]) -> None:
    """Case.IsClosed follows its Status (the CaseStatus value's IsClosed)."""
    record["IsClosed"] = record.get("Status") in CASE_CLOSED_VALUES


def _put(org: OrgState, obj: str, rid: str, values: Mapping[str, Any]) -> None:
    """A record with a fixed Id (setup data, outside the id counter the tests rely on)."""
    od = org.obj(obj)
    now = soql.format_datetime(org.clock())
    record: dict[str, Any] = {f: None for f in od.fields}
    record.update(values)
    record.update(
        Id=rid, IsDeleted=False, CreatedDate=now, LastModifiedDate=now, SystemModstamp=now
    )
    org.records.setdefault(od.name, {})[rid] = record


def start_salesforce_server(
    *,
    port: int = 0,
    api_budget: int = 15_000,
    batch_size: int = DEFAULT_BATCH,
    multi_currency: bool = True,
    advanced_currency: bool = False,
    is_sandbox: bool = True,
    seed: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    rules: Iterable[ValidationRule] = (),
    clock: Callable[[], datetime] | None = None,
    permission_set: Path | None = None,
) -> RunningSalesforce:
    """Start the stand-in on 127.0.0.1 (port 0: a free one) in a background thread.

    ``permission_set``: a ``*.permissionset-meta.xml`` whose field permissions decide
    which custom fields the integration user may write (:func:`shipped_permission_set`
    is the one this project deploys); by default every declared field is writable."""
    tmp = tempfile.TemporaryDirectory(prefix="sf-standin-")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = Path(tmp.name) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    org = OrgState(
        schema=default_schema(multi_currency=multi_currency, advanced_currency=advanced_currency),
        records={},
        api_max=api_budget,
    )
    org.batch_size = batch_size
    org.rules.extend(rules)
    if clock is not None:
        org.clock = clock
    try:
        server = _Server(("127.0.0.1", port), _Handler)
    except OSError as exc:
        tmp.cleanup()
        raise SandboxError(
            f"cannot bind the Salesforce stand-in to 127.0.0.1:{port}: {exc}"
        ) from exc
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.org = org
    bound = server.server_address[1]
    server.instance_url = f"https://127.0.0.1:{bound}"
    session_id = "00D000000000001!" + secrets.token_urlsafe(24)
    org.tokens.add(session_id)
    running = RunningSalesforce(
        instance_url=server.instance_url,
        session_id=session_id,
        ca_path=ca_path,
        org=org,
        _server=server,
        _thread=threading.Thread(target=server.serve_forever, name="sf-standin", daemon=True),
        _tmp=tmp,
    )
    org.users[running.username] = running.password + running.security_token
    org.clients[running.client_id] = running.client_secret
    with org.lock:
        org.insert("Organization", {"Name": "Churn Sandbox Org", "IsSandbox": is_sandbox})
        _put(org, "PermissionSet", _PERMISSION_SET_ID, {"Name": PERMISSION_SET, "Label": "Churn"})
        _put(
            org,
            "PermissionSetAssignment",
            _ASSIGNMENT_ID,
            {"AssigneeId": INTEGRATION_USER_ID, "PermissionSetId": _PERMISSION_SET_ID},
        )
        if multi_currency:
            org.insert(
                "CurrencyType",
                {
                    "IsoCode": "USD",
                    "ConversionRate": 1.0,
                    "DecimalPlaces": 2,
                    "IsActive": True,
                    "IsCorporate": True,
                },
            )
    if permission_set is not None:
        running.apply_permission_set(permission_set.read_text(encoding="utf-8"))
    for obj, rows in (seed or {}).items():
        running.seed(obj, rows)
    running._thread.start()
    return running


def shipped_permission_set() -> Path | None:
    """The integration user's permission set this project deploys (``salesforce/`` in a
    source checkout), or None where it is not beside the code."""
    path = (
        Path(__file__).resolve().parents[4]
        / "salesforce/force-app/main/default/permissionsets"
        / "Churn_Signals_Integration.permissionset-meta.xml"
    )
    return path if path.exists() else None


class _Lowered(Mapping[str, Any]):
    """A stored record read by lower-case field names, as a SOQL filter reads it."""

    __slots__ = ("lower", "record")

    def __init__(self, record: dict[str, Any], lower: Mapping[str, str]) -> None:
        self.record = record
        self.lower = lower

    def __getitem__(self, key: str) -> Any:
        return self.record[self.lower.get(key, key)]

    def get(self, key: str, default: Any = None) -> Any:
        return self.record.get(self.lower.get(key, key), default)

    def __iter__(self) -> Iterator[str]:
        return (k.lower() for k in self.record)

    def __len__(self) -> int:
        return len(self.record)
