"""The Stripe client: one ``stripe.StripeClient`` per run, and our own bounded retries.

The SDK's own retries are switched off (``max_network_retries=0``) so that 429 with
``Retry-After`` and 5xx backoff are decided here, with a bound from settings, and every
HTTP request is counted. Nothing here touches ``stripe.api_key``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from churn.errors import ConfigError, StripeExtractError, StripeRequestError
from churn.pipelines.stripe.ratelimit import RateLimiter, endpoint_of
from churn.settings import StripeSettings

log = logging.getLogger(__name__)
# The SDK logs each response body at DEBUG ("API response body"): whole pages of customer
# names and emails, never wanted, whatever level the service logs at. Its INFO lines
# (method, path, status: one per request, thousands a backfill) only with `churn -v`
# (the CLI's log set-up lowers this to INFO then, never to DEBUG).
logging.getLogger("stripe").setLevel(logging.WARNING)

_RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})


def make_stripe_client(
    stripe_settings: StripeSettings, http_client: stripe.HTTPClient | None = None
) -> stripe.StripeClient:
    """A client for this run, pointed at ``api_base``; the SDK never retries by itself."""
    if stripe_settings.api_key is None:
        raise ConfigError("STRIPE_API_KEY is not set")
    return stripe.StripeClient(
        stripe_settings.api_key.get_secret_value(),
        base_addresses={"api": stripe_settings.api_base},
        max_network_retries=0,
        http_client=http_client or stripe.RequestsClient(timeout=stripe_settings.timeout_seconds),
    )


@dataclass
class StripeApi:
    """GET requests with bounded retries, counted; errors name the stream and request.

    Safe to share between threads (a backfill's streams): every request first takes a
    token from ``limiter`` (the account's rate limits, :mod:`.ratelimit`), and a 429
    pauses the limiter, so every stream backs off, not only the one that met it.
    """

    client: stripe.StripeClient
    settings: StripeSettings
    sleep: Callable[[float], None] = time.sleep
    calls: int = 0
    retries: int = 0
    calls_by_stream: dict[str, int] = field(default_factory=dict)
    #: The API version the last answer was rendered in (its Stripe-Version header).
    api_version: str | None = None
    #: None: one from ``settings`` (``rate_per_second``, ``endpoint_rate_per_second``).
    limiter: RateLimiter | None = None
    #: 429 answers met (all streams).
    rate_limited: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.limiter is None:
            # Its own (real) sleep: ``sleep`` is the retries' backoff, which tests record.
            self.limiter = RateLimiter(
                self.settings.rate_per_second, self.settings.endpoint_rate_per_second
            )

    def get(self, stream: str, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One GET; retries 429 (honouring Retry-After), 409 and 5xx up to ``max_retries``."""
        attempt = 0
        limiter = self.limiter
        assert limiter is not None
        endpoint = endpoint_of(path)
        met_429 = False
        while True:
            # After its own 429 a request has waited out the Retry-After already.
            limiter.acquire(endpoint, ignore_pause=met_429)
            met_429 = False
            with self._count_lock:
                self.calls += 1
                self.calls_by_stream[stream] = self.calls_by_stream.get(stream, 0) + 1
            try:
                response = self.client.raw_request("get", path, **dict(params))
                malformed = _malformed(response.data)
            except stripe.StripeError as exc:
                status = exc.http_status
                # A 2xx whose body is not JSON (cut off on the way: "Invalid response body
                # from API"): the request was fine, its answer was lost; ask again.
                truncated = status is not None and 200 <= status < 300
                retryable = (
                    truncated
                    or status in _RETRYABLE_STATUS
                    or (status is None and isinstance(exc, stripe.APIConnectionError))
                )
                if retryable and attempt < self.settings.max_retries:
                    delay = self._delay(attempt, exc.headers or {})
                    if status == 429:
                        # The account's limit, not this stream's: every stream waits.
                        with self._count_lock:
                            self.rate_limited += 1
                        limiter.pause(delay)
                        met_429 = True
                    log.warning(
                        "stream %s: GET %s answered %s; retry %d/%d in %.1fs",
                        stream,
                        path,
                        status or "no response",
                        attempt + 1,
                        self.settings.max_retries,
                        delay,
                    )
                    attempt += 1
                    with self._count_lock:
                        self.retries += 1
                    self.sleep(delay)
                    continue
                message = _describe(stream, path, params, exc, attempt, retryable, truncated)
                if self.settings.api_key is not None:
                    message = message.replace(self.settings.api_key.get_secret_value(), "***")
                raise StripeRequestError(message, exc.http_status) from None
            if malformed is not None:
                if attempt < self.settings.max_retries:
                    log.warning(
                        "stream %s: GET %s answered %s; retry %d/%d",
                        stream,
                        path,
                        malformed,
                        attempt + 1,
                        self.settings.max_retries,
                    )
                    attempt += 1
                    with self._count_lock:
                        self.retries += 1
                    self.sleep(self._delay(attempt - 1, {}))
                    continue
                raise StripeExtractError(
                    f"stream {stream}: GET {path} answered {malformed} after {attempt} retries"
                )
            self.api_version = _header(response.headers or {}, "stripe-version") or self.api_version
            data = response.data
            assert isinstance(data, dict)
            return data

    def _delay(self, attempt: int, headers: Mapping[str, str]) -> float:
        retry_after = _header(headers, "retry-after")
        cap = self.settings.backoff_max_seconds
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), cap)
            except ValueError:
                pass
        return float(min(self.settings.backoff_base_seconds * (2**attempt), cap))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


#: At most this many characters of Stripe's own explanation go into an error message.
REASON_BOUND = 200


def _malformed(data: object) -> str | None:
    """What is wrong with a 2xx body that parsed, or None: every Stripe answer is an
    object with an ``object`` field, and a list's ``data`` is an array."""
    if not isinstance(data, dict):
        return "a body that is not a JSON object"
    if not isinstance(data.get("object"), str):
        return "a JSON object without its 'object' field"
    if data["object"] == "list" and not isinstance(data.get("data"), list):
        return "a list without its 'data' array"
    return None


def _describe(
    stream: str,
    path: str,
    params: Mapping[str, Any],
    exc: stripe.StripeError,
    attempt: int,
    retryable: bool,
    truncated: bool = False,
) -> str:
    shown = {k: v for k, v in params.items() if k != "expand"}
    request = f"GET {path}" + (f" {shown}" if shown else "")
    status = exc.http_status if exc.http_status is not None else "no response"
    if truncated:
        # The SDK's message quotes the whole body (customer names, emails): never kept.
        reason = "the body was not valid JSON (cut off or malformed)"
    else:
        # Stripe's explanation (an error body's message), bounded; never the key itself.
        reason = (exc.user_message or str(exc) or type(exc).__name__).strip()
        if len(reason) > REASON_BOUND:
            reason = reason[: REASON_BOUND - 1] + "…"
    after = f" after {attempt} retries" if retryable and attempt else ""
    return f"stream {stream}: {request} failed{after} ({status} {type(exc).__name__}): {reason}"
