"""A tiny scripted loopback Stripe: queued answers per path, then an empty list page.

Shared by the retry and refusal tests (test_errors) and the rate limiter's (test_rate_limiter).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

EMPTY = {"object": "list", "data": [], "has_more": False, "url": "/v1/x"}


class Script:
    """Queued answers per path; an empty list page once a path's queue is spent."""

    def __init__(self) -> None:
        self.queues: dict[str, list[tuple[int, dict[str, str], Any]]] = {}
        self.requests: list[str] = []
        self.queries: list[str] = []  # path and query string, as sent

    def add(self, path: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.queues.setdefault(path, []).append((status, headers or {}, body))

    def answer(self, path: str) -> tuple[int, dict[str, str], Any]:
        self.requests.append(path)
        queue = self.queues.get(path)
        return queue.pop(0) if queue else (200, {}, EMPTY)


@contextlib.contextmanager
def scripted_server(script: Script, *, keep_alive: bool = False) -> Iterator[str]:
    """Serve ``script`` on a loopback port (HTTP/1.1 with ``keep_alive``); yields the base
    URL. A body given as bytes is sent as it is (a body cut off on the way)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def do_GET(self) -> None:
            script.queries.append(unquote(self.path))
            status, headers, body = script.answer(self.path.split("?", 1)[0])
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
