"""The account's token bucket (``churn.pipelines.stripe.ratelimit``), on an injected clock.

Stripe's rate limits page (docs.stripe.com/rate-limits): "Global API rate limit: Live
mode: 100 requests per second; Sandbox: 25 requests per second"; "API endpoints have a
default limit of 25 requests per second"; "Stripe treats each named API operation as a
separate endpoint (for example, POST /v1/payment_intents and GET
/v1/payment_intents/{id} are separate endpoints). Requests to GET
/v1/payment_intents/{id} for different PaymentIntent IDs count towards the same endpoint
limit." No test here sleeps: time moves only when the limiter's own sleep is called.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from churn.pipelines.stripe.client import StripeApi, make_stripe_client
from churn.pipelines.stripe.ratelimit import RateLimiter, TokenBucket, endpoint_of
from churn.settings import StripeSettings
from stripe_extract.scripted import Script, scripted_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _limiter(
    rate: float, endpoint_rate: float = 0.0, burst: float = 0.5
) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(
        rate, endpoint_rate, burst_seconds=burst, clock=clock, sleep=clock.sleep
    ), clock


def test_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.wait_for_one(0.0) == 0.0 and bucket.tokens == 5.0
    bucket.tokens = 0.0
    assert bucket.wait_for_one(0.0) == pytest.approx(0.1)
    assert bucket.wait_for_one(0.25) == 0.0 and bucket.tokens == pytest.approx(2.5)
    bucket.wait_for_one(100.0)
    assert bucket.tokens == 5.0  # never more than the burst


def test_one_endpoint_is_held_to_its_own_rate() -> None:
    limiter, clock = _limiter(100.0, 25.0)
    start = clock.now
    for _ in range(262):  # 12.5 of burst, then 250 at 25 a second: 10 seconds
        limiter.acquire("/v1/charges")
    assert clock.now - start == pytest.approx(10.0, abs=0.05)


def test_four_endpoints_share_the_global_rate() -> None:
    limiter, clock = _limiter(100.0, 25.0)
    start = clock.now
    endpoints = ["/v1/charges", "/v1/invoices", "/v1/payment_intents", "/v1/invoice_payments"]
    for i in range(1050):  # 50 of global burst, then 1,000 at 100 a second
        limiter.acquire(endpoints[i % 4])
    assert clock.now - start == pytest.approx(10.0, abs=0.05)
    # eight endpoints are still 100 a second together: the global bucket binds
    limiter, clock = _limiter(100.0, 25.0)
    start = clock.now
    for i in range(1050):
        limiter.acquire(f"/v1/resource{i % 8}")
    assert clock.now - start == pytest.approx(10.0, abs=0.05)


def test_zero_turns_a_limit_off() -> None:
    limiter, clock = _limiter(0.0, 0.0)
    for _ in range(10_000):
        limiter.acquire("/v1/charges")
    assert clock.slept == [] and not limiter.enabled


def test_a_429_pauses_every_endpoint_until_it_is_over() -> None:
    limiter, clock = _limiter(100.0, 25.0)
    limiter.acquire("/v1/charges")
    limiter.pause(3.0)
    start = clock.now
    waited = limiter.acquire("/v1/invoices")  # another stream, another endpoint
    assert waited == pytest.approx(3.0) and clock.now - start == pytest.approx(3.0)
    assert limiter.pauses == 1 and limiter.paused_for() == 0.0
    # a shorter pause inside a longer one does not shorten it
    limiter.pause(5.0)
    limiter.pause(1.0)
    assert limiter.paused_for() == pytest.approx(5.0)
    # the request that met the 429 waited its Retry-After itself
    assert limiter.acquire("/v1/charges", ignore_pause=True) == 0.0


def test_endpoints_are_named_operations() -> None:
    assert endpoint_of("/v1/charges") == "/v1/charges"
    assert endpoint_of("/v1/payment_intents/pi_1") == endpoint_of("/v1/payment_intents/pi_2")
    assert endpoint_of("/v1/payment_intents/pi_1") == "/v1/payment_intents/{id}"
    assert endpoint_of("/v1/charges?limit=100") == "/v1/charges"


# -- 429 across streams, through StripeApi --------------------------------------------

KEY = "sk_test_ratelimiter"


@pytest.fixture
def limited_server() -> Iterator[tuple[str, list[str]]]:
    """Answers 429 (Retry-After: 2) to the first /v1/customers request, 200 otherwise."""
    script = Script()
    body = (
        b'{"error":{"type":"invalid_request_error","code":"rate_limit",'
        b'"message":"Too many requests hit the API too quickly."}}'
    )
    script.add("/v1/customers", 429, body, {"Retry-After": "2"})
    with scripted_server(script, keep_alive=True) as base:
        yield base, script.requests


def test_a_429_on_one_stream_backs_off_every_stream(limited_server: tuple[str, list[str]]) -> None:
    """One stream meets 429: it waits its Retry-After (the retries' sleep), and the
    limiter holds the other streams' next requests until then too (the limit is the
    account's: "the basic rate limiter restricts the number of API requests per second"
    per account, so any stream's next request would meet it)."""
    base, seen = limited_server
    settings = StripeSettings(api_key=KEY, api_base=base)
    limiter, clock = _limiter(settings.rate_per_second, settings.endpoint_rate_per_second)
    slept: list[float] = []
    api = StripeApi(make_stripe_client(settings), settings, sleep=slept.append, limiter=limiter)
    assert api.get("customer", "/v1/customers", {"limit": 100})["object"] == "list"
    assert slept == [2.0] and api.rate_limited == 1 and api.calls == 2
    # The customers stream waited out the Retry-After itself (no second wait) ...
    assert clock.slept == []
    # ... and every other stream waits for the pause: 2 seconds from the 429.
    before = clock.now
    api.get("invoice", "/v1/invoices", {"limit": 100})
    assert clock.now - before == pytest.approx(2.0)
    assert seen == ["/v1/customers", "/v1/customers", "/v1/invoices"]


def test_stripes_live_limits_are_the_defaults() -> None:
    settings = StripeSettings()
    assert (settings.rate_per_second, settings.endpoint_rate_per_second) == (100.0, 25.0)
    assert settings.concurrency >= 4  # four endpoints at 25 make the global 100
