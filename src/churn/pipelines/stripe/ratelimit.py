"""One token bucket per Stripe account, shared by every thread that reads it.

Stripe's rate limits page (docs.stripe.com/rate-limits): "Global API rate limit: Live
mode: 100 requests per second; Sandbox: 25 requests per second", and "API endpoints have
a default limit of 25 requests per second" (each named operation is its own endpoint:
``GET /v1/charges`` is one). Calls to an endpoint "also count against global limits".

:class:`RateLimiter` holds the global bucket and one bucket per endpoint: a request takes
a token from both, waiting (outside any lock) until both have one. A 429 from Stripe
pauses every stream, not only the one that met it (:meth:`RateLimiter.pause`): the limit
is the account's, so the next request of any stream would meet it too.

Clock and sleep are injected, so the tests drive time by hand (no real sleeps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` stored; starts full.

    Not locked: :class:`RateLimiter` takes its own lock around every use.
    """

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None else max(self.stamp, now)

    def wait_for_one(self, now: float) -> float:
        """Seconds until one token is there (0 when it is)."""
        self.refill(now)
        # A hair under one token is one: float sums of refills land just below it.
        return 0.0 if self.tokens >= 1.0 - 1e-9 else (1.0 - self.tokens) / self.rate


class RateLimiter:
    """The account's global bucket and one per endpoint, and a shared 429 pause.

    ``rate_per_second`` 0 (or less) turns the global limit off; ``endpoint_rate_per_second``
    0 the per-endpoint one. ``burst_seconds`` is how many seconds of tokens a bucket holds
    (half a second's: a client bucket no deeper than Stripe's never runs ahead of it).
    """

    def __init__(
        self,
        rate_per_second: float,
        endpoint_rate_per_second: float = 0.0,
        *,
        burst_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate_per_second
        self.endpoint_rate = endpoint_rate_per_second
        self.burst_seconds = burst_seconds
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._global = (
            TokenBucket(rate_per_second, max(1.0, rate_per_second * burst_seconds))
            if rate_per_second > 0
            else None
        )
        self._endpoints: dict[str, TokenBucket] = {}
        self._paused_until = 0.0
        #: Seconds callers spent waiting for tokens or a pause (all threads together).
        self.waited = 0.0
        #: 429 pauses taken.
        self.pauses = 0

    @property
    def enabled(self) -> bool:
        return self._global is not None or self.endpoint_rate > 0

    def _bucket(self, endpoint: str) -> TokenBucket | None:
        if self.endpoint_rate <= 0:
            return None
        bucket = self._endpoints.get(endpoint)
        if bucket is None:
            rate = self.endpoint_rate
            bucket = self._endpoints[endpoint] = TokenBucket(
                rate, max(1.0, rate * self.burst_seconds)
            )
        return bucket

    def delay(self, endpoint: str, *, ignore_pause: bool = False) -> float:
        """Take a token for ``endpoint`` when one is there (returns 0), else how long to
        wait before asking again; nothing is taken then."""
        with self._lock:
            now = self.clock()
            wait = 0.0 if ignore_pause else self._paused_until - now
            wait = wait if wait > 1e-9 else 0.0
            buckets = [b for b in (self._global, self._bucket(endpoint)) if b is not None]
            for bucket in buckets:
                wait = max(wait, bucket.wait_for_one(now))
            if wait > 0:
                return wait
            for bucket in buckets:
                bucket.tokens -= 1.0
            return 0.0

    def acquire(self, endpoint: str, *, ignore_pause: bool = False) -> float:
        """Block until a request to ``endpoint`` may go; returns the seconds waited.

        ``ignore_pause``: the caller met the 429 and has waited its Retry-After itself."""
        waited = 0.0
        while True:
            wait = self.delay(endpoint, ignore_pause=ignore_pause)
            if wait <= 0:
                if waited:
                    with self._lock:
                        self.waited += waited
                return waited
            self.sleep(wait)
            waited += wait

    def pause(self, seconds: float) -> None:
        """Stripe answered 429: no request of any stream goes for ``seconds`` (the limit
        is the account's: the next request of any stream would meet it too)."""
        with self._lock:
            until = self.clock() + max(0.0, seconds)
            self.pauses += 1
            self._paused_until = max(self._paused_until, until)

    def paused_for(self) -> float:
        """Seconds left of the current 429 pause (0: none)."""
        with self._lock:
            return max(0.0, self._paused_until - self.clock())


def endpoint_of(path: str) -> str:
    """The endpoint a GET counts against: ``/v1/charges`` for a list, and
    ``/v1/charges/{id}`` for any retrieve of that resource ("Requests to GET
    /v1/payment_intents/{id} for different PaymentIntent IDs count towards the same
    endpoint limit")."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) >= 3:
        return "/" + "/".join([*parts[:2], "{id}", *parts[3:]])
    return "/" + "/".join(parts)
