from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

from sklearn.metrics import roc_auc_score

from churn.sandbox.world import World, generate_world


def test_same_seed_same_world_other_seed_other_world() -> None:
    a, b, c = generate_world(30, seed=5), generate_world(30, seed=5), generate_world(30, seed=6)
    assert a.events == b.events and a.truth == b.truth
    assert a.truth != c.truth


def test_world_covers_what_the_issue_lists(small_world: tuple[World, Path]) -> None:
    world, _ = small_world
    big = generate_world(400, seed=2)
    currencies = {s["currency"] for s in big.stripe["subscription"]}
    assert {"jpy", "eur", "usd"} <= currencies
    intervals = {
        s["items"]["data"][0]["price"]["recurring"]["interval"] for s in big.stripe["subscription"]
    }
    assert intervals == {"month", "year"}
    types = Counter(e["type"] for e in big.events)
    for t in ("invoice.payment_failed", "charge.failed", "customer.subscription.deleted",
              "customer.subscription.updated", "payment_method.attached", "invoice.paid"):  # fmt: skip
        assert types[t] > 0, t
    codes = {c["outcome"]["reason"] for c in big.stripe["charge"] if c["status"] == "failed"}
    assert {"insufficient_funds", "expired_card"} <= codes
    assert any(s["trial_start"] for s in big.stripe["subscription"])
    assert any(s["discounts"] for s in big.stripe["subscription"])
    withdrawn = [e for e in big.events if e["type"] == "customer.subscription.updated"
                 and e["data"]["previous_attributes"].get("cancel_at_period_end") is True]  # fmt: skip
    assert withdrawn, "some scheduled cancellations are withdrawn"
    owners = big.salesforce["User"]
    assert any(not u["IsActive"] for u in owners)
    linked = Counter(t["account_id"] for t in big.truth)
    assert linked[None] > 0 and max(n for a, n in linked.items() if a) >= 2
    assert all(e["created"] <= big.now for e in big.events)
    assert len(world.truth) == 60


def test_current_api_shapes(small_world: tuple[World, Path]) -> None:
    world, _ = small_world
    sub = world.stripe["subscription"][0]
    assert "current_period_end" not in sub
    assert "current_period_end" in sub["items"]["data"][0]
    inv = world.stripe["invoice"][0]
    assert inv["parent"]["subscription_details"]["subscription"].startswith("sub_")
    assert "subscription" not in inv and "invoice" not in world.stripe["charge"][0]


def test_salesforce_ids_are_ids_a_real_org_writes(small_world: tuple[World, Path]) -> None:
    """Every Account, Contact and Opportunity Id is an 18-character Id whose suffix is the
    one its first 15 characters give: the 15-character form (the one the UI and reports
    show, which people copy into Stripe metadata) names the same record. The count used
    to run into the suffix ("001000000000006541": no suffix holds a 6)."""
    from churn.pipelines.links import sf_id18

    world, _ = small_world
    for sobject in ("Account", "Contact", "Opportunity"):
        ids = [r["Id"] for r in world.salesforce[sobject]]
        assert ids and len(set(ids)) == len(ids)
        assert [sf_id18(i[:15]) for i in ids] == ids, sobject


