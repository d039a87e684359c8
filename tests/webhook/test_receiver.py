"""The receiver's checks (``verify``) and its answers over loopback.

Stripe's signature scheme, as its docs give it: the ``Stripe-Signature`` header carries
``t=`` (a timestamp) and one or more ``v1=`` signatures, each the hex HMAC-SHA256 of
``"{t}.{body}"`` with the endpoint's secret; during a secret roll Stripe signs with both
the old and the new secret. The SDK's ``verify_header`` accepts a header if any ``v1``
matches and refuses a timestamp older than the tolerance ("Timestamp outside the
tolerance zone"), 300 s by default (``Webhook.DEFAULT_TOLERANCE`` in stripe 16), which is
what stops a captured delivery from being replayed later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from churn.job.webhook import receiver
from churn.pipelines.webhook import PENDING, Spool
from churn.pipelines.webhook.receiver import used, verify
from churn.sandbox.stripe.webhooks import sign
from churn.settings import Settings, load_settings

SECRET = "whsec_current"
OLD = "whsec_previous"


def _settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "CHURN_DB": str(tmp_path / "churn.duckdb"),
        "STRIPE_API_KEY": "sk_test_x",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "CHURN_WEBHOOK__PORT": "0",
    }
    return load_settings(env={**base, **env})


def _event(i: int = 1, *, livemode: bool = False, kind: str = "invoice") -> dict[str, Any]:
    return {
        "id": f"evt_{i:06d}",
        "object": "event",
        "type": f"{kind}.updated",
        "created": int(time.time()),
        "livemode": livemode,
        "data": {"object": {"id": f"in_{i:06d}", "object": kind, "customer": "cus_1"}},
    }


def _body(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_a_delivery_signed_with_the_endpoint_secret_is_accepted(tmp_path: Path) -> None:
    body = _body(_event())
    verdict = verify(body, sign(body.decode(), SECRET, int(time.time())), _settings(tmp_path))
    assert verdict.ok and verdict.event is not None and verdict.event["id"] == "evt_000001"


def test_forged_missing_and_malformed_signatures_are_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    body = _body(_event())
    now = int(time.time())
    for header in (sign(body.decode(), "whsec_forged", now), None, "", "t=abc,v1=00", "v0=1"):
        verdict = verify(body, header, settings)
        assert (verdict.ok, verdict.reason) == (False, "refused_signature"), header
    # A body changed after signing (one byte) no longer matches.
    tampered = body.replace(b"in_000001", b"in_000002")
    assert verify(tampered, sign(body.decode(), SECRET, now), settings).reason == (
        "refused_signature"
    )


def test_a_replayed_old_delivery_is_refused_as_stale(tmp_path: Path) -> None:
    """Signed with the right secret, but 301 s ago: outside the 300 s tolerance."""
    body = _body(_event())
    old = sign(body.decode(), SECRET, int(time.time()) - 301)
    verdict = verify(body, old, _settings(tmp_path))
    assert (verdict.ok, verdict.reason) == (False, "refused_stale")
    # Within the tolerance it is a valid (late) delivery.
    recent = sign(body.decode(), SECRET, int(time.time()) - 200)
    assert verify(body, recent, _settings(tmp_path)).ok


def test_during_a_secret_roll_either_secret_is_accepted(tmp_path: Path) -> None:
    settings = _settings(tmp_path, STRIPE_WEBHOOK_SECRET=f"{SECRET},{OLD}")
    body = _body(_event())
    now = int(time.time())
    assert verify(body, sign(body.decode(), OLD, now), settings).ok
    assert verify(body, sign(body.decode(), SECRET, now), settings).ok
    # Stripe's header during a roll: one timestamp, a v1 for each secret.
    both = (
        sign(body.decode(), "whsec_other", now) + "," + sign(body.decode(), OLD, now).split(",")[1]
    )
    assert verify(body, both, settings).ok
    assert not verify(body, sign(body.decode(), "whsec_other", now), settings).ok


def test_an_event_of_the_other_mode_than_the_key_is_refused(tmp_path: Path) -> None:
    """The seed's rule: test-mode events never reach a production org."""
    now = int(time.time())
    test_event = _body(_event(livemode=False))
    live = _settings(tmp_path, STRIPE_API_KEY="sk_live_x")
    verdict = verify(test_event, sign(test_event.decode(), SECRET, now), live)
    assert (verdict.ok, verdict.reason) == (False, "refused_mode")
    live_event = _body(_event(livemode=True))
    assert verify(live_event, sign(live_event.decode(), SECRET, now), live).ok
    verdict = verify(live_event, sign(live_event.decode(), SECRET, now), _settings(tmp_path))
    assert verdict.reason == "refused_mode"


