"""The Stripe webhook receiver: verify, spool, and only then answer 2xx.

``make_app(settings, spool)`` is a Starlette application with one route,
``POST /stripe/webhook``. A delivery is, in this order:

1. refused (400, counted ``refused_size``) when its body is over ``max_body_bytes``,
   from ``Content-Length`` before reading, else while reading;
2. verified with the Stripe SDK's own ``WebhookSignature.verify_header`` against each
   configured endpoint secret (a roll has two), within ``tolerance_seconds``: a missing
   or wrong signature is refused (400, ``refused_signature``), a valid one with an old
   timestamp too (400, ``refused_stale``: a replayed delivery);
3. parsed; an event of the other mode than ``STRIPE_API_KEY``'s (a test event for a live
   key) is refused (400, ``refused_mode``), as the extract refuses it;
4. written to the spool (:class:`~churn.pipelines.webhook.spool.Spool`, durable on
   return) and answered 200. Event types whose object the warehouse does not keep are
   stored as ``ignored`` and counted; a duplicate id is answered 200 and counted. A
   failed spool write answers 503, so Stripe retries.

Nothing here touches the warehouse, so deliveries are acknowledged while ``churn run``
holds it. Errors name the reason, never the payload.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from churn.pipelines.stripe.streams import OBJECT_TABLES
from churn.pipelines.webhook.spool import Spool
from churn.settings import Settings

log = logging.getLogger(__name__)

PATH = "/stripe/webhook"
#: The SDK's message for a valid signature whose timestamp is too old (stripe 16).
_STALE_PREFIX = "Timestamp outside the tolerance zone"


@dataclass(frozen=True)
class Verdict:
    """What a delivery's check found: ``ok``, or the counter of the refusal and why."""

    ok: bool
    reason: str = ""
    message: str = ""
    event: dict[str, Any] | None = None


def verify(body: bytes, header: str | None, settings: Settings) -> Verdict:
    """Check a delivery's signature against each secret, then its mode; parse it.

    Pure apart from the SDK's clock (``time.time`` for the tolerance).
    """
    secrets = [s.get_secret_value() for s in settings.stripe.webhook_secret]
    if not secrets:
        return Verdict(False, "refused_no_secret", "no STRIPE_WEBHOOK_SECRET configured")
    tolerance = settings.webhook.tolerance_seconds
    stale = False
    matched = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            stale = stale or str(exc).startswith(_STALE_PREFIX)
            continue
        except UnicodeDecodeError:
            return Verdict(False, "refused_signature", "body is not UTF-8")
        matched = True
        break
    if not matched:
        if stale:
            return Verdict(False, "refused_stale", "signature timestamp outside the tolerance")
        return Verdict(False, "refused_signature", "no valid Stripe-Signature for this endpoint")
    try:
        event = json.loads(body)
    except ValueError:
        return Verdict(False, "refused_body", "body is not JSON")
    if not (isinstance(event, dict) and isinstance(event.get("id"), str)):
        return Verdict(False, "refused_body", "body is not an event")
    key_mode = settings.stripe.key_mode
    live = event.get("livemode")
    if key_mode is not None and isinstance(live, bool) and live != (key_mode == "live"):
        mode = "live" if live else "test"
        return Verdict(
            False, "refused_mode", f"a {mode}-mode event for a {key_mode}-mode STRIPE_API_KEY"
        )
    return Verdict(True, event=event)


def used(event: dict[str, Any]) -> bool:
    """Whether the warehouse keeps this event's object (else it is stored as ignored)."""
    obj = (event.get("data") or {}).get("object")
    kind = obj.get("object") if isinstance(obj, dict) else None
    return isinstance(kind, str) and kind in OBJECT_TABLES


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_app(settings: Settings, spool: Spool) -> Starlette:
    """The receiver as an ASGI application (serve it with uvicorn)."""
    limit = settings.webhook.max_body_bytes

    async def refuse(reason: str, message: str) -> JSONResponse:
        try:
            await run_in_threadpool(spool.count, reason)
        except Exception:  # the refusal stands even if the counter cannot be written
            log.exception("webhook: could not count a refusal (%s)", reason)
        log.warning("webhook delivery refused: %s", message)
        return JSONResponse({"error": message}, status_code=400)

    async def receive(request: Request) -> JSONResponse:
        body = await _read_limited(request, limit)
        if body is None:
            return await refuse("refused_size", f"body over {limit} bytes")
        verdict = verify(body, request.headers.get("stripe-signature"), settings)
        if not verdict.ok or verdict.event is None:
            return await refuse(verdict.reason, verdict.message)
        event = verdict.event
        try:
            new = await run_in_threadpool(spool.put, event, body.decode("utf-8"), used=used(event))
        except Exception as exc:
            # Not durable: Stripe must retry. The reason only, never the payload.
            log.error("webhook: spool write failed (%s); answered 503", type(exc).__name__)
            return JSONResponse({"error": "not stored; retry"}, status_code=503)
        return JSONResponse({"received": True, "duplicate": not new})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(PATH, receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )
