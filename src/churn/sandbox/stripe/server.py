"""A fast loopback Stripe stand-in serving a world folder (docs/world-format.md).

It answers list, retrieve and ``/v1/events`` the way Stripe documents them, so any Stripe
client can read a world: newest first (``created`` then id, descending), cursor paging by
``starting_after`` / ``ending_before`` with ``limit`` 1..100 and ``has_more``, ``created``
range filters (``created[gt|gte|lt|lte]`` or an exact ``created``), ``customer`` and
``status`` filters (subscriptions hide ``canceled`` unless ``status=all`` or asked),
``expand[]`` of id fields (``data.`` prefixed on lists), ``type`` and ``types[]`` on events,
Bearer-key auth, Stripe's error bodies ``{"error": {type, message, code, param}}``, and
429 with ``Retry-After`` once a request rate is exceeded.

Objects are held in memory, indexed by id and sorted once per type; requests are served
by a thread per connection. :meth:`StripeWorld.advance` changes a share of the world's
subscriptions and emits the matching events, for incremental runs.
"""

from __future__ import annotations

import bisect
import copy
import gzip
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from churn.errors import SandboxError
from churn.pipelines.stripe.streams import STREAMS

# URL path segment -> object type in the world folder.
#: /v1/<resource> -> object, from the stream declarations (and events, which are not one).
RESOURCES: dict[str, str] = {s.served_as: s.name for s in STREAMS} | {"events": "event"}
#: Id prefix -> object (coupons have none: their ids are the account's own).
ID_PREFIXES: dict[str, str] = {s.id_prefix: s.name for s in STREAMS if s.id_prefix} | {
    "evt_": "event"
}
#: "Stripe keeps events for 30 days" (the List all events reference).
EVENT_RETENTION_DAYS = 30
FILTERS = ("customer", "subscription", "status", "type", "product", "currency", "invoice")


class _ApiError(Exception):
    def __init__(
        self, status: int, etype: str, message: str, code: str | None, param: str | None
    ) -> None:
        super().__init__(message)
        self.status, self.body = (
            status,
            {"error": {"type": etype, "message": message, "code": code, "param": param}},
        )


def _key(obj: dict[str, Any]) -> tuple[int, str]:
    # Sort ascending; lists are served reversed (newest first).
    return (int(obj.get("created") or 0), str(obj["id"]))