def test_without_a_secret_nothing_is_accepted(tmp_path: Path) -> None:
    body = _body(_event())
    settings = _settings(tmp_path, STRIPE_WEBHOOK_SECRET="")
    assert verify(body, sign(body.decode(), SECRET, int(time.time())), settings).reason == (
        "refused_no_secret"
    )


def test_event_types_whose_object_is_not_kept_are_not_used() -> None:
    assert used(_event(kind="invoice"))
    assert used(_event(kind="subscription"))
    assert not used(_event(kind="payout"))
    assert not used({"id": "evt_x", "data": {}})


def test_the_spool_keeps_one_row_per_event_id_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    event = _event()
    assert spool.put(event, json.dumps(event), used=True) is True
    assert spool.put(event, json.dumps(event), used=True) is False
    assert spool.put(_event(2, kind="payout"), "{}", used=False) is True
    claimed = spool.claim(10)
    assert [c.event_id for c in claimed] == ["evt_000001"]
    spool.mark_done([c.seq for c in claimed])
    assert spool.claim(10) == []
    counters = spool.counters()
    assert counters["accepted"] == 2 and counters["duplicate"] == 1
    assert counters["ignored_type"] == 1 and counters["processed"] == 1
    assert counters["spool_done"] == 1 and counters["spool_ignored"] == 1


@pytest.mark.slow
def test_over_loopback_refusals_are_400_counted_and_never_stored(tmp_path: Path) -> None:
    settings = _settings(tmp_path, CHURN_WEBHOOK__MAX_BODY_BYTES="4096")
    with receiver(settings, port=0, worker=False) as rx:
        post = requests.Session()
        now = int(time.time())

        def send(body: bytes, header: str | None) -> int:
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["Stripe-Signature"] = header
            return post.post(rx.url, data=body, headers=headers, timeout=600).status_code

        good = _body(_event(1))
        assert send(good, sign(good.decode(), SECRET, now)) == 200
        assert send(good, sign(good.decode(), SECRET, now)) == 200  # a redelivery
        forged = _body(_event(2))
        assert send(forged, sign(forged.decode(), "whsec_forged", now)) == 400
        assert send(forged, None) == 400
        replay = _body(_event(3))
        assert send(replay, sign(replay.decode(), SECRET, now - 3600)) == 400
        test_mode = _body(_event(4, livemode=True))  # a live event for this test key
        assert send(test_mode, sign(test_mode.decode(), SECRET, now)) == 400
        big = _event(5)
        big["data"]["object"]["padding"] = "x" * 5000
        big_body = _body(big)
        assert send(big_body, sign(big_body.decode(), SECRET, now)) == 400
        payout = _body(_event(6, kind="payout"))
        assert send(payout, sign(payout.decode(), SECRET, now)) == 200
        counters = rx.spool.counters()
        assert rx.spool.event_ids() == ["evt_000001", "evt_000006"]
        assert rx.spool.event_ids(PENDING) == ["evt_000001"]
    assert counters["accepted"] == 2 and counters["duplicate"] == 1
    assert counters["refused_signature"] == 2
    assert counters["refused_stale"] == 1
    assert counters["refused_mode"] == 1
    assert counters["refused_size"] == 1
    assert counters["ignored_type"] == 1


@pytest.mark.slow
def test_a_spool_that_cannot_be_written_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not durable, so not acknowledged: Stripe retries a 5xx."""
    import sqlite3

    settings = _settings(tmp_path)
    with receiver(settings, port=0, worker=False) as rx:

        def broken(*args: Any, **kwargs: Any) -> bool:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(rx.spool, "put", broken)
        body = _body(_event())
        answer = requests.post(
            rx.url,
            data=body,
            headers={"Stripe-Signature": sign(body.decode(), SECRET, int(time.time()))},
            timeout=600,
        )
        assert answer.status_code == 503
        assert "in_000001" not in answer.text


def test_webhook_serve_without_a_secret_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from typer.testing import CliRunner

    from churn.cli import app

    for name in list(os.environ):
        if name.startswith(("STRIPE_", "CHURN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHURN_DB", str(tmp_path / "w.duckdb"))
    result = CliRunner().invoke(app, ["webhook", "serve", "--port", "0"])
    assert result.exit_code == 2
    assert "STRIPE_WEBHOOK_SECRET" in result.output


def test_webhook_status_prints_the_spools_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    settings = _settings(tmp_path)
    spool = Spool(tmp_path / "churn.duckdb.webhook-spool.sqlite")
    spool.count("refused_signature", 2)
    monkeypatch.setenv("CHURN_DB", str(settings.db))
    result = CliRunner().invoke(app, ["webhook", "status"])
    assert result.exit_code == 0, result.output
    assert "refused_signature: 2" in result.output
