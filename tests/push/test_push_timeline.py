"""Plan changes on the Account timeline, over HTTPS against the Salesforce stand-in (issue 18,
"Must hold"): a downgrade yields one completed Task with before and after, none on a rerun;
a kill mid-push then a rerun leaves no duplicate; a first run over years of history logs
only the window's changes; each kind is off-able."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from push_world import AS_OF, KillPush, World

from churn.pipelines.push.sync import Scores, build_plan, push
from churn.pipelines.push.timeline import ACTION
from churn.sandbox.salesforce.server import RunningSalesforce, start_salesforce_server
from churn.settings import Settings
from churn.signals.changes import KINDS
from faults import tally
from golden_world import seed

pytestmark = pytest.mark.slow

OWNER = "005000000000000OWN"
EXT = "Churn_Episode_Key__c"
DAY = timedelta(days=1)


@pytest.fixture
def sf() -> Iterator[RunningSalesforce]:
    with start_salesforce_server(seed={"User": [{"Id": OWNER, "Name": "Owner"}]}) as running:
        yield running


def _settings(sf: RunningSalesforce, db: Path, **timeline: object) -> Settings:
    return Settings().with_overrides(
        db=db,
        push={"timeline": timeline} if timeline else {},
        salesforce={
            "instance_url": sf.instance_url,
            "session_id": sf.session_id,
            "ca_bundle": sf.ca_path,
            "api_reserve": 0,
        },
    )


def _ts(t: datetime) -> str:
    return t.isoformat()


def _accounts(world: World, sf: RunningSalesforce, n: int) -> list[str]:
    """n Accounts in the org and the warehouse, customer c<i> linked to the i-th, and the
    marts of a scoring as of AS_OF (the push plans as of the latest scoring)."""
    ids = sf.seed("Account", [{"Name": f"Account {i}", "OwnerId": OWNER} for i in range(n)])
    world.accounts(ids, owner=OWNER)
    world.users({OWNER: True})
    world.health([{"account_id": a} for a in ids])
    seed(
        world.con,
        {
            "core_account_links": [
                {"customer_id": f"c{i}", "account_id": a} for i, a in enumerate(ids)
            ]
        },
    )
    return ids


def _seat_cut(i: int, at: datetime, before: int = 40, after: int = 25) -> dict[str, list[Any]]:
    """Customer c<i>'s subscription s<i> on Pro at $49 a seat, seats cut at ``at``."""
    start = datetime(2023, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    return {
        "history_subscriptions": [
            {
                "subscription_id": f"s{i}",
                "customer_id": f"c{i}",
                "valid_from": _ts(start),
                "current_period_end": _ts(AS_OF + 20 * DAY),
            }
        ],
        "history_subscription_items": [
            {
                "subscription_id": f"s{i}",
                "item_id": f"si{i}",
                "valid_from": _ts(start),
                "valid_to": _ts(at),
                "price_id": "pro",
                "quantity": before,
            },
            {
                "subscription_id": f"s{i}",
                "item_id": f"si{i}",
                "valid_from": _ts(at),
                "price_id": "pro",
                "quantity": after,
            },
        ],
    }


PRICES = {
    "core_prices": [{"price_id": "pro", "unit_amount": 4900, "product_id": "prod_pro"}],
    "core_products": [{"product_id": "prod_pro", "name": "Pro"}],
}


def _timeline(sf: RunningSalesforce) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for task in sf.records.get("Task", {}).values():
        if str(task.get(EXT, "")).startswith("timeline:"):
            out.setdefault(task[EXT], []).append(task)
    return out


def test_a_downgrade_is_one_completed_task_with_before_and_after_and_none_on_a_rerun(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    [account] = _accounts(world, sf, 1)
    cut = AS_OF - 3 * DAY
    seed(world.con, {**PRICES, **_seat_cut(0, cut)})
    settings = _settings(sf, db_path)
    # the webhook worker's partial push leaves the timeline to the run
    partial = build_plan(settings, world.con, Scores("account_health", "signal_events", (account,)))
    assert not [c for c in partial.changes if c.action == ACTION]

    first = push(settings, world.con)
    assert first.rejected == []
    assert first.counts.get(ACTION) == 1
    [[task]] = _timeline(sf).values()
    assert task["Subject"] == "Downgrade: Seats 40 → 25, MRR $1,960 → $1,225"
    assert task["WhatId"] == account and task["OwnerId"] == OWNER
    assert task["Status"] == "Completed"  # the org's closed value (push.task_status_closed)
    assert task["ActivityDate"] == cut.date().isoformat()
    assert "s0" in task["Description"]  # ids in the description, not the subject

    writes = len(sf.request_log)
    second = push(settings, world.con)
    assert second.counts == {"planned": 0}  # nothing new: no call at all
    assert len(sf.request_log) == writes
    assert len(_timeline(sf)) == 1


def test_kill_mid_push_then_rerun_leaves_no_duplicate(
    world: World, sf: RunningSalesforce, db_path: Path, kill_push: KillPush
) -> None:
    ids = _accounts(world, sf, 6)
    seed(world.con, PRICES)
    for i in range(6):
        seed(world.con, _seat_cut(i, AS_OF - (i + 1) * DAY))
    world.con.close()
    # Killed while the org holds the second call of timeline records (two a call).
    kill_push(sf, "Task", nth=4)
    assert 2 <= len(_timeline(sf)) < 6
    from churn import warehouse

    con = warehouse.connect(db_path)
    try:
        rerun = push(_settings(sf, db_path), con)
        assert rerun.rejected == []
        by_key = _timeline(sf)
        assert len(by_key) == 6
        assert {t[0]["WhatId"] for t in by_key.values()} == set(ids)
        duplicates = sum(len(tasks) - 1 for tasks in by_key.values())
        tally.record(kills=1, runs_healed=1, duplicates=duplicates)
        assert duplicates == 0
        assert push(_settings(sf, db_path), con).counts == {"planned": 0}
    finally:
        con.close()


def test_a_first_run_over_years_of_history_logs_only_the_window(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    """Seats changed every month for three years: 36 changes in history, the 30-day window
    (the default) holds one; a 90-day window three."""
    _accounts(world, sf, 1)
    seed(world.con, PRICES)
    start = AS_OF - 36 * 30 * DAY
    bounds = [start + k * 30 * DAY for k in range(37)]
    seed(
        world.con,
        {
            "history_subscriptions": [
                {
                    "subscription_id": "s0",
                    "customer_id": "c0",
                    "valid_from": _ts(start),
                    "current_period_end": _ts(AS_OF + 20 * DAY),
                }
            ],
            "history_subscription_items": [
                {
                    "subscription_id": "s0",
                    "item_id": "si0",
                    "valid_from": _ts(bounds[k] - DAY if k else start),
                    "valid_to": None if k == 36 else _ts(bounds[k + 1] - DAY),
                    "price_id": "pro",
                    "quantity": 10 + (k % 2),
                }
                for k in range(37)
            ],
        },
    )
    wide = build_plan(_settings(sf, db_path, window_days=90), world.con)
    assert sum(c.action == ACTION for c in wide.changes) == 3
    first = push(_settings(sf, db_path), world.con)
    assert first.counts.get(ACTION) == 1
    [[task]] = _timeline(sf).values()
    assert task["ActivityDate"] == (AS_OF - DAY).date().isoformat()


def _one_of_each_kind() -> dict[str, list[Any]]:
    """Customer c<i> has a change of the i-th kind of KINDS within the window."""
    t = AS_OF - 5 * DAY
    old = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    end = AS_OF + 20 * DAY

    def sub(i: int, **kw: Any) -> dict[str, Any]:
        row = {"subscription_id": f"s{i}", "customer_id": f"c{i}", "valid_from": _ts(old)}
        return {"current_period_end": _ts(end), **row, **kw}

    def item(
        i: int, price: str, q: int, vf: datetime = old, vt: datetime | None = None
    ) -> dict[str, Any]:
        row = {"subscription_id": f"s{i}", "item_id": f"si{i}-{price}", "price_id": price}
        return {**row, "valid_from": _ts(vf), "valid_to": vt and _ts(vt), "quantity": q}

    return {
        "core_prices": [
            {"price_id": "basic", "unit_amount": 2000, "product_id": "prod_b"},
            {"price_id": "pro", "unit_amount": 5000, "product_id": "prod_p"},
            {
                "price_id": "pro_y",
                "unit_amount": 60000,
                "product_id": "prod_p",
                "recurring_interval": "year",
            },
        ],
        "core_products": [
            {"product_id": "prod_b", "name": "Basic"},
            {"product_id": "prod_p", "name": "Pro"},
        ],
        "history_subscriptions": [
            sub(0),  # upgrade
            sub(1),  # downgrade
            sub(2, status="trialing"),  # seat change (no MRR yet)
            sub(3),  # plan change
            sub(4, valid_to=_ts(t)),
            sub(4, valid_from=_ts(t), cancel_at_period_end=True),
            sub(5, valid_to=_ts(t), cancel_at_period_end=True, current_period_end=_ts(end - DAY)),
            sub(5, valid_from=_ts(t)),
            sub(6),
        ],
        "history_subscription_items": [
            item(0, "basic", 1, vt=t),
            item(0, "pro", 1, vf=t),
            item(1, "pro", 1, vt=t),
            item(1, "basic", 1, vf=t),
            item(2, "basic", 3, vt=t),
            item(2, "basic", 5, vf=t),
            item(3, "pro", 1, vt=t),
            item(3, "pro_y", 1, vf=t),
            item(4, "pro", 1),
            item(5, "pro", 1),
            item(6, "pro", 1),
        ],
        "core_invoices": [
            {
                "invoice_id": "in6",
                "customer_id": "c6",
                "subscription_id": "s6",
                "status": "paid",
                "amount_due": 5000,
                "amount_paid": 5000,
                "attempt_count": 2,
                "created_at": _ts(t - 3 * DAY),
                "paid_at": _ts(t),
            },
        ],
    }


def test_each_kind_is_logged_and_each_is_off_able(
    world: World, sf: RunningSalesforce, db_path: Path
) -> None:
    ids = _accounts(world, sf, len(KINDS))
    seed(world.con, _one_of_each_kind())
    kind_of = {ids[i]: kind for i, kind in enumerate(KINDS)}
    for off in KINDS:
        kept = tuple(k for k in KINDS if k != off)
        plan = build_plan(_settings(sf, db_path, kinds=kept), world.con)
        logged = {c.fields["WhatId"]: c for c in plan.changes if c.action == ACTION}
        assert sorted(kind_of[a] for a in logged) == sorted(kept), off
    assert not [
        c for c in build_plan(_settings(sf, db_path, kinds=[]), world.con).changes
        if c.action == ACTION
    ]  # fmt: skip

    result = push(_settings(sf, db_path), world.con)
    assert result.rejected == []
    subjects = {t[0]["WhatId"]: t[0]["Subject"] for t in _timeline(sf).values()}
    assert {kind_of[a]: s for a, s in subjects.items()} == {
        "upgrade": "Upgrade: Plan Basic monthly → Pro monthly, MRR $20 → $50",
        "downgrade": "Downgrade: Plan Pro monthly → Basic monthly, MRR $50 → $20",
        "seat_change": "Seat change: Seats 3 → 5",
        "plan_change": "Plan change: Plan Pro monthly → Pro yearly",
        "cancellation_scheduled": f"Cancellation scheduled for {(AS_OF + 20 * DAY).date()}"
        " (MRR $50)",
        "cancellation_withdrawn": f"Cancellation scheduled for {(AS_OF + 19 * DAY).date()}"
        " withdrawn (MRR $50)",
        "payment_recovered": "Payment of $50 recovered after 2 attempts",
    }
    assert push(_settings(sf, db_path), world.con).counts == {"planned": 0}