class _Table:
    """One object type, kept as raw JSON (a fifth of the memory of dicts, served verbatim).

    ``meta`` holds the few fields the filters read; ``keys`` is (created, id) ascending
    for range and cursor paging.
    """

    def __init__(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self.raw: dict[str, str] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.keys: list[tuple[int, str]] = []
        for line, obj in rows:
            self._store(obj, line)
        self.keys.sort()

    def _store(
        self, obj: dict[str, Any], line: str | None = None, *, insert_sorted: bool = False
    ) -> bool:
        oid = obj["id"]
        new = oid not in self.raw
        self.raw[oid] = line if line is not None else json.dumps(obj, separators=(",", ":"))
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        self.meta[oid] = {
            "created": int(obj.get("created") or 0),
            **{f: obj.get(f) for f in FILTERS if f in obj},
            "_parent_subscription": parent.get("subscription"),
        }
        if new and insert_sorted:
            bisect.insort(self.keys, _key(obj))
        elif new:
            self.keys.append(_key(obj))
        return new

    def put(self, obj: dict[str, Any]) -> None:
        # One insertion, not a re-sort: advance() puts an event at a time into millions.
        self._store(obj, insert_sorted=True)

    def get(self, oid: str) -> dict[str, Any] | None:
        raw = self.raw.get(oid)
        return None if raw is None else dict(json.loads(raw))

    def __len__(self) -> int:
        return len(self.raw)


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each line as stored (served verbatim) and parsed (for the index); streamed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        for line in fh:
            text = line.strip()
            if text:
                yield text, json.loads(text)


class StripeWorld:
    """The world's Stripe side in memory, safe for concurrent readers and one writer."""

    def __init__(self, folder: Path) -> None:
        stripe = folder / "stripe"
        if not stripe.is_dir():
            raise SandboxError(f"{folder} is not a world folder (no stripe/ inside)")
        manifest = folder / "world.json"
        self.now = int(json.loads(manifest.read_text())["now"]) if manifest.exists() else 0
        self.tables: dict[str, _Table] = {}
        for kind in set(RESOURCES.values()):
            path = next((p for p in (stripe / f"{kind}.jsonl.gz", stripe / f"{kind}.jsonl")
                         if p.exists()), None)  # fmt: skip
            rows = _read_jsonl(path) if path else iter(())
            if kind == "event":
                # Past Stripe's 30-day retention an event is neither listed nor retrieved,
                # and the window only moves forward (advance): never served, so not kept.
                # Most of a large world's events are that old (4.96 M events, 5.5 GB of
                # JSON at 100,000 accounts).
                since = self.events_since()
                rows = (r for r in rows if int(r[1].get("created") or 0) >= since)
            self.tables[kind] = _Table(rows)
        self.lock = threading.RLock()
        self._n = 0

    def events_since(self) -> int:
        """The oldest event Stripe still keeps: 30 days before the world's now."""
        return self.now - EVENT_RETENTION_DAYS * 86_400

    def get(self, oid: str) -> dict[str, Any] | None:
        for prefix, kind in ID_PREFIXES.items():
            if oid.startswith(prefix):
                return self.tables[kind].get(oid)
        return None

    def advance(self, share: float, *, seconds: int = 3600, seed: int = 0) -> int:
        """Change ``share`` of the live subscriptions (a seat more or less) and emit events.

        The world's clock moves ``seconds`` forward, and never stays behind the wall clock:
        a world generated for an earlier day and served now changes now, as Stripe would
        stamp it (events in the past would fall before a client's cursor). Returns how many
        subscriptions changed.
        """
        import random

        rnd = random.Random(seed)
        with self.lock:
            self.now = max(self.now + seconds, int(time.time()))
            table = self.tables["subscription"]
            subs = [i for i, m in table.meta.items()
                    if m.get("status") in ("active", "past_due", "trialing")]  # fmt: skip
            chosen = rnd.sample(sorted(subs), k=min(len(subs), max(1, round(len(subs) * share))))
            for i, sub_id in enumerate(chosen):
                old = table.get(sub_id) or {}
                sub = copy.deepcopy(old)
                item = sub["items"]["data"][0]
                prev = {"items": copy.deepcopy(old["items"])}
                item["quantity"] = max(1, int(item["quantity"]) + rnd.choice((-1, 1)))
                self.tables["subscription"].put(sub)
                self._n += 1
                event = {
                    "id": f"evt_adv{seed:04d}{self._n:012d}",
                    "object": "event",
                    "api_version": "2025-09-30.clover",
                    "created": self.now - seconds + 1 + i * seconds // max(1, len(chosen)),
                    "data": {"object": sub, "previous_attributes": prev},
                    "livemode": False,
                    "pending_webhooks": 0,
                    "request": {"id": None, "idempotency_key": None},
                    "type": "customer.subscription.updated",
                }
                self.tables["event"].put(event)
            return len(chosen)

    # -- queries ---------------------------------------------------------------------------

    def list_objects(self, kind: str, params: dict[str, list[str]], path: str) -> str:
        limit = _int_param(params, "limit", 10)
        if not 1 <= limit <= 100:
            raise _ApiError(400, "invalid_request_error",
                            "Invalid integer: limit must be between 1 and 100", None, "limit")  # fmt: skip
        lo, hi = _created_range(params)
        if kind == "event":
            # Stripe keeps events for 30 days: older ones are not listed.
            lo = max(lo, self.events_since()) if lo is not None else self.events_since()
        table = self.tables[kind]
        filters = {f: params[f][-1] for f in FILTERS if f in params}
        # types[]=a or types[0]=a (the SDKs' encoding) or types=a.
        types = [
            v for k, vs in params.items() if k == "types" or k.startswith("types[") for v in vs
        ]
        if "type" in filters and kind == "event":
            types = [*types, filters.pop("type")]
        status = filters.pop("status", None)
        # Stripe hides canceled subscriptions unless asked for status=all (or canceled).
        statuses: set[str] | None = {status} if status and status != "all" else None
        hide_canceled = kind == "subscription" and status is None
        after = params.get("starting_after", [None])[-1]
        before = params.get("ending_before", [None])[-1]
        with self.lock:
            keys = table.keys
            # Newest first: walk descending from the cursor.
            if after:
                anchor = table.meta.get(after)
                if anchor is None:
                    raise _ApiError(400, "invalid_request_error",
                                    f"No such object: '{after}'", "resource_missing",
                                    "starting_after")  # fmt: skip
                idx = bisect.bisect_left(keys, (anchor["created"], after)) - 1
                step = -1
            elif before:
                anchor = table.meta.get(before)
                if anchor is None:
                    raise _ApiError(400, "invalid_request_error",
                                    f"No such object: '{before}'", "resource_missing",
                                    "ending_before")  # fmt: skip
                idx = bisect.bisect_right(keys, (anchor["created"], before))
                step = 1
            else:
                idx, step = len(keys) - 1, -1
            page: list[str] = []
            has_more = False
            while 0 <= idx < len(keys):
                created, oid = keys[idx]
                idx += step
                if (lo is not None and created < lo) or (hi is not None and created > hi):
                    if (step == -1 and lo is not None and created < lo) or (
                        step == 1 and hi is not None and created > hi
                    ):
                        break
                    continue
                if not _matches(kind, table.meta[oid], filters, statuses, hide_canceled, types):
                    continue
                if len(page) == limit:
                    has_more = True
                    break
                page.append(oid)
            if step == 1:
                page.reverse()
            expand = [e[5:] for e in _expands(params) if e.startswith("data.")]
            if expand:
                items = [json.dumps(self.expand(table.get(o) or {}, expand)) for o in page]
            else:
                items = [table.raw[o] for o in page]
        # The stored JSON is served verbatim: no parse and re-encode per request.
        return (
            '{"object":"list","data":[' + ",".join(items) + '],"has_more":'
            + ("true" if has_more else "false") + ',"url":' + json.dumps(path) + "}"
        )  # fmt: skip

    def expand(self, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """Replace id fields by their objects; ``obj`` is a fresh parse, changed in place."""
        for path in paths:
            _expand_path(obj, path.split("."), self)
        return obj


def _expand_path(node: Any, parts: list[str], world: StripeWorld) -> None:
    if not isinstance(node, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    value = node.get(head)
    if not rest:
        if isinstance(value, str):
            found = world.get(value)
            if found is not None:
                node[head] = found
        elif isinstance(value, list):
            # an array of ids (a subscription's `discounts`): each one expanded
            node[head] = [world.get(v) or v if isinstance(v, str) else v for v in value]
        return
    _expand_path(value, rest, world)


def _matches(
    kind: str,
    obj: dict[str, Any],
    filters: dict[str, str],
    statuses: set[str] | None,
    hide_canceled: bool,
    types: list[str],
) -> bool:
    for name, value in filters.items():
        if name == "subscription" and kind == "invoice":
            if obj.get("_parent_subscription") != value:
                return False
        elif str(obj.get(name)) != value:
            return False
    if statuses is not None and obj.get("status") not in statuses:
        return False
    if hide_canceled and obj.get("status") == "canceled":
        return False
    return not (types and not any(_type_match(obj.get("type", ""), t) for t in types))


def _type_match(etype: str, pattern: str) -> bool:
    return etype.startswith(pattern[:-1]) if pattern.endswith("*") else etype == pattern


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    if name not in params:
        return default
    try:
        return int(params[name][-1])
    except ValueError:
        raise _ApiError(400, "invalid_request_error", f"Invalid integer: {params[name][-1]}",
                        None, name) from None  # fmt: skip


def _created_range(params: dict[str, list[str]]) -> tuple[int | None, int | None]:
    lo: int | None = None
    hi: int | None = None
    if "created" in params:
        exact = _int_param(params, "created", 0)
        return exact, exact
    for op in ("gt", "gte", "lt", "lte"):
        name = f"created[{op}]"
        if name in params:
            v = _int_param(params, name, 0)
            if op == "gt":
                lo = v + 1
            elif op == "gte":
                lo = v
            elif op == "lt":
                hi = v - 1
            else:
                hi = v
    return lo, hi


def _expands(params: dict[str, list[str]]) -> list[str]:
    out: list[str] = []
    for k, vs in params.items():
        if k == "expand[]" or k == "expand" or (k.startswith("expand[") and k.endswith("]")):
            out.extend(vs)
    return out


class _RateLimiter:
    """Stripe's documented limits (docs.stripe.com/rate-limits): ``per_second`` requests
    a second to the account ("Global API rate limit: Live mode: 100 requests per second;
    Sandbox: 25"), and ``per_endpoint`` to any one endpoint ("API endpoints have a default
    limit of 25 requests per second"; a retrieve by id counts as one endpoint whatever the
    id). Past either, 429. Each limit is a token bucket holding one second of requests
    (Stripe's engineering blog, "Scaling your API with rate limiters", describes its
    request rate limiter as a token bucket); None or 0 turns a limit off."""

    def __init__(self, per_second: float | None, per_endpoint: float | None = None) -> None:
        self.per_second = per_second or 0.0
        self.per_endpoint = per_endpoint or 0.0
        self.lock = threading.Lock()
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, stamp]
        #: Requests refused with 429 (all endpoints).
        self.refused = 0

    def _take(self, key: str, rate: float, now: float) -> bool:
        bucket = self.buckets.setdefault(key, [rate, now])
        bucket[0] = min(rate, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        return bucket[0] >= 1.0

    def allow(self, path: str = "") -> bool:
        if not (self.per_second or self.per_endpoint):
            return True
        parts = [p for p in path.split("/") if p]
        endpoint = "/".join(parts[:2]) + ("/{id}" if len(parts) > 2 else "")
        now = time.monotonic()
        with self.lock:
            keys = [(k, r) for k, r in (("", self.per_second), (endpoint, self.per_endpoint)) if r]
            if not all(self._take(k, r, now) for k, r in keys):
                self.refused += 1
                return False
            for k, _ in keys:
                self.buckets[k][0] -= 1.0
            return True


FAULT_KINDS = ("429", "5xx", "reset", "slow", "truncate", "partial_event")


@dataclass
class Fault:
    """One scripted misbehaviour: ``kind`` on the next ``times`` requests whose path starts
    with ``path`` (any when None)."""

    kind: str
    path: str | None = None
    times: int = 1
    #: The status of a ``5xx`` answer.
    status: int = 503
    #: The Retry-After of a ``429`` (seconds, as Stripe sends it).
    retry_after: str = "1"


class StripeFaults:
    """Faults set per test on a running stand-in, served in the order they were added.

    - ``429``: "Too many requests" with ``Retry-After`` (a burst: ``times`` in a row);
    - ``5xx``: an ``api_error`` with ``status`` (500, 502, 503, 504);
    - ``reset``: the connection is closed with a TCP reset before any answer;
    - ``slow``: no answer until the client gives up (its read timeout), deterministic:
      the handler waits on an event nobody sets while the client waits, never a sleep;
    - ``truncate``: HTTP 200 with the first half of the body (a page cut off on the way);
    - ``partial_event``: an events page whose events carry ``data.object`` as
      ``{id, object}`` only (the object is served whole by its own retrieve).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        #: How many requests a fault answered, by kind.
        self.injected: dict[str, int] = {}
        #: Set on stop: a ``slow`` answer still waiting gives up.
        self.released = threading.Event()

    def add(self, kind: str, *, path: str | None = None, times: int = 1, **kw: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        with self._lock:
            self._queue.append(Fault(kind, path, times, **kw))

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(f.times for f in self._queue)

    @property
    def total(self) -> int:
        return sum(self.injected.values())

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._queue:
                if fault.times > 0 and (fault.path is None or path.startswith(fault.path)):
                    if fault.kind == "partial_event" and not path.startswith("/v1/events"):
                        continue
                    fault.times -= 1
                    self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1
                    if fault.times == 0:
                        self._queue.remove(fault)
                    return fault
        return None


def _thin_events(text: str) -> str:
    page = json.loads(text)
    for event in page.get("data") or []:
        obj = (event.get("data") or {}).get("object")
        if isinstance(obj, dict) and "id" in obj:
            event["data"]["object"] = {"id": obj["id"], "object": obj.get("object")}
    return json.dumps(page, separators=(",", ":"))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    _fault: Fault | None = None

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(
        self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None
    ) -> None:
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        fault: Fault | None = getattr(self, "_fault", None)
        if fault is not None and status == 200 and fault.kind == "partial_event":
            text = _thin_events(text)
        data = text.encode()
        if fault is not None and status == 200 and fault.kind == "truncate":
            data = data[: len(data) // 2]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{id(self):x}{time.monotonic_ns() % 10**9}")
        self.send_header("Stripe-Version", "2025-09-30.clover")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/_sandbox/stats":
            # The sandbox's own counters (not Stripe's API), for a stand-in in its own process.
            self._send(200, {"object": "sandbox_stats", "requests": srv.requests,
                             "rate_limited": srv.limiter.refused})  # fmt: skip
            return
        with srv.count_lock:
            srv.requests += 1
        self._fault = None
        try:
            if self._misbehave():
                return
            self._get()
        except _ApiError as exc:
            self._send(exc.status, exc.body)

    def _misbehave(self) -> bool:
        """Answer with the next fault set for this path, if any; True when answered."""
        fault = self.server.faults.take(urlsplit(self.path).path)
        if fault is None:
            return False
        if fault.kind == "429":
            self._send(429, {"error": {"type": "invalid_request_error", "code": "rate_limit",
                                       "message": "Too many requests hit the API too quickly.",
                                       "param": None}},
                       {"Retry-After": fault.retry_after})  # fmt: skip
            return True
        if fault.kind == "5xx":
            self._send(fault.status, {"error": {"type": "api_error", "code": None, "param": None,
                                                "message": "An unexpected error occurred."}})  # fmt: skip
            return True
        if fault.kind in ("reset", "slow"):
            if fault.kind == "slow":
                # Until the client's read timeout closes its end (the read below returns
                # at once then), or the stand-in stops.
                self.connection.settimeout(0.05)
                while not self.server.faults.released.is_set():
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            raise _Dropped
        self._fault = fault  # truncate, partial_event: the answer is served, then altered
        return False

    def _get(self) -> None:
        srv = self.server
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {srv.api_key}":
            raise _ApiError(401, "invalid_request_error",
                            "Invalid API Key provided.", "api_key_invalid", None)  # fmt: skip
        if not srv.limiter.allow(urlsplit(self.path).path):
            # Stripe's rate limits page does not document a Retry-After header (it advises
            # "an exponential backoff"); the SDKs honour one when sent, so it is sent here.
            self._send(429, {"error": {"type": "invalid_request_error",
                                       "message": "Too many requests hit the API too quickly.",
                                       "code": "rate_limit", "param": None}},
                       {"Retry-After": "1"})  # fmt: skip
            return
        url = urlsplit(self.path)
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(url.query, keep_blank_values=True):
            params.setdefault(k, []).append(v)
        parts = [p for p in url.path.split("/") if p]
        if len(parts) < 2 or parts[0] != "v1" or parts[1] not in RESOURCES:
            raise _ApiError(404, "invalid_request_error",
                            f"Unrecognized request URL (GET: {url.path}).", None, None)  # fmt: skip
        kind = RESOURCES[parts[1]]
        if kind == "discount":
            # "Discounts cannot be fetched by ID. Use expand[]=discounts in API calls to
            # expand discount IDs in an array." (the Discount object); nor are they listed.
            raise _ApiError(404, "invalid_request_error",
                            f"Unrecognized request URL (GET: {url.path}).", None, None)  # fmt: skip
        world = srv.world
        if len(parts) == 2:
            self._send(200, world.list_objects(kind, params, url.path))
            return
        if len(parts) == 3:
            with world.lock:
                obj = world.tables[kind].get(parts[2])
                if kind == "event" and obj and int(obj.get("created") or 0) < world.events_since():
                    obj = None  # past Stripe's 30-day retention
                if obj is None:
                    raise _ApiError(404, "invalid_request_error",
                                    f"No such {kind}: '{parts[2]}'", "resource_missing", "id")  # fmt: skip
                self._send(200, world.expand(obj, _expands(params)))
            return
        raise _ApiError(404, "invalid_request_error",
                        f"Unrecognized request URL (GET: {url.path}).", None, None)  # fmt: skip

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path.startswith("/_sandbox/"):
            self._control(url.path, dict(parse_qsl(url.query)))
            return
        self._send(405, {"error": {"type": "invalid_request_error", "code": None, "param": None,
                                   "message": "The sandbox Stripe stand-in is read-only."}})  # fmt: skip

    def _control(self, path: str, q: dict[str, str]) -> None:
        """The sandbox's own controls (not Stripe's API), for a stand-in served in its own
        process (``churn sandbox serve``): what a test or the bench would otherwise do to
        the world in its own process.

        - ``advance?share=&seconds=&seed=``: :meth:`StripeWorld.advance`; answers how many
          subscriptions changed;
        - ``renew?count=N``: the first N live subscriptions renewed and paid (the first of
          the month's burst); answers the events, to deliver as webhooks;
        - ``fail_payment?subscription=ID``: a renewal of it whose first charge fails;
          answers the events.
        """
        from churn.sandbox.stripe import webhooks

        world = self.server.world
        try:
            if self.headers.get("Authorization", "") != f"Bearer {self.server.api_key}":
                raise _ApiError(401, "invalid_request_error",
                                "Invalid API Key provided.", None, None)  # fmt: skip
            if path == "/_sandbox/advance":
                changed = world.advance(float(q.get("share", "0.01")),
                                        seconds=int(q.get("seconds", "3600")),
                                        seed=int(q.get("seed", "0")))  # fmt: skip
                self._send(200, {"object": "sandbox_advance", "changed": changed})
            elif path == "/_sandbox/renew":
                events: list[dict[str, Any]] = []
                for sub_id in webhooks.live_subscriptions(world)[: int(q.get("count", "1"))]:
                    events += webhooks.renew(world, sub_id)
                self._send(200, {"object": "sandbox_events", "data": events})
            elif path == "/_sandbox/fail_payment":
                _, events = webhooks.fail_payment(world, q.get("subscription", ""))
                self._send(200, {"object": "sandbox_events", "data": events})
            else:
                raise _ApiError(404, "invalid_request_error",
                                f"Unrecognized request URL (POST: {path}).", None, None)  # fmt: skip
        except (ValueError, KeyError) as exc:
            bad = _ApiError(400, "invalid_request_error", f"bad sandbox control: {exc}", None, None)
            self._send(bad.status, bad.body)
        except _ApiError as exc:
            self._send(exc.status, exc.body)

    do_DELETE = do_POST


class _Dropped(Exception):
    """A connection dropped on purpose (a ``reset`` or ``slow`` fault)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        world: StripeWorld,
        api_key: str,
        rate: float | None,
        port: int,
        endpoint_rate: float | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.world, self.api_key = world, api_key
        self.limiter = _RateLimiter(rate, endpoint_rate)
        self.requests = 0
        self.count_lock = threading.Lock()
        self.faults = StripeFaults()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A dropped connection (a fault, or a client that timed out) is no server error.
        import sys

        if not isinstance(sys.exc_info()[1], (_Dropped, OSError)):
            super().handle_error(request, client_address)


@dataclass
class RunningStripe:
    api_base: str
    api_key: str
    world: StripeWorld
    _server: _Server
    _thread: threading.Thread

    @property
    def requests(self) -> int:
        return self._server.requests

    @property
    def rate_limited(self) -> int:
        """Requests answered 429 by the rate limits (not by injected faults)."""
        return self._server.limiter.refused

    @property
    def faults(self) -> StripeFaults:
        """Faults to serve next (see :class:`StripeFaults`)."""
        return self._server.faults

    def settings_env(self) -> dict[str, str]:
        return {"STRIPE_API_KEY": self.api_key, "STRIPE_API_BASE": self.api_base}

    def stop(self) -> None:
        self._server.faults.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_stripe_server(
    world: Path | StripeWorld,
    *,
    api_key: str = "sk_test_sandbox",
    rate_per_second: float | None = None,
    endpoint_rate_per_second: float | None = None,
    port: int = 0,
) -> RunningStripe:
    """Serve a world folder on 127.0.0.1 (port 0: a free one) in a background thread;
    with ``rate_per_second`` (and ``endpoint_rate_per_second``), 429 past those rates."""
    loaded = world if isinstance(world, StripeWorld) else StripeWorld(world)
    server = _Server(loaded, api_key, rate_per_second, port, endpoint_rate_per_second)
    thread = threading.Thread(target=server.serve_forever, name="stripe-standin", daemon=True)
    thread.start()
    host, bound = server.server_address[:2]
    return RunningStripe(f"http://{host!s}:{bound}", api_key, loaded, server, thread)


@contextmanager
def stripe_server(world: Path | StripeWorld, **kwargs: Any) -> Iterator[RunningStripe]:
    running = start_stripe_server(world, **kwargs)
    try:
        yield running
    finally:
        running.stop()
