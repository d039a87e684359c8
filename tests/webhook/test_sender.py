"""The Stripe stand-in's webhook sender, without a network: a fake session answers."""

from __future__ import annotations

from typing import Any

import stripe

from churn.sandbox.stripe.webhooks import WebhookSender, sign


class _Answer:
    def __init__(self, status: int) -> None:
        self.status_code = status


class _Session:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    def post(self, url: str, *, data: bytes, headers: dict[str, str], timeout: float) -> _Answer:
        self.posts.append((url, data, headers))
        return _Answer(self.statuses.pop(0) if self.statuses else 200)


def _sender(session: _Session, **kwargs: Any) -> tuple[WebhookSender, list[float]]:
    clock = [0.0]
    sender = WebhookSender(
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
        sign_clock=lambda: 1_700_000_000,
        session=session,  # type: ignore[arg-type]
        **kwargs,
    )
    return sender, clock


def _events(n: int) -> list[dict[str, Any]]:
    return [{"id": f"evt_{i}", "object": "event", "type": "invoice.paid"} for i in range(n)]


def test_each_attempt_is_signed_as_stripe_signs_and_the_sdk_accepts_it() -> None:
    session = _Session([])
    sender, _ = _sender(session)
    sender.register("http://x/stripe/webhook", "whsec_abc")
    sender.send(_events(1))
    assert sender.deliver_pending() == 1
    _, body, headers = session.posts[0]
    assert headers["Stripe-Signature"] == sign(body.decode(), "whsec_abc", 1_700_000_000)
    assert stripe.WebhookSignature.verify_header(body, headers["Stripe-Signature"], "whsec_abc")


def test_non_2xx_is_retried_with_growing_backoff_then_given_up() -> None:
    session = _Session([500] * 10)
    sender, _ = _sender(session, backoff=(1, 5, 30))
    sender.register("http://x/stripe/webhook", "whsec_abc")
    sender.send(_events(1))
    sender.deliver_pending()
    assert [d.attempt for d in sender.log] == [1, 2, 3, 4]
    assert [d.at for d in sender.log] == [0.0, 1.0, 6.0, 36.0]
    assert sender.given_up == [("evt_0", "http://x/stripe/webhook")]


def test_duplicates_and_reordering_are_seeded() -> None:
    def order(seed: int) -> list[str]:
        session = _Session([])
        sender, _ = _sender(session, seed=seed, duplicate_rate=0.3, reorder_rate=0.3)
        sender.register("http://x/stripe/webhook", "whsec_abc")
        sender.send(_events(20))
        sender.deliver_pending()
        return [d.event_id for d in sender.log]

    first = order(1)
    assert first == order(1)
    assert len(first) > 20  # some twice
    assert first[:20] != [f"evt_{i}" for i in range(20)]  # some out of order
    assert set(first) == {f"evt_{i}" for i in range(20)}
