"""The Stripe stand-in misbehaves as a real network and API do; each fault: a run under it,
then a clean run, and the warehouse equals a fault-free run's (core_*, history, marts).

The world is small (40 accounts) and each run skips the model and the push (the push's
faults are the Salesforce half's); scoring is as of the world's own now, so two runs of
the same data give the same marts.
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from churn.job.run import DEFAULT_STEPS, JobResult, run_job
from churn.sandbox.demo import Sandbox, ensure_world, serve_world
from churn.settings import Settings, load_settings
from faults import tally
from faults.warehouse_compare import contents, difference

pytestmark = [pytest.mark.faults, pytest.mark.slow]

STEPS = tuple(s for s in DEFAULT_STEPS if s.name not in ("model", "push"))
NOW = datetime(2026, 11, 2, tzinfo=UTC).replace(tzinfo=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("faults") / "worlds", 40, 11, now=NOW)


def _settings(box: Sandbox, db: Path, usage: Path | None = None, **stripe: str) -> Settings:
    env = {
        **box.env(),
        "CHURN_DB": str(db),
        "CHURN_RUN__AS_OF": NOW.isoformat(),
        # no wall-clock waits: Retry-After 0 and no backoff; a slow answer is one the
        # client's read timeout gives up on (the stand-in never answers it)
        "STRIPE_BACKOFF_BASE_SECONDS": "0",
        "STRIPE_MAX_RETRIES": "3",
        "STRIPE_PAGE_SIZE": "25",
        **{f"STRIPE_{k.upper()}": v for k, v in stripe.items()},
    }
    if usage is not None:
        env["CHURN_USAGE__FOLDER"] = str(usage)
    return load_settings(env=env)


def _run(settings: Settings) -> JobResult:
    return run_job(settings, steps=STEPS)


@pytest.fixture(scope="module")
def baseline(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Counter[Any]]:
    """Two fault-free runs (the second incremental), as the faulted cases make two."""
    db = tmp_path_factory.mktemp("baseline") / "w.duckdb"
    with serve_world(world) as box:
        settings = _settings(box, db)
        assert _run(settings).status == "success"
        assert _run(settings).status == "success"
    return contents(db)


def _healed(baseline: dict[str, Counter[Any]], db: Path, injected: int, first: JobResult) -> None:
    lost, extra, tables = difference(baseline, contents(db))
    tally.record(faults_injected=injected, runs_healed=1, rows_lost=lost, duplicates=extra)
    assert injected > 0, "the fault was never served"
    assert (lost, extra) == (0, 0), (tables, [(s.name, s.status, s.error) for s in first.steps])


FAULTS = [
    pytest.param("429", {"times": 3, "retry_after": "0"}, "/v1/customers", id="429-burst"),
    pytest.param("5xx", {"times": 2, "status": 503}, "/v1/subscriptions", id="503"),
    pytest.param("5xx", {"times": 1, "status": 500}, "/v1/invoices", id="500"),
    pytest.param("reset", {"times": 2}, "/v1/charges", id="reset"),
    pytest.param("truncate", {"times": 2}, "/v1/prices", id="truncated-body"),
    pytest.param("slow", {"times": 1}, "/v1/products", id="slow-answer"),
    # a page of events (the 25 newest) thin: each its object's newest, so retrieved whole
    # and landed as of the event. (An older thin event of an object changed again later in
    # the same read cannot be: its interval's state is what it did not say; landed as of
    # the fetch, one history version is missing against a fault-free run.)
    pytest.param("partial_event", {"times": 1}, "/v1/events", id="partial-events"),
    # more than the retries allow: the first run fails part-way, the next one heals
    pytest.param("5xx", {"times": 6, "status": 502}, "/v1/payment_intents", id="502-outlasts"),
    pytest.param("reset", {"times": 6}, "/v1/events", id="resets-outlast-events"),
]


@pytest.mark.parametrize(("kind", "options", "path"), FAULTS)
def test_a_fault_then_a_clean_run_equals_a_fault_free_run(
    world: Path,
    baseline: dict[str, Counter[Any]],
    tmp_path: Path,
    kind: str,
    options: dict[str, Any],
    path: str,
) -> None:
    db = tmp_path / "w.duckdb"
    with serve_world(world) as box:
        # a slow answer is one the client's read timeout gives up on: short for that case
        # only (5 s: a page of this small world on a loaded machine answers well within it,
        # and a legit page that took longer would only be retried: GETs are idempotent)
        timeout = {"timeout_seconds": "5"} if kind == "slow" else {}
        settings = _settings(box, db, **timeout)
        box.stripe.faults.add(kind, path=path, **options)
        first = _run(settings)
        injected = box.stripe.faults.total
        box.stripe.faults.clear()
        if options["times"] <= 3:
            # within the retries: healed in the run itself
            assert first.status == "success", [(s.name, s.error) for s in first.steps]
        else:
            assert first.status in ("partial", "failed")
            stripe_step = first.steps[0]
            assert stripe_step.error is not None and len(stripe_step.error) <= 500
        second = _run(settings)
        assert second.status == "success", [(s.name, s.error) for s in second.steps]
    _healed(baseline, db, injected, first)


def test_a_usage_file_missing_a_column_then_fixed_equals_a_fault_free_run(
    world: Path, baseline: dict[str, Counter[Any]], tmp_path: Path
) -> None:
    """Bad input: one of the feed's files loses a column; the run goes on (the other files,
    scoring); once the file is fixed, the warehouse is the fault-free one."""
    usage = tmp_path / "usage"
    shutil.copytree(world / "usage", usage)
    victim = sorted(usage.iterdir())[0]
    good = victim.read_bytes()
    import polars as pl

    frame = pl.read_csv(victim) if victim.suffix == ".csv" else pl.read_parquet(victim)
    broken = frame.drop("active_seats")
    if victim.suffix == ".csv":
        broken.write_csv(victim)
    else:
        broken.write_parquet(victim)
    db = tmp_path / "w.duckdb"
    with serve_world(world) as box:
        settings = _settings(box, db, usage=usage)
        first = _run(settings)
        assert first.status == "success", [(s.name, s.error) for s in first.steps]
        usage_step = next(s for s in first.steps if s.name == "usage")
        assert usage_step.counts["files_quarantined"] == 1
        victim.write_bytes(good)
        assert _run(settings).status == "success"
    _healed(baseline, db, 1, first)


def test_every_fault_kind_is_served_as_documented(world: Path) -> None:
    """The stand-in's faults themselves, through the SDK the extract uses."""
    import stripe

    with serve_world(world) as box:

        def client_timing_out_after(seconds: float) -> stripe.StripeClient:
            return stripe.StripeClient(
                box.stripe.api_key, base_addresses={"api": box.stripe.api_base},
                max_network_retries=0, http_client=stripe.RequestsClient(timeout=seconds),
            )  # fmt: skip

        # A short read timeout only where the answer never comes (slow): every answer that
        # does come may take its time on a loaded machine (was 0.5 s for all of them).
        client = client_timing_out_after(600)
        gives_up = client_timing_out_after(0.5)
        faults = box.stripe.faults
        faults.add("429", retry_after="7")
        with pytest.raises(stripe.RateLimitError) as rate:
            client.raw_request("get", "/v1/customers")
        assert rate.value.headers is not None and rate.value.headers.get("Retry-After") == "7"
        faults.add("5xx", status=502)
        with pytest.raises(stripe.APIError) as five:
            client.raw_request("get", "/v1/customers")
        assert five.value.http_status == 502
        for kind in ("reset", "slow"):
            faults.add(kind)
            with pytest.raises(stripe.APIConnectionError):
                (gives_up if kind == "slow" else client).raw_request("get", "/v1/customers")
        faults.add("truncate")
        with pytest.raises(stripe.APIError, match="Invalid response body"):
            client.raw_request("get", "/v1/customers")
        faults.add("partial_event")
        page = client.raw_request("get", "/v1/events", limit=3).data
        assert page["data"] and all(
            set(e["data"]["object"]) == {"id", "object"} for e in page["data"]
        )
        assert faults.injected == {
            "429": 1, "5xx": 1, "reset": 1, "slow": 1, "truncate": 1, "partial_event": 1
        }  # fmt: skip
        assert faults.pending == 0
        assert client.raw_request("get", "/v1/customers").data["object"] == "list"