def test_folder_format_round_trips(small_world: tuple[World, Path]) -> None:
    world, folder = small_world
    manifest = json.loads((folder / "world.json").read_text())
    assert manifest["counts"]["customer"] == 60 and manifest["now"] == world.now
    with gzip.open(folder / "stripe" / "invoice.jsonl.gz", "rt") as fh:
        assert [json.loads(x)["id"] for x in fh] == [i["id"] for i in world.stripe["invoice"]]
    with (folder / "usage" / "usage.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and int(rows[0]["active_seats"]) <= int(rows[0]["licensed_seats"])
    assert (folder / "salesforce" / "Account.jsonl.gz").exists()


def test_churn_is_learnable_but_not_trivial() -> None:
    """Hidden health predicts churn well but not perfectly (the signals see less still)."""
    world = generate_world(1500, seed=9)
    y = [t["churned"] for t in world.truth]
    risk = [-t["health"] for t in world.truth]
    auc = roc_auc_score(y, risk)
    assert 0.1 < sum(y) / len(y) < 0.6
    assert 0.65 < auc < 0.95, auc


def test_chunked_world_has_unique_ids_and_one_catalogue(tmp_path: Path) -> None:
    from churn.sandbox.world import generate_world_to

    generate_world_to(tmp_path / "w", 50, 4, chunk=20)
    manifest = json.loads((tmp_path / "w" / "world.json").read_text())

    def ids(name: str, folder: str = "stripe") -> list[str]:
        with gzip.open(tmp_path / "w" / folder / f"{name}.jsonl.gz", "rt") as fh:
            return [json.loads(x).get("id") or json.loads(x)["Id"] for x in fh]

    for kind in ("customer", "subscription", "invoice", "charge", "event", "price"):
        got = ids(kind)
        assert len(got) == len(set(got)) == manifest["counts"][kind], kind
    assert manifest["counts"]["customer"] == 50 and manifest["counts"]["price"] == 24
    accounts = ids("Account", "salesforce")
    assert len(accounts) == len(set(accounts))
    with gzip.open(tmp_path / "w/salesforce/Account.jsonl.gz", "rt") as fh:
        rows = [json.loads(x) for x in fh]
    assert {r["OwnerId"] for r in rows} <= set(ids("User", "salesforce"))
    # Company names and domains are unique across chunks (else domains link wrongly).
    websites = [r["Website"] for r in rows]
    assert len(websites) == len(set(websites))
    with gzip.open(tmp_path / "w/stripe/customer.jsonl.gz", "rt") as fh:
        emails = [json.loads(x)["email"] for x in fh]
    assert len({e.split("@")[1] for e in emails if e}) == len([e for e in emails if e])


def test_cli_generate_writes_a_world(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    out = tmp_path / "w"
    result = CliRunner().invoke(
        app, ["sandbox", "generate", "--accounts", "25", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["accounts"] == 25 and manifest["counts"]["customer"] == 25
    assert "25 accounts" in result.output


def test_usage_is_daily_recent_per_seat_and_fades_before_a_cancellation() -> None:
    from datetime import UTC, datetime

    from churn.sandbox.world import DAY, USAGE_DAYS

    world = generate_world(600, seed=4)
    keys = Counter((c, d) for c, d, _a, _s in world.usage)
    assert keys and max(keys.values()) == 1, "one row per customer and day"
    first = datetime.fromtimestamp(world.now - (USAGE_DAYS + 1) * DAY, UTC).strftime("%Y-%m-%d")
    recent = Counter(c for c, d, _a, _s in world.usage if d >= first)
    assert recent and max(recent.values()) <= USAGE_DAYS + 1, "daily in the recent window"
    assert all(0 <= a <= s for _c, _d, a, s in world.usage)
    plans: dict[str, set[bool]] = {}
    for e in world.events:
        obj = e["data"]["object"]
        if obj.get("object") == "subscription":
            flat = obj["items"]["data"][0]["price"]["id"].startswith("price_starter")
            plans.setdefault(obj["customer"], set()).add(flat)
    always_flat = {c for c, kinds in plans.items() if kinds == {True}}
    assert always_flat, "some customers stay on the flat plan"
    assert not always_flat & {c for c, *_ in world.usage}, "a flat plan's quantity is not seats"
    # Accounts that scheduled a cancellation use fewer of their seats than those that did not.
    leaving = {
        e["data"]["object"]["customer"]
        for e in world.events
        if e["type"] == "customer.subscription.updated"
        and e["data"]["previous_attributes"].get("cancel_at_period_end") is False
    }
    share: dict[bool, list[float]] = {True: [], False: []}
    for c, _d, a, s in world.usage:
        share[c in leaving].append(a / s)
    assert share[True] and share[False]
    mean = {k: sum(v) / len(v) for k, v in share.items()}
    assert mean[True] < mean[False] - 0.05, mean


def test_usage_before_the_daily_window_is_a_weekly_rollup_back_to_the_start() -> None:
    """Older usage is kept as one sample per calendar week (a product-analytics store's
    rollup), so snapshots a horizon before today have usage to learn from."""
    from datetime import UTC, date, datetime, timedelta

    from churn.sandbox.world import DAY, USAGE_DAYS

    world = generate_world(300, seed=4)
    daily_from = datetime.fromtimestamp(world.now - USAGE_DAYS * DAY, UTC).date()
    older: dict[str, list[date]] = {}
    for c, d, a, s in world.usage:
        day = date.fromisoformat(d)
        assert 0 <= a <= s
        if day < daily_from:
            older.setdefault(c, []).append(day)
    assert older, "usage before the daily window"
    starts: dict[str, int] = {}
    for e in world.events:
        if e["type"] == "customer.subscription.created":
            obj = e["data"]["object"]
            starts[obj["customer"]] = min(starts.get(obj["customer"], obj["created"]),
                                          obj["created"])  # fmt: skip
    near_start = 0
    for c, days in older.items():
        weeks = [d.isocalendar()[:2] for d in days]
        assert len(weeks) == len(set(weeks)), "one sample per calendar week"
        assert all(d.weekday() == 0 for d in sorted(days)[1:]), "dated Mondays after the first"
        start = datetime.fromtimestamp(starts[c], UTC).date()
        assert sorted(days)[0] >= start, "none before the subscription"
        near_start += sorted(days)[0] - start <= timedelta(days=31)  # after a trial, a plan
    assert near_start >= 0.8 * len(older), "back to the start"
    # an account that started long before the daily window has many months of it
    assert max(len(v) for v in older.values()) > 40
