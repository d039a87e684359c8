"""A small loopback stand-in for the parts of Salesforce's REST API the push uses.

Interim: engineer "salesforce" owns the project's stand-in
(``churn.sandbox.salesforce_server``); these tests move to it once it is merged. This one
follows the documented API for what the push calls: SOQL ``query`` of Organization,
sObject Collections update (``PATCH composite/sobjects``) and upsert by external id
(``PATCH composite/sobjects/{type}/{field}``, ``allOrNone`` false, per-record results in
request order, at most 200 records), the ``Sforce-Limit-Info`` header, 403
``REQUEST_LIMIT_EXCEEDED`` once the daily budget is spent, ``ENTITY_IS_DELETED`` for a
deleted record and ``FIELD_CUSTOM_VALIDATION_EXCEPTION`` from pluggable validation rules.
TLS on 127.0.0.1 with a throw-away CA (simple-salesforce always speaks https).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import trustme
from simple_salesforce import Salesforce

Rule = Callable[[str, dict[str, Any]], str | None]


@dataclass
class Org:
    is_sandbox: bool = True
    daily_limit: int = 15_000
    used: int = 0
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    rules: list[Rule] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    write_delay: float = 0.0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def calls(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    def writes(self) -> int:
        return sum(1 for m, _ in self.requests if m in ("PATCH", "POST", "PUT", "DELETE"))

    def tasks_by_key(self, field_name: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for task in self.tasks.values():
            out.setdefault(task.get(field_name), []).append(task)
        return out


def _error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [{"statusCode": code, "message": message, "fields": fields or []}],
    }


class _Handler(BaseHTTPRequestHandler):
    org: Org

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Sforce-Limit-Info", f"api-usage={self.org.used}/{self.org.daily_limit}")
        self.end_headers()
        self.wfile.write(data)

    def _budget(self) -> bool:
        org = self.org
        with org.lock:
            org.requests.append((self.command, self.path))
            if org.used >= org.daily_limit:
                self._send(
                    403,
                    [
                        {
                            "message": "TotalRequests Limit exceeded.",
                            "errorCode": "REQUEST_LIMIT_EXCEEDED",
                        }
                    ],
                )
                return False
            org.used += 1
        return True

    def do_GET(self) -> None:
        if not self._budget():
            return
        url = urlsplit(self.path)
        job = re.search(r"/jobs/ingest/(\w+)(?:/(\w+))?/?$", url.path)
        if job:
            self._job_info(job[1], job[2])
            return
        if url.path.rstrip("/").endswith("/query"):
            soql = parse_qs(url.query).get("q", [""])[0]
            if re.fullmatch(r"SELECT IsSandbox FROM Organization( LIMIT 1)?", soql.strip()):
                record = {"attributes": {"type": "Organization"}, "IsSandbox": self.org.is_sandbox}
                self._send(200, {"totalSize": 1, "done": True, "records": [record]})
                return
            self._send(
                400, [{"message": f"unsupported query: {soql}", "errorCode": "MALFORMED_QUERY"}]
            )
            return
        self._send(
            404, [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
        )

    def do_PATCH(self) -> None:
        if not self._budget():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        job = re.search(r"/jobs/ingest/(\w+)$", urlsplit(self.path).path)
        if job:
            self._close_job(job[1], body)
            return
        match = re.search(r"/composite/sobjects(?:/(\w+)/(\w+))?$", urlsplit(self.path).path)
        if not match:
            self._send(
                404,
                [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}],
            )
            return
        records = body.get("records") or []
        if len(records) > 200:
            self._send(
                400,
                [{"message": "Maximum number of records is 200", "errorCode": "EXCEEDED_ID_LIMIT"}],
            )
            return
        sobject, ext = match.groups()
        with self.org.lock:
            results = [self._upsert(sobject, ext, r) if ext else self._update(r) for r in records]
        if self.org.write_delay:  # applied, not yet answered: where a client kill hurts most
            time.sleep(self.org.write_delay)
        self._send(200, results)

    def _check(self, sobject: str, record: dict[str, Any]) -> dict[str, Any] | None:
        for rule in self.org.rules:
            message = rule(sobject, record)
            if message:
                return _error("FIELD_CUSTOM_VALIDATION_EXCEPTION", message)
        return None

    def _update(self, record: dict[str, Any]) -> dict[str, Any]:
        sobject = record.get("attributes", {}).get("type")
        rec_id = record.get("Id")
        if sobject != "Account":
            return _error("INVALID_TYPE", f"sObject type '{sobject}' is not supported here")
        if rec_id in self.org.deleted:
            return _error("ENTITY_IS_DELETED", "entity is deleted")
        if rec_id not in self.org.accounts:
            return _error("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {rec_id}")
        fields = {k: v for k, v in record.items() if k != "attributes"}
        merged = {**self.org.accounts[rec_id], **fields}
        failed = self._check("Account", merged)
        if failed:
            return failed
        self.org.accounts[rec_id] = merged
        return {"id": rec_id, "success": True, "errors": []}

    def _upsert(self, sobject: str, ext: str, record: dict[str, Any]) -> dict[str, Any]:
        if sobject != "Task":
            return _error("INVALID_TYPE", f"sObject type '{sobject}' is not supported here")
        key = record.get(ext)
        if not key:
            return _error("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{ext}]", [ext])
        fields = {k: v for k, v in record.items() if k != "attributes"}
        what = fields.get("WhatId")
        if what is not None and (what in self.org.deleted or what not in self.org.accounts):
            return _error("ENTITY_IS_DELETED", "entity is deleted", ["WhatId"])
        existing = next((t for t in self.org.tasks.values() if t.get(ext) == key), None)
        merged = {**(existing or {}), **fields}
        failed = self._check("Task", merged)
        if failed:
            return failed
        if existing is None:
            rec_id = f"00T{next(self.org._ids):015d}"
            merged["Id"] = rec_id
            self.org.tasks[rec_id] = merged
            return {"id": rec_id, "success": True, "errors": [], "created": True}
        self.org.tasks[existing["Id"]] = merged
        return {"id": existing["Id"], "success": True, "errors": [], "created": False}

    # Bulk API 2.0 ingest: create, upload CSV, UploadComplete (processed at once), results.
    def do_POST(self) -> None:
        if not self._budget():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not urlsplit(self.path).path.rstrip("/").endswith("/jobs/ingest"):
            self._send(404, [{"message": "not found", "errorCode": "NOT_FOUND"}])
            return
        job_id = f"750{next(self.org._ids):015d}"
        job = {
            "id": job_id,
            "operation": body["operation"],
            "object": body["object"],
            "externalIdFieldName": body.get("externalIdFieldName"),
            "state": "Open",
            "contentType": "CSV",
            "data": "",
            "results": [],
        }
        self.org.jobs[job_id] = job
        self._send(200, {k: v for k, v in job.items() if k not in ("data", "results")})

    def do_PUT(self) -> None:
        if not self._budget():
            return
        match = re.search(r"/jobs/ingest/(\w+)/batches$", urlsplit(self.path).path)
        data = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        job = self.org.jobs.get(match[1]) if match else None
        if job is None or job["state"] != "Open":
            self._send(400, [{"message": "job not open", "errorCode": "INVALIDJOBSTATE"}])
            return
        job["data"] += data
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _close_job(self, job_id: str, body: dict[str, Any]) -> None:
        job = self.org.jobs.get(job_id)
        if job is None:
            self._send(404, [{"message": "job not found", "errorCode": "NOT_FOUND"}])
            return
        if body.get("state") == "UploadComplete":
            rows = list(csv.DictReader(io.StringIO(job["data"])))
            with self.org.lock:
                for row in rows:
                    record = {k: (None if v == "#N/A" else v) for k, v in row.items() if v != ""}
                    record["attributes"] = {"type": job["object"]}
                    if job["operation"] == "update":
                        result = self._update(record)
                    else:
                        result = self._upsert(job["object"], job["externalIdFieldName"], record)
                    job["results"].append((row, result))
            job["state"] = "JobComplete"
        self._send(200, self._job_summary(job))

    def _job_summary(self, job: dict[str, Any]) -> dict[str, Any]:
        failed = sum(1 for _, r in job["results"] if not r["success"])
        return {
            "id": job["id"],
            "state": job["state"],
            "operation": job["operation"],
            "object": job["object"],
            "numberRecordsProcessed": len(job["results"]),
            "numberRecordsFailed": failed,
        }

    def _job_info(self, job_id: str, results: str | None) -> None:
        job = self.org.jobs.get(job_id)
        if job is None:
            self._send(404, [{"message": "job not found", "errorCode": "NOT_FOUND"}])
            return
        if results is None:
            self._send(200, self._job_summary(job))
            return
        ok = results == "successfulResults"
        out = io.StringIO()
        picked = [(row, r) for row, r in job["results"] if r["success"] == ok]
        columns = list(picked[0][0]) if picked else []
        head = ["sf__Id", "sf__Created" if ok else "sf__Error"]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(head + columns)
        for row, r in picked:
            if ok:
                extra = [r["id"], str(r.get("created", False)).lower()]
            else:
                err = r["errors"][0]
                extra = ["", f"{err['statusCode']}:{err['message']}:{','.join(err['fields'])} --"]
            writer.writerow(extra + [row[c] for c in columns])
        data = out.getvalue().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class RunningStandin:
    org: Org
    instance_url: str
    session_id: str
    ca_path: Path

    def client(self) -> Salesforce:
        session = requests.Session()
        session.verify = str(self.ca_path)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
        return Salesforce(
            instance_url=self.instance_url,
            session_id=self.session_id,
            session=session,
            version="62.0",
        )


@contextmanager
def standin(tmp_path: Path, org: Org | None = None) -> Iterator[RunningStandin]:
    org = org or Org()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = tmp_path / "standin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    handler = type("Handler", (_Handler,), {"org": org})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningStandin(
            org, f"https://127.0.0.1:{server.server_port}", "standin-session", ca_path
        )
    finally:
        server.shutdown()
        server.server_close()
