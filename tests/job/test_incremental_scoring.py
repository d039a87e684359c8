"""Incremental scoring: after changes land, a scoring that computes only the accounts whose
data changed writes the same marts as scoring every account, and the run's push after it
leaves nothing a whole push would still send.

The changes are stamped before the first scoring's instant and landed after it (a late
delivery, the case a watermark on event times would miss), and the second scoring's
instant is one microsecond later: every difference between the two marts is then a
change the incremental scoring failed to see, never the clock.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn import warehouse
from churn.job.incremental import decide
from churn.job.run import DEFAULT_STEPS, run_job
from churn.job.scoring import MARTS, score
from churn.settings import Settings

pytestmark = pytest.mark.slow

EXTRACT = ("stripe", "salesforce", "usage", "links")
#: Probabilities closer than this are one score (the time-travel test's tolerance): the
#: linear candidate computes in float32, and the last bits of its sums depend on the rows
#: predicted together (an incremental scoring predicts fewer rows at once).
PROBABILITY_TOLERANCE = 1e-6


@dataclass
class Landed:
    box: Any  # the stand-ins, served for the whole module (one clock, one org)
    before: Path  # a warehouse after one extract, with a model in force


def _steps(names: tuple[str, ...]) -> list:  # type: ignore[type-arg]
    return [s for s in DEFAULT_STEPS if s.name in names]


def _change(world: object, seed: int) -> None:
    """Failed payments, paid renewals and seat changes on 6% of live subscriptions."""
    from churn.sandbox.stripe.webhooks import fail_payment, live_subscriptions, renew

    rnd = random.Random(seed)
    subs = live_subscriptions(world)  # type: ignore[arg-type]
    picked = rnd.sample(subs, k=max(4, len(subs) // 25))
    for i, sub_id in enumerate(picked):
        (fail_payment if i % 2 == 0 else renew)(world, sub_id)  # type: ignore[operator]
    world.advance(0.02, seconds=1, seed=seed)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    from churn.sandbox.demo import demo_settings, serve_world
    from churn.sandbox.timetravel import train_once_and_store
    from churn.sandbox.world import generate_world, write_world

    tmp = tmp_path_factory.mktemp("incremental")
    folder = tmp / "world"
    write_world(generate_world(150, seed=13), folder, seed=13)
    db = tmp / "base.duckdb"
    with serve_world(folder) as box:
        settings = demo_settings(box, db)
        assert run_job(settings, steps=_steps(EXTRACT)).status == "success"
        train_once_and_store(db, (db,), warehouse.utcnow() - timedelta(days=1))
        yield Landed(box, db)


def _marts(db: Path, as_of: datetime) -> dict[str, pl.DataFrame]:
    con = warehouse.connect(db, read_only=True)
    try:
        out = {}
        for name in MARTS:
            frame = con.sql(f"SELECT * FROM {name} WHERE as_of = ?", params=[as_of]).pl()
            if "scored_as_of" in frame.columns:
                frame = frame.drop("scored_as_of")
            keys = [c for c in ("account_id", "signal", "episode_key", "currency", "month")
                    if c in frame.columns]  # fmt: skip
            out[name] = frame.sort(keys, nulls_last=True)
        return out
    finally:
        con.close()


def test_an_incremental_score_after_changes_equals_a_full_score(
    landed: Landed, tmp_path: Path
) -> None:
    from churn.sandbox.demo import demo_settings

    db = tmp_path / "churn.duckdb"
    shutil.copy(landed.before, db)
    box = landed.box
    settings = demo_settings(box, db)
    world = box.stripe.world
    _change(world, seed=5)
    # after every change's stamp (the world's clock may run a second ahead)
    t1 = datetime.fromtimestamp(world.now + 2, UTC).replace(tzinfo=None)
    con = warehouse.connect(db)
    try:
        first = score(settings, con, as_of=t1, incremental=True)
    finally:
        con.close()
    assert "scoring_incremental" not in first.counts  # no scoring before: whole
    assert run_job(settings, steps=_steps(EXTRACT)).status == "success"
    whole = tmp_path / "whole.duckdb"
    shutil.copy(db, whole)
    t2 = t1 + timedelta(microseconds=1)
    con = warehouse.connect(db)
    try:
        inc = score(settings, con, as_of=t2, incremental=True)
    finally:
        con.close()
    con = warehouse.connect(whole)
    try:
        full = score(settings, con, as_of=t2, incremental=False)
    finally:
        con.close()
    assert inc.scoring == "incremental: changed accounts", inc.scoring
    assert inc.counts.get("scoring_incremental") == 1
    total = full.counts["account_health"]
    assert 0 < inc.counts["accounts_computed"] < total
    assert inc.counts["account_health"] == total
    # the run's counts and notes about usage gaps too: the computed accounts' recomputed,
    # the others' carried (score_usage_gaps), equal to every account's read
    gaps = {k: v for k, v in full.counts.items() if k.startswith("seat_usage_")}
    assert gaps, "the world has usage gaps to count"
    assert {k: v for k, v in inc.counts.items() if k.startswith("seat_usage_")} == gaps
    assert inc.notes == full.notes
    got, want = _marts(db, t2), _marts(whole, t2)
    for name in MARTS:
        assert_frame_equal(
            got[name], want[name], check_exact=False, rel_tol=0, abs_tol=PROBABILITY_TOLERANCE
        )
    # the changed accounts' rows are new; the others' carry the instant they were scored
    con = warehouse.connect(db, read_only=True)
    try:
        carried = con.execute(
            "SELECT count(*) FROM account_health WHERE as_of = ? AND scored_as_of = ?", [t2, t1]
        ).fetchall()[0][0]
    finally:
        con.close()
    assert carried == total - inc.counts["accounts_computed"]


def _scored_then_an_hour_later(
    con: duckdb.DuckDBPyConnection, settings: Settings
) -> tuple[datetime, datetime, str | None]:
    """Score at 01:00 today; (that time, an hour later, the model version in force)."""
    from churn.job.model import in_force_version

    t1 = warehouse.utcnow().replace(hour=1)
    version = in_force_version(con, t1)
    score(settings, con, as_of=t1, incremental=True)
    return t1, t1 + timedelta(hours=1), version


def test_settings_the_model_a_new_day_or_shared_input_score_everything(
    landed: Landed, tmp_path: Path
) -> None:
    db = tmp_path / "churn.duckdb"
    shutil.copy(landed.before, db)
    settings = Settings(db=db)
    con = warehouse.connect(db)
    try:
        t1, later, version = _scored_then_an_hour_later(con, settings)
        assert not decide(con, settings, later, version).full
        other = settings.with_overrides(signals={"card_expiry_horizon_days": 45})
        assert decide(con, other, later, version).reason == "settings or scoring code changed"
        assert decide(con, settings, later, "another").reason == "the model in force changed"
        assert decide(con, settings, t1 + timedelta(days=1), version).reason == (
            "the first scoring of the day"
        )
        assert decide(con, settings, t1, version).reason == "as_of not after the last scoring"
        off = settings.with_overrides(run={"incremental_scoring": False})
        assert decide(con, off, later, version).full
        con.execute("UPDATE core_prices SET unit_amount = unit_amount + 1 WHERE price_id IN"
                    " (SELECT price_id FROM core_prices LIMIT 1)")  # fmt: skip
        assert decide(con, settings, later, version).reason == "Stripe prices changed"
    finally:
        con.close()


def test_a_run_after_changes_pushes_what_a_whole_push_would(landed: Landed, tmp_path: Path) -> None:
    """Two runs; between them changes land. The second run scores incrementally and pushes
    the accounts it computed (and those with open Tasks): a whole plan after it is empty."""
    from churn.pipelines.push.sync import build_plan
    from churn.sandbox.demo import demo_settings

    db = tmp_path / "churn.duckdb"
    shutil.copy(landed.before, db)
    box = landed.box
    settings = demo_settings(box, db)
    assert run_job(settings).status == "success"
    _change(box.stripe.world, seed=9)
    second = run_job(settings)
    assert second.status == "success"
    scored = next(s for s in second.steps if s.name == "score")
    con = warehouse.connect(db, read_only=True)
    try:
        kinds = con.execute("SELECT kind, reason FROM score_state ORDER BY as_of").fetchall()
    finally:
        con.close()
    if kinds[-1] == ("full", "the first scoring of the day"):
        pytest.skip("the two runs straddled a UTC midnight: the second scored in full")
    assert kinds[-1] == ("incremental", "changed accounts"), kinds
    assert scored.counts["accounts_computed"] < scored.counts["account_health"]
    con = warehouse.connect(db, read_only=True)
    try:
        plan = build_plan(settings, con)
    finally:
        con.close()
    assert plan.changes == (), [c.action for c in plan.changes][:10]


def test_a_currency_type_saved_again_unchanged_scores_incrementally(
    landed: Landed, tmp_path: Path
) -> None:
    """A CurrencyType saved again with the same rate moves only its SystemModstamp ("the
    date and time when a record was last modified by a user or by an automated process",
    Salesforce's system fields): no score reads it, so it must not score every account
    (the sandbox's org restamps its corporate USD at every start, which made the first run
    after a restart whole). A changed rate still scores everything."""
    db = tmp_path / "churn.duckdb"
    shutil.copy(landed.before, db)
    settings = Settings(db=db)
    con = warehouse.connect(db)
    try:
        _, later, version = _scored_then_an_hour_later(con, settings)
        con.execute("UPDATE core_currency_rates SET system_modstamp = ?", [later])
        con.execute("UPDATE core_dated_conversion_rates SET system_modstamp = ?", [later])
        assert not decide(con, settings, later, version).full
        con.execute("UPDATE core_currency_rates SET conversion_rate = conversion_rate * 2"
                    " WHERE NOT is_corporate")  # fmt: skip
        assert decide(con, settings, later, version).reason == "currency rates changed"
    finally:
        con.close()


def test_the_push_after_an_incremental_scoring_leaves_out_its_own_echo(
    landed: Landed, tmp_path: Path
) -> None:
    """The first run's push updates many Accounts, which the next run's Salesforce extract
    lands again (their SystemModstamp moved): those echoes of the push's own values are no
    reason to plan the Account again. An Account whose owned field was edited in Salesforce
    is (the push restores it), and so is one whose CurrencyIsoCode changed (its Currency
    fields are "in the currency of the record", Salesforce's multi-currency help): after
    the second run a whole plan is empty."""
    from churn.job.incremental import pushed_accounts
    from churn.pipelines.push.sync import build_plan
    from churn.sandbox.demo import demo_settings

    db = tmp_path / "churn.duckdb"
    shutil.copy(landed.before, db)
    box = landed.box
    settings = demo_settings(box, db)
    field = settings.push.account_fields["subscription_count"]
    org = box.salesforce.org
    with org.lock:  # the module's org may hold the values already: the first push writes all
        for rid, record in list(org.records["Account"].items()):
            if not record["IsDeleted"]:
                org.update("Account", rid, {field: None})
    assert run_job(settings).status == "success"
    con = warehouse.connect(db, read_only=True)
    try:
        pushed = con.execute(
            "SELECT s.record_key, a.currency_iso_code FROM push_state s"
            " JOIN core_accounts a ON a.account_id = s.record_key"
            " WHERE s.sobject = 'Account' AND s.fields->>$f IS NOT NULL"
            " AND a.account_id NOT IN (SELECT fields->>'WhatId' FROM push_state"
            "   WHERE sobject = 'Task' AND status = 'open')"
            " ORDER BY 1",
            {"f": field},
        ).fetchall()
        other = con.execute(
            "SELECT iso_code FROM core_currency_rates WHERE is_active ORDER BY iso_code"
        ).fetchall()
    finally:
        con.close()
    assert len(pushed) > 10
    (edited, _), (moved, currency) = pushed[0], pushed[1]
    new_currency = next(str(r[0]) for r in other if r[0] != (currency or "").upper())
    with org.lock:
        org.update("Account", edited, {field: 999})
        org.update("Account", moved, {"CurrencyIsoCode": new_currency})
    second = run_job(settings)
    assert second.status == "success"
    con = warehouse.connect(db, read_only=True)
    try:
        kinds = con.execute("SELECT kind, reason FROM score_state ORDER BY as_of").fetchall()
        if kinds[-1] == ("full", "the first scoring of the day"):
            pytest.skip("the two runs straddled a UTC midnight: the second scored in full")
        assert kinds[-1] == ("incremental", "changed accounts"), kinds
        computed = {r[0] for r in con.execute("SELECT account_id FROM score_state_accounts")
                    .fetchall()}  # fmt: skip
        scope = set(pushed_accounts(con, settings.push.account_fields) or ())
        open_tasks = {r[0] for r in con.execute(
            "SELECT fields->>'WhatId' FROM push_state WHERE sobject = 'Task' AND status = 'open'"
        ).fetchall()}  # fmt: skip
        assert edited in scope
        assert moved in scope
        echoed = scope - computed - open_tasks - {edited}
        assert not echoed, f"{len(echoed)} Accounts planned only because the push landed them"
        plan = build_plan(settings, con)
    finally:
        con.close()
    assert plan.changes == (), [(c.action, c.record_key) for c in plan.changes][:10]
